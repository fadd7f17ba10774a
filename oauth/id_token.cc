#include "oauth/id_token.h"

#include <cjose/cjose.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"
#include "oauth/pkce.h"

namespace grantvault::oauth {
namespace {

constexpr size_t kMaxTokenBytes = 16 * 1024;
constexpr size_t kMaxJwksBytes = 256 * 1024;
constexpr size_t kMinRsaModulusBytes = 2048 / 8;
constexpr size_t kMaxSubLength = 255;

struct JwsDeleter {
  void operator()(cjose_jws_t* p) const { cjose_jws_release(p); }
};
struct JwkDeleter {
  void operator()(cjose_jwk_t* p) const { cjose_jwk_release(p); }
};
using JwsPtr = std::unique_ptr<cjose_jws_t, JwsDeleter>;
using JwkPtr = std::unique_ptr<cjose_jwk_t, JwkDeleter>;

absl::Status Malformed(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("id_token is malformed: ", Sv(what)));
}

absl::Status Failed(std::string_view check, std::string_view why) {
  return absl::UnauthenticatedError(
      absl::StrCat("id_token ", Sv(check), " check failed: ", Sv(why)));
}

// Parses a JSON object, refusing duplicate member names at any depth: two parsers that keep
// different duplicates (cjose's jansson and nlohmann) must never see different claims.
std::optional<nlohmann::json> ParseObjectStrict(std::string_view text) {
  std::vector<std::set<std::string>> keys;
  bool duplicate = false;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case nlohmann::json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() &&
            !keys.back().insert(parsed.get<std::string>()).second) {
          duplicate = true;
        }
        break;
      default:
        break;
    }
    return true;
  };
  nlohmann::json doc =
      nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (duplicate || doc.is_discarded() || !doc.is_object()) return std::nullopt;
  return doc;
}

const nlohmann::json* Member(const nlohmann::json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() ? nullptr : &*it;
}

std::optional<std::string> StringMember(const nlohmann::json& obj, const char* name) {
  const nlohmann::json* v = Member(obj, name);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

// A NumericDate (RFC 7519 §2): seconds since the epoch, integer or not.
absl::StatusOr<absl::Time> TimeClaim(const nlohmann::json& claims, const char* name,
                                     bool required) {
  const nlohmann::json* v = Member(claims, name);
  if (v == nullptr) {
    if (required) return Failed(name, "the claim is missing");
    return absl::InfinitePast();
  }
  double seconds = 0;
  if (v->is_number_unsigned()) {
    seconds = static_cast<double>(v->get<uint64_t>());
  } else if (v->is_number_integer()) {
    seconds = static_cast<double>(v->get<int64_t>());
  } else if (v->is_number_float()) {
    seconds = v->get<double>();
  } else {
    return Failed(name, "the claim is not a number");
  }
  // Year 1970 .. about 5138: anything else is a broken or hostile token.
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e11) {
    return Failed(name, "the claim is out of range");
  }
  return absl::FromUnixSeconds(static_cast<int64_t>(std::floor(seconds)));
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool IsGuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    const char c = s[i];
    const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (dash ? c != '-' : !hex) return false;
  }
  return true;
}

struct Header {
  std::string alg;
  std::optional<std::string> kid;
};

absl::StatusOr<Header> ParseHeader(std::string_view encoded) {
  std::optional<std::string> json = Base64UrlDecode(encoded);
  if (!json) return Malformed("the header is not base64url");
  std::optional<nlohmann::json> header = ParseObjectStrict(*json);
  if (!header) return Malformed("the header is not a JSON object");
  if (Member(*header, "crit") != nullptr) {
    return Failed("header", "it has critical extensions (crit), which are not supported");
  }
  Header h;
  std::optional<std::string> alg = StringMember(*header, "alg");
  if (!alg) return Malformed("the header has no alg");
  h.alg = *alg;
  if (const nlohmann::json* kid = Member(*header, "kid")) {
    if (!kid->is_string()) return Malformed("the header's kid is not a string");
    h.kid = kid->get<std::string>();
  }
  return h;
}

// The kty and crv a key must have for `alg`.
struct KeyShape {
  const char* kty;
  const char* crv;  // nullptr for RSA
};

std::optional<KeyShape> ShapeFor(std::string_view alg) {
  if (alg == "RS256" || alg == "PS256") return KeyShape{"RSA", nullptr};
  if (alg == "ES256") return KeyShape{"EC", "P-256"};
  return std::nullopt;
}

bool KeyFits(const nlohmann::json& key, const Header& header, const KeyShape& shape) {
  if (!key.is_object() || StringMember(key, "kty") != std::string(shape.kty)) return false;
  if (shape.crv != nullptr && StringMember(key, "crv") != std::string(shape.crv)) return false;
  if (const nlohmann::json* use = Member(key, "use")) {
    if (!use->is_string() || use->get<std::string>() != "sig") return false;
  }
  if (const nlohmann::json* alg = Member(key, "alg")) {
    if (!alg->is_string() || alg->get<std::string>() != header.alg) return false;
  }
  if (const nlohmann::json* ops = Member(key, "key_ops")) {
    if (!ops->is_array() || std::none_of(ops->begin(), ops->end(), [](const nlohmann::json& op) {
          return op.is_string() && op.get<std::string>() == "verify";
        })) {
      return false;
    }
  }
  return true;
}

// The JWKS member to verify with, reduced to its public members.
absl::StatusOr<nlohmann::json> SelectKey(std::string_view jwks_json, const Header& header,
                                         const KeyShape& shape) {
  if (jwks_json.size() > kMaxJwksBytes) {
    return absl::InvalidArgumentError("JWKS is larger than 256 KiB");
  }
  std::optional<nlohmann::json> jwks = ParseObjectStrict(jwks_json);
  if (!jwks) return absl::InvalidArgumentError("JWKS is not a JSON object");
  const nlohmann::json* keys = Member(*jwks, "keys");
  if (keys == nullptr || !keys->is_array()) {
    return absl::InvalidArgumentError("JWKS has no keys array");
  }
  std::vector<const nlohmann::json*> candidates;
  for (const nlohmann::json& key : *keys) {
    if (!KeyFits(key, header, shape)) continue;
    if (header.kid) {
      if (StringMember(key, "kid") == header.kid) candidates.push_back(&key);
    } else {
      candidates.push_back(&key);
    }
  }
  if (candidates.empty()) {
    return Failed("key", header.kid ? "no key in the JWKS has the token's kid and fits its alg"
                                    : "no key in the JWKS fits the token's alg");
  }
  if (candidates.size() > 1) {
    return Failed("key", header.kid ? "the JWKS holds several keys with the token's kid"
                                    : "the token has no kid and the JWKS holds several keys "
                                      "that fit its alg");
  }
  const nlohmann::json& key = *candidates.front();
  nlohmann::json pub = nlohmann::json::object();
  const char* members[] = {"kty", "kid", "n", "e", "crv", "x", "y"};
  for (const char* m : members) {
    const nlohmann::json* v = Member(key, m);
    if (v == nullptr) continue;
    if (!v->is_string()) return absl::InvalidArgumentError("JWKS key member is not a string");
    pub[m] = *v;
  }
  if (std::string_view(shape.kty) == "RSA") {
    std::optional<std::string> n =
        pub.contains("n") ? Base64UrlDecode(pub["n"].get<std::string>()) : std::nullopt;
    if (!n) return absl::InvalidArgumentError("JWKS RSA key has no valid modulus");
    size_t leading_zeros = 0;
    while (leading_zeros < n->size() && (*n)[leading_zeros] == '\0') ++leading_zeros;
    if (n->size() - leading_zeros < kMinRsaModulusBytes) {
      return Failed("key", "the RSA key is shorter than 2048 bits");
    }
  }
  return pub;
}

absl::Status CheckAudience(const nlohmann::json& claims, const std::string& client_id,
                           std::vector<std::string>* aud_out) {
  const nlohmann::json* aud = Member(claims, "aud");
  if (aud == nullptr) return Failed("audience", "the aud claim is missing");
  if (aud->is_string()) {
    aud_out->push_back(aud->get<std::string>());
  } else if (aud->is_array()) {
    for (const nlohmann::json& a : *aud) {
      if (!a.is_string()) return Failed("audience", "the aud claim holds a non-string");
      aud_out->push_back(a.get<std::string>());
    }
  } else {
    return Failed("audience", "the aud claim is neither a string nor an array");
  }
  if (std::find(aud_out->begin(), aud_out->end(), client_id) == aud_out->end()) {
    return Failed("audience", "the token was not issued for this client id");
  }
  const nlohmann::json* azp = Member(claims, "azp");
  if (aud_out->size() > 1 && azp == nullptr) {
    return Failed("audience", "the token has several audiences and no azp");
  }
  if (azp != nullptr && (!azp->is_string() || azp->get<std::string>() != client_id)) {
    return Failed("audience", "azp is not this client id");
  }
  return absl::OkStatus();
}

absl::StatusOr<IdTokenClaims> Verify(std::string_view jwt, std::string_view jwks_json,
                                     const IdTokenExpectations& expect) {
  if (expect.issuer.empty() || expect.audience.empty()) {
    return absl::InvalidArgumentError("id_token expectations need an issuer and a client id");
  }
  if (expect.nonce.empty()) {
    return absl::InvalidArgumentError("id_token expectations need the nonce that was sent");
  }
  if (expect.now == absl::InfinitePast() || expect.now == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("id_token expectations need the current time");
  }
  if (expect.leeway < absl::ZeroDuration() || expect.leeway > absl::Minutes(10)) {
    return absl::InvalidArgumentError("id_token leeway must be between 0 and 10 minutes");
  }
  if (jwt.size() > kMaxTokenBytes) return Malformed("it is larger than 16 KiB");
  const size_t dots = static_cast<size_t>(std::count(jwt.begin(), jwt.end(), '.'));
  if (dots == 4) return Malformed("it is encrypted (JWE), which is not supported");
  if (dots != 2) return Malformed("it is not in JWS compact form");
  const size_t d1 = jwt.find('.');
  const size_t d2 = jwt.find('.', d1 + 1);
  const std::string_view header_b64 = jwt.substr(0, d1);
  const std::string_view payload_b64 = jwt.substr(d1 + 1, d2 - d1 - 1);
  const std::string_view signature_b64 = jwt.substr(d2 + 1);
  if (header_b64.empty() || payload_b64.empty()) return Malformed("a segment is empty");

  GV_ASSIGN_OR_RETURN(Header header, ParseHeader(header_b64));
  std::optional<KeyShape> shape = ShapeFor(header.alg);
  if (!shape) {
    return Failed("algorithm", "only RS256, PS256 and ES256 are accepted (not none or HMAC)");
  }
  std::optional<std::string> signature = Base64UrlDecode(signature_b64);
  if (!signature || signature->empty()) return Malformed("the signature is missing");
  if (header.alg == "ES256" && signature->size() != 64) {
    return Failed("signature", "an ES256 signature is 64 bytes");
  }

  GV_ASSIGN_OR_RETURN(nlohmann::json key_json, SelectKey(jwks_json, header, *shape));
  const std::string key_text = key_json.dump();
  cjose_err err{};
  JwkPtr jwk(cjose_jwk_import(key_text.data(), key_text.size(), &err));
  if (!jwk) return absl::InvalidArgumentError("JWKS key cannot be imported");

  JwsPtr jws(cjose_jws_import(jwt.data(), jwt.size(), &err));
  if (!jws) return Malformed("the JWS does not parse");
  // cjose reads the header with its own parser: it must see the same alg.
  cjose_header_t* protected_header = cjose_jws_get_protected(jws.get());
  const char* cjose_alg = protected_header == nullptr
                              ? nullptr
                              : cjose_header_get(protected_header, CJOSE_HDR_ALG, &err);
  if (cjose_alg == nullptr || header.alg != cjose_alg) {
    return Malformed("the header's alg is ambiguous");
  }
  if (!cjose_jws_verify(jws.get(), jwk.get(), &err)) {
    return Failed("signature", "the signature does not verify with the issuer's key");
  }
  uint8_t* plaintext = nullptr;
  size_t plaintext_len = 0;
  if (!cjose_jws_get_plaintext(jws.get(), &plaintext, &plaintext_len, &err) ||
      plaintext == nullptr) {
    return Malformed("the payload cannot be read");
  }
  // The payload cjose verified must be the payload we parse.
  std::optional<std::string> payload = Base64UrlDecode(payload_b64);
  if (!payload || payload->size() != plaintext_len ||
      std::memcmp(payload->data(), plaintext, plaintext_len) != 0) {
    return Malformed("the payload is ambiguous");
  }
  std::optional<nlohmann::json> claims = ParseObjectStrict(*payload);
  if (!claims) return Malformed("the payload is not a JSON object");

  IdTokenClaims out;
  // Issuer.
  std::optional<std::string> iss = StringMember(*claims, "iss");
  if (!iss) return Failed("issuer", "the iss claim is missing");
  if (std::optional<std::string> tid = StringMember(*claims, "tid")) out.tid = *tid;
  std::string expected_issuer = expect.issuer;
  if (size_t at = expected_issuer.find("{tenantid}"); at != std::string::npos) {
    if (!out.tid || !IsGuid(*out.tid)) {
      return Failed("issuer", "a multi-tenant issuer needs a tid claim that is a GUID");
    }
    expected_issuer.replace(at, std::string_view("{tenantid}").size(), *out.tid);
  }
  if (*iss != expected_issuer) {
    return Failed("issuer", absl::StrCat("the token was not issued by ", expect.issuer));
  }
  out.iss = *iss;
  // Audience.
  GV_RETURN_IF_ERROR(CheckAudience(*claims, expect.audience, &out.aud));
  // Time.
  GV_ASSIGN_OR_RETURN(out.exp, TimeClaim(*claims, "exp", true));
  if (!(expect.now - expect.leeway < out.exp)) return Failed("exp", "the token has expired");
  GV_ASSIGN_OR_RETURN(out.iat, TimeClaim(*claims, "iat", true));
  if (out.iat > expect.now + expect.leeway)
    return Failed("iat", "the token is issued in the future");
  GV_ASSIGN_OR_RETURN(absl::Time nbf, TimeClaim(*claims, "nbf", false));
  if (nbf > expect.now + expect.leeway) return Failed("nbf", "the token is not valid yet");
  // Nonce.
  std::optional<std::string> nonce = StringMember(*claims, "nonce");
  if (!nonce) return Failed("nonce", "the nonce claim is missing");
  if (!ConstantTimeEquals(*nonce, expect.nonce)) {
    return Failed("nonce", "the nonce is not the one sent with this authorization");
  }
  // Subject.
  std::optional<std::string> sub = StringMember(*claims, "sub");
  if (!sub || sub->empty() || sub->size() > kMaxSubLength) {
    return Failed("sub", "the sub claim is missing, empty or longer than 255 characters");
  }
  out.sub = *sub;
  // Informational claims: kept when well-typed, ignored otherwise.
  out.email = StringMember(*claims, "email");
  out.name = StringMember(*claims, "name");
  if (const nlohmann::json* ev = Member(*claims, "email_verified")) {
    // Some providers send the string "true".
    out.email_verified = (ev->is_boolean() && ev->get<bool>()) ||
                         (ev->is_string() && ev->get<std::string>() == "true");
  }
  return out;
}

}  // namespace

absl::StatusOr<IdTokenClaims> VerifyIdToken(std::string_view compact_jwt,
                                            std::string_view jwks_json,
                                            const IdTokenExpectations& expect) {
  try {
    return Verify(compact_jwt, jwks_json, expect);
  } catch (const std::exception&) {
    // nlohmann or the allocator; the message could quote the token, so it is dropped.
    return absl::InvalidArgumentError("id_token could not be processed");
  }
}

}  // namespace grantvault::oauth
