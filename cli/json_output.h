// The CLI's --json output (docs/cli.md "JSON output"): the daemon's answers as
// JSON for people and scripts, which is not protobuf's JSON mapping:
//
//  - field names as in the .proto files; every scalar field is printed, its
//    default included; an unset message field or oneof member is left out;
//  - 64-bit integers are JSON numbers (protobuf's mapping writes strings);
//  - enums by name, maps as objects, repeated fields as arrays;
//  - every int64 field named `<name>_ms` is a unix time in milliseconds and
//    gets a sibling `<name>` with the same time as an RFC 3339 UTC string
//    ("2026-12-02T13:34:22.123Z"), or null when it is 0 (the protocol's
//    "none" / "never"). Durations (uptime_ms, retry_after_ms) are unsigned and
//    get none;
//  - `bytes` fields are never printed: in this protocol they hold secrets
//    (client secrets, codes, access tokens) or raw export data. `resolve
//    --json --reveal` adds the access token itself, as the provider issued
//    it, with PrintJsonWithSecret.
#ifndef GRANTVAULT_CLI_JSON_OUTPUT_H_
#define GRANTVAULT_CLI_JSON_OUTPUT_H_

#include <cstdio>
#include <string>
#include <string_view>

#include "google/protobuf/message.h"
#include "nlohmann/json.hpp"

namespace grantvault::cli {

nlohmann::ordered_json ToJson(const google::protobuf::Message& message);

// One line: ToJson(message) compactly.
std::string JsonLine(const google::protobuf::Message& message);

// Writes `object` (a JSON object) with one more member, `name`: `secret` as a
// JSON string, then a newline, to `out`. The secret is escaped as it is
// written: no intermediate string ever holds it.
void PrintJsonWithSecret(std::FILE* out, const nlohmann::ordered_json& object,
                         std::string_view name, std::string_view secret);

}  // namespace grantvault::cli

#endif  // GRANTVAULT_CLI_JSON_OUTPUT_H_
