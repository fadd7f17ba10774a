#include "oauth/pkce.h"

#include <sodium.h>

#include <algorithm>
#include <array>
#include <vector>

#include "common/ids.h"
#include "common/status.h"

namespace grantvault::oauth {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded decoding ('+' is a space).
absl::StatusOr<std::string> Decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%') {
      if (i + 2 >= s.size()) {
        return absl::InvalidArgumentError("malformed percent-escape in the redirect URL");
      }
      int hi = HexValue(s[i + 1]), lo = HexValue(s[i + 2]);
      if (hi < 0 || lo < 0) {
        return absl::InvalidArgumentError("malformed percent-escape in the redirect URL");
      }
      out.push_back(static_cast<char>(hi << 4 | lo));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool IsBase64UrlChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

int Base64UrlValue(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  return c == '-' ? 62 : 63;
}

}  // namespace

std::string Base64Url(const uint8_t* data, size_t size) {
  const size_t max = sodium_base64_ENCODED_LEN(size, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  std::string out(max, '\0');
  sodium_bin2base64(out.data(), max, data, size, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  out.resize(std::char_traits<char>::length(out.c_str()));
  return out;
}

std::optional<std::string> Base64UrlDecode(std::string_view in) {
  if (in.size() % 4 == 1 || !std::all_of(in.begin(), in.end(), IsBase64UrlChar)) {
    return std::nullopt;
  }
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    acc = (acc << 6) | static_cast<uint32_t>(Base64UrlValue(c));
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xffu));
    }
  }
  // Leftover bits must be zero (canonical encoding).
  if (bits > 0 && (acc & ((1u << bits) - 1u)) != 0) return std::nullopt;
  return out;
}

std::string Base64(std::string_view data) {
  const size_t max = sodium_base64_ENCODED_LEN(data.size(), sodium_base64_VARIANT_ORIGINAL);
  std::string out(max, '\0');
  sodium_bin2base64(out.data(), max, reinterpret_cast<const uint8_t*>(data.data()), data.size(),
                    sodium_base64_VARIANT_ORIGINAL);
  out.resize(std::char_traits<char>::length(out.c_str()));
  return out;
}

std::string NewState() {
  SecretBytes raw = SecretBytes::Random(32);
  return Base64Url(raw.data(), raw.size());
}

std::string StateDigest(std::string_view state) {
  std::array<uint8_t, crypto_hash_sha256_BYTES> digest;
  crypto_hash_sha256(digest.data(), reinterpret_cast<const uint8_t*>(state.data()), state.size());
  return Hex(digest);
}

std::string NewNonce() {
  SecretBytes raw = SecretBytes::Random(16);
  return Base64Url(raw.data(), raw.size());
}

SecretBytes NewPkceVerifier() {
  SecretBytes raw = SecretBytes::Random(32);
  std::string text = Base64Url(raw.data(), raw.size());
  return SecretBytes::TakeFrom(text);
}

std::string PkceChallengeS256(const SecretBytes& verifier) {
  std::array<uint8_t, crypto_hash_sha256_BYTES> digest;
  crypto_hash_sha256(digest.data(), verifier.data(), verifier.size());
  std::string out = Base64Url(digest.data(), digest.size());
  sodium_memzero(digest.data(), digest.size());
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQuery(
    std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    std::string_view part =
        query.substr(pos, amp == std::string_view::npos ? query.size() - pos : amp - pos);
    if (!part.empty()) {
      size_t eq = part.find('=');
      GV_ASSIGN_OR_RETURN(std::string name, Decode(part.substr(0, eq)));
      std::string value;
      if (eq != std::string_view::npos) {
        GV_ASSIGN_OR_RETURN(value, Decode(part.substr(eq + 1)));
      }
      out.emplace_back(std::move(name), std::move(value));
    }
    if (amp == std::string_view::npos) break;
    pos = amp + 1;
  }
  return out;
}

absl::StatusOr<Callback> ParseCallback(std::string_view url_or_query) {
  std::string_view query = url_or_query;
  if (size_t q = query.find('?'); q != std::string_view::npos) query = query.substr(q + 1);
  if (size_t hash = query.find('#'); hash != std::string_view::npos) query = query.substr(0, hash);
  if (query.size() > 16384) return absl::InvalidArgumentError("the redirect URL is too long");
  GV_ASSIGN_OR_RETURN(auto fields, ParseQuery(query));
  Callback cb;
  bool has_code = false;
  for (auto& [name, value] : fields) {
    if (name == "state") {
      cb.state = value;
    } else if (name == "code") {
      if (has_code) return absl::InvalidArgumentError("the redirect URL carries two codes");
      cb.code = SecretBytes::TakeFrom(value);
      has_code = true;
    } else if (name == "error") {
      cb.error = value;
    } else if (name == "error_description") {
      cb.error_description = value.substr(0, 512);
    } else if (name == "iss") {
      cb.issuer = value;
    }
    sodium_memzero(value.data(), value.size());
  }
  if (cb.state.empty()) {
    return absl::InvalidArgumentError("the redirect URL has no state parameter");
  }
  if (cb.error.empty() && cb.code.empty()) {
    return absl::InvalidArgumentError("the redirect URL has neither a code nor an error");
  }
  return cb;
}

}  // namespace grantvault::oauth
