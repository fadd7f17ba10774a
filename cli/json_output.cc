#include "cli/json_output.h"

#include <cstdint>
#include <map>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"

namespace grantvault::cli {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr std::string_view kMillisSuffix = "_ms";

nlohmann::ordered_json Rfc3339OrNull(int64_t unix_ms) {
  if (unix_ms == 0) return nullptr;
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

// One value of `field` (element `index` when repeated, -1 otherwise).
nlohmann::ordered_json Value(const Message& m, const FieldDescriptor* field, int index) {
  const Reflection* r = m.GetReflection();
  const bool rep = index >= 0;
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return rep ? r->GetRepeatedInt32(m, field, index) : r->GetInt32(m, field);
    case FieldDescriptor::CPPTYPE_INT64:
      return rep ? r->GetRepeatedInt64(m, field, index) : r->GetInt64(m, field);
    case FieldDescriptor::CPPTYPE_UINT32:
      return rep ? r->GetRepeatedUInt32(m, field, index) : r->GetUInt32(m, field);
    case FieldDescriptor::CPPTYPE_UINT64:
      return rep ? r->GetRepeatedUInt64(m, field, index) : r->GetUInt64(m, field);
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return rep ? r->GetRepeatedDouble(m, field, index) : r->GetDouble(m, field);
    case FieldDescriptor::CPPTYPE_FLOAT:
      return rep ? r->GetRepeatedFloat(m, field, index) : r->GetFloat(m, field);
    case FieldDescriptor::CPPTYPE_BOOL:
      return rep ? r->GetRepeatedBool(m, field, index) : r->GetBool(m, field);
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int number = rep ? r->GetRepeatedEnumValue(m, field, index) : r->GetEnumValue(m, field);
      if (const auto* value = field->enum_type()->FindValueByNumber(number)) return value->name();
      return number;
    }
    case FieldDescriptor::CPPTYPE_STRING:
      return rep ? r->GetRepeatedString(m, field, index) : r->GetString(m, field);
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return ToJson(rep ? r->GetRepeatedMessage(m, field, index) : r->GetMessage(m, field));
  }
  return nullptr;
}

// A map entry's key as a JSON object key.
std::string MapKey(const Message& entry) {
  const FieldDescriptor* key = entry.GetDescriptor()->map_key();
  nlohmann::ordered_json k = Value(entry, key, -1);
  return k.is_string() ? k.get<std::string>() : k.dump();
}

// JSON string escaping (RFC 8259 §7) of `text`, written as it goes.
void WriteEscaped(std::FILE* out, std::string_view text) {
  size_t plain_from = 0;
  auto flush = [&](size_t to) {
    if (to > plain_from) std::fwrite(text.data() + plain_from, 1, to - plain_from, out);
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c != '"' && c != '\\' && c >= 0x20) continue;
    flush(i);
    if (c == '"' || c == '\\') {
      std::fputc('\\', out);
      std::fputc(c, out);
    } else {
      std::fprintf(out, "\\u%04x", c);
    }
    plain_from = i + 1;
  }
  flush(text.size());
}

}  // namespace

nlohmann::ordered_json ToJson(const Message& m) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  const Descriptor* d = m.GetDescriptor();
  const Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* field = d->field(i);
    if (field->type() == FieldDescriptor::TYPE_BYTES) continue;
    if (field->is_map()) {
      // By key: a protobuf map has no order of its own.
      std::map<std::string, nlohmann::ordered_json> sorted;
      const FieldDescriptor* value_field = field->message_type()->map_value();
      for (int j = 0; j < r->FieldSize(m, field); ++j) {
        const Message& entry = r->GetRepeatedMessage(m, field, j);
        sorted[MapKey(entry)] = Value(entry, value_field, -1);
      }
      nlohmann::ordered_json map = nlohmann::ordered_json::object();
      for (auto& [key, value] : sorted) map[key] = std::move(value);
      out[field->name()] = std::move(map);
      continue;
    }
    if (field->is_repeated()) {
      nlohmann::ordered_json list = nlohmann::ordered_json::array();
      for (int j = 0; j < r->FieldSize(m, field); ++j) list.push_back(Value(m, field, j));
      out[field->name()] = std::move(list);
      continue;
    }
    const bool optional_member = field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE ||
                                 field->containing_oneof() != nullptr;
    if (optional_member && !r->HasField(m, field)) continue;
    out[field->name()] = Value(m, field, -1);
    const std::string& name = field->name();
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_INT64 && name.size() > kMillisSuffix.size() &&
        name.ends_with(kMillisSuffix)) {
      out[name.substr(0, name.size() - kMillisSuffix.size())] =
          Rfc3339OrNull(r->GetInt64(m, field));
    }
  }
  return out;
}

std::string JsonLine(const Message& message) {
  return ToJson(message).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

void PrintJsonWithSecret(std::FILE* out, const nlohmann::ordered_json& object,
                         std::string_view name, std::string_view secret) {
  std::string rest = object.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  // "{…}" → "{…," + "name":"secret" + "}"
  rest.pop_back();
  std::fwrite(rest.data(), 1, rest.size(), out);
  if (rest.size() > 1) std::fputc(',', out);
  std::fputc('"', out);
  WriteEscaped(out, name);
  std::fputs("\":\"", out);
  WriteEscaped(out, secret);
  std::fputs("\"}\n", out);
}

}  // namespace grantvault::cli
