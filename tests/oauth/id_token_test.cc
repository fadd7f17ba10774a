#include "oauth/id_token.h"

#include <cjose/cjose.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/time/time.h"

namespace grantvault::oauth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kIssuer[] = "https://id.example.com";
constexpr char kClientId[] = "client-123";
constexpr char kNonce[] = "n-0S6_WzA2Mj";
const absl::Time kNow = absl::FromUnixSeconds(1'750'000'000);

struct JwkDeleter {
  void operator()(cjose_jwk_t* p) const { cjose_jwk_release(p); }
};
using JwkPtr = std::unique_ptr<cjose_jwk_t, JwkDeleter>;

JwkPtr NewRsaKey(const char* kid, size_t bits = 2048) {
  static const uint8_t kExponent[] = {0x01, 0x00, 0x01};
  cjose_err err{};
  JwkPtr key(cjose_jwk_create_RSA_random(bits, kExponent, sizeof(kExponent), &err));
  EXPECT_TRUE(key) << err.message;
  if (kid != nullptr) {
    EXPECT_TRUE(cjose_jwk_set_kid(key.get(), kid, strlen(kid), &err));
  }
  return key;
}

JwkPtr NewEcKey(const char* kid) {
  cjose_err err{};
  JwkPtr key(cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &err));
  EXPECT_TRUE(key) << err.message;
  if (kid != nullptr) {
    EXPECT_TRUE(cjose_jwk_set_kid(key.get(), kid, strlen(kid), &err));
  }
  return key;
}

nlohmann::json PublicJwk(const cjose_jwk_t* key) {
  cjose_err err{};
  char* text = cjose_jwk_to_json(key, /*priv=*/false, &err);
  EXPECT_NE(text, nullptr);
  nlohmann::json j = nlohmann::json::parse(text);
  cjose_get_dealloc()(text);
  return j;
}

std::string Jwks(std::initializer_list<const cjose_jwk_t*> keys) {
  nlohmann::json jwks = {{"keys", nlohmann::json::array()}};
  for (const cjose_jwk_t* k : keys) jwks["keys"].push_back(PublicJwk(k));
  return jwks.dump();
}

std::string Sign(const cjose_jwk_t* key, const char* alg, const nlohmann::json& claims,
                 const char* kid_override = nullptr) {
  cjose_err err{};
  cjose_header_t* header = cjose_header_new(&err);
  EXPECT_TRUE(cjose_header_set(header, CJOSE_HDR_ALG, alg, &err));
  const char* kid = kid_override != nullptr ? kid_override : cjose_jwk_get_kid(key, &err);
  if (kid != nullptr) {
    EXPECT_TRUE(cjose_header_set(header, CJOSE_HDR_KID, kid, &err));
  }
  const std::string payload = claims.dump();
  cjose_jws_t* jws = cjose_jws_sign(key, header, reinterpret_cast<const uint8_t*>(payload.data()),
                                    payload.size(), &err);
  EXPECT_NE(jws, nullptr) << err.message;
  const char* compact = nullptr;
  EXPECT_TRUE(cjose_jws_export(jws, &compact, &err));
  std::string out = compact;
  cjose_jws_release(jws);
  cjose_header_release(header);
  return out;
}

std::string Base64Url(std::string_view in) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char ch : in) {
    acc = (acc << 8) | static_cast<unsigned char>(ch);
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 0x3f]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 0x3f]);
  return out;
}

nlohmann::json Claims() {
  return {{"iss", kIssuer},
          {"aud", kClientId},
          {"sub", "user-42"},
          {"nonce", kNonce},
          {"iat", absl::ToUnixSeconds(kNow) - 10},
          {"exp", absl::ToUnixSeconds(kNow) + 3600},
          {"email", "ada@example.com"},
          {"email_verified", true},
          {"name", "Ada Lovelace"}};
}

IdTokenExpectations Expect() {
  IdTokenExpectations e;
  e.issuer = kIssuer;
  e.audience = kClientId;
  e.nonce = kNonce;
  e.now = kNow;
  e.leeway = absl::Minutes(2);
  return e;
}

class IdTokenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ = NewRsaKey("rsa-1").release();
    ec_ = NewEcKey("ec-1").release();
    other_rsa_ = NewRsaKey("rsa-1").release();  // same kid, another key
  }
  static void TearDownTestSuite() {
    cjose_jwk_release(rsa_);
    cjose_jwk_release(ec_);
    cjose_jwk_release(other_rsa_);
  }
  static std::string IssuerJwks() { return Jwks({rsa_, ec_}); }

  // Expects a failure whose message names `check` and quotes nothing of the token.
  static void ExpectRefused(const std::string& token, const std::string& jwks,
                            const IdTokenExpectations& expect, const std::string& check) {
    absl::StatusOr<IdTokenClaims> claims = VerifyIdToken(token, jwks, expect);
    ASSERT_FALSE(claims.ok()) << check;
    const std::string message(claims.status().message());
    EXPECT_THAT(message, HasSubstr(check));
    const size_t first_dot = token.find('.');
    if (first_dot != std::string::npos && first_dot > 8) {
      EXPECT_THAT(message, Not(HasSubstr(token.substr(0, first_dot))));
    }
    EXPECT_THAT(message, Not(HasSubstr("user-42")));
    EXPECT_THAT(message, Not(HasSubstr(kNonce)));
  }

  static cjose_jwk_t* rsa_;
  static cjose_jwk_t* ec_;
  static cjose_jwk_t* other_rsa_;
};

cjose_jwk_t* IdTokenTest::rsa_ = nullptr;
cjose_jwk_t* IdTokenTest::ec_ = nullptr;
cjose_jwk_t* IdTokenTest::other_rsa_ = nullptr;

TEST_F(IdTokenTest, ValidRs256) {
  absl::StatusOr<IdTokenClaims> claims =
      VerifyIdToken(Sign(rsa_, CJOSE_HDR_ALG_RS256, Claims()), IssuerJwks(), Expect());
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->sub, "user-42");
  EXPECT_EQ(claims->iss, kIssuer);
  EXPECT_EQ(claims->aud, std::vector<std::string>{kClientId});
  EXPECT_EQ(claims->email, "ada@example.com");
  EXPECT_TRUE(claims->email_verified);
  EXPECT_EQ(claims->name, "Ada Lovelace");
  EXPECT_EQ(claims->exp, kNow + absl::Hours(1));
  EXPECT_EQ(claims->iat, kNow - absl::Seconds(10));
}

TEST_F(IdTokenTest, ValidEs256AndPs256) {
  absl::StatusOr<IdTokenClaims> es =
      VerifyIdToken(Sign(ec_, CJOSE_HDR_ALG_ES256, Claims()), IssuerJwks(), Expect());
  ASSERT_TRUE(es.ok()) << es.status();
  EXPECT_EQ(es->sub, "user-42");
  absl::StatusOr<IdTokenClaims> ps =
      VerifyIdToken(Sign(rsa_, CJOSE_HDR_ALG_PS256, Claims()), IssuerJwks(), Expect());
  ASSERT_TRUE(ps.ok()) << ps.status();
}

TEST_F(IdTokenTest, WrongAudience) {
  nlohmann::json c = Claims();
  c["aud"] = "another-client";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "audience");
}

TEST_F(IdTokenTest, AudienceArrays) {
  nlohmann::json c = Claims();
  c["aud"] = {"another-client", kClientId};
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "no azp");
  c["azp"] = "another-client";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "azp");
  c["azp"] = kClientId;
  absl::StatusOr<IdTokenClaims> ok =
      VerifyIdToken(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->aud.size(), 2u);
}

TEST_F(IdTokenTest, WrongNonce) {
  nlohmann::json c = Claims();
  c["nonce"] = "a-different-nonce";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "nonce");
  c.erase("nonce");
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "nonce");
}

TEST_F(IdTokenTest, WrongIssuer) {
  nlohmann::json c = Claims();
  c["iss"] = "https://evil.example.com";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "issuer");
  c["iss"] = std::string(kIssuer) + "/";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "issuer");
}

TEST_F(IdTokenTest, Expired) {
  nlohmann::json c = Claims();
  c["exp"] = absl::ToUnixSeconds(kNow) - 600;
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "exp");
  // Within the leeway it still passes.
  c["exp"] = absl::ToUnixSeconds(kNow) - 60;
  EXPECT_TRUE(VerifyIdToken(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect()).ok());
}

TEST_F(IdTokenTest, IssuedInTheFuture) {
  nlohmann::json c = Claims();
  c["iat"] = absl::ToUnixSeconds(kNow) + 3600;
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "iat");
  c = Claims();
  c["nbf"] = absl::ToUnixSeconds(kNow) + 3600;
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "nbf");
}

TEST_F(IdTokenTest, BadSignatureFromAnotherKey) {
  // Same kid, signed by a key that is not in the issuer's JWKS.
  ExpectRefused(Sign(other_rsa_, CJOSE_HDR_ALG_RS256, Claims()), IssuerJwks(), Expect(),
                "signature");
}

TEST_F(IdTokenTest, AlgNoneIsRefused) {
  const std::string header = Base64Url(R"({"alg":"none","kid":"rsa-1"})");
  const std::string payload = Base64Url(Claims().dump());
  ExpectRefused(header + "." + payload + ".", IssuerJwks(), Expect(), "algorithm");
  ExpectRefused(header + "." + payload + "." + Base64Url("sig"), IssuerJwks(), Expect(),
                "algorithm");
}

TEST_F(IdTokenTest, HmacIsRefused) {
  cjose_err err{};
  JwkPtr secret(cjose_jwk_create_oct_random(32, &err));
  ASSERT_TRUE(secret);
  ExpectRefused(Sign(secret.get(), CJOSE_HDR_ALG_HS256, Claims(), "rsa-1"), IssuerJwks(), Expect(),
                "algorithm");
}

TEST_F(IdTokenTest, TamperedPayload) {
  const std::string token = Sign(rsa_, CJOSE_HDR_ALG_RS256, Claims());
  nlohmann::json forged = Claims();
  forged["sub"] = "admin";
  const size_t d1 = token.find('.');
  const size_t d2 = token.find('.', d1 + 1);
  const std::string tampered =
      token.substr(0, d1 + 1) + Base64Url(forged.dump()) + token.substr(d2);
  ExpectRefused(tampered, IssuerJwks(), Expect(), "signature");
}

TEST_F(IdTokenTest, UnknownKid) {
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, Claims(), "rotated-away"), IssuerJwks(), Expect(),
                "kid");
}

TEST_F(IdTokenTest, NoKidUsesTheOnlyFittingKey) {
  JwkPtr lone = NewRsaKey(nullptr);
  const std::string token = Sign(lone.get(), CJOSE_HDR_ALG_RS256, Claims());
  // The JWKS has one RSA key (and an EC key, which does not fit RS256).
  absl::StatusOr<IdTokenClaims> ok = VerifyIdToken(token, Jwks({lone.get(), ec_}), Expect());
  ASSERT_TRUE(ok.ok()) << ok.status();
  // Two RSA keys and no kid: ambiguous.
  ExpectRefused(token, Jwks({lone.get(), rsa_}), Expect(), "several keys");
}

TEST_F(IdTokenTest, ShortRsaKeyIsRefused) {
  JwkPtr weak = NewRsaKey("weak", 1024);
  ExpectRefused(Sign(weak.get(), CJOSE_HDR_ALG_RS256, Claims()), Jwks({weak.get()}), Expect(),
                "2048");
}

TEST_F(IdTokenTest, MissingOrEmptySub) {
  nlohmann::json c = Claims();
  c["sub"] = "";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "sub");
  c.erase("sub");
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), Expect(), "sub");
}

TEST_F(IdTokenTest, MicrosoftMultiTenantIssuer) {
  IdTokenExpectations e = Expect();
  e.issuer = "https://login.microsoftonline.com/{tenantid}/v2.0";
  nlohmann::json c = Claims();
  c["tid"] = "72f988bf-86f1-41af-91ab-2d7cd011db47";
  c["iss"] = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
  absl::StatusOr<IdTokenClaims> ok =
      VerifyIdToken(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), e);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->tid, "72f988bf-86f1-41af-91ab-2d7cd011db47");
  // The iss must match the tid, and the tid must be a GUID.
  c["tid"] = "9188040d-6c67-4c5b-b112-36a304b66dad";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), e, "issuer");
  c["tid"] = "evil.com/x";
  c["iss"] = "https://login.microsoftonline.com/evil.com/x/v2.0";
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, c), IssuerJwks(), e, "tid");
}

TEST_F(IdTokenTest, MalformedInputs) {
  const std::string jwks = IssuerJwks();
  for (const char* bad :
       {"", "abc", "a.b", "a.b.c.d", "a.b.c.d.e", "!!!.e30.c2ln", "e30.e30.c2ln"}) {
    absl::StatusOr<IdTokenClaims> r = VerifyIdToken(bad, jwks, Expect());
    EXPECT_FALSE(r.ok()) << bad;
  }
  EXPECT_THAT(std::string(VerifyIdToken("a.b.c.d.e", jwks, Expect()).status().message()),
              HasSubstr("JWE"));
  // A duplicate member is refused rather than resolved one way or the other.
  const std::string header = Base64Url(R"({"alg":"RS256","alg":"none"})");
  EXPECT_FALSE(VerifyIdToken(header + ".e30.c2ln", jwks, Expect()).ok());
  // Broken JWKS.
  const std::string token = Sign(rsa_, CJOSE_HDR_ALG_RS256, Claims());
  for (const char* bad_jwks : {"", "[]", "{}", R"({"keys": 1})", R"({"keys": [{"kty": "RSA",
      "kid": "rsa-1", "n": 5, "e": "AQAB"}]})"}) {
    EXPECT_FALSE(VerifyIdToken(token, bad_jwks, Expect()).ok()) << bad_jwks;
  }
  // Expectations without a nonce are a caller error.
  IdTokenExpectations no_nonce = Expect();
  no_nonce.nonce.clear();
  absl::StatusOr<IdTokenClaims> r = VerifyIdToken(token, jwks, no_nonce);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  // So are expectations without the current time.
  IdTokenExpectations no_clock = Expect();
  no_clock.now = absl::InfinitePast();
  EXPECT_EQ(VerifyIdToken(token, jwks, no_clock).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(IdTokenTest, KeyWithOtherUseIsNotUsed) {
  nlohmann::json pub = PublicJwk(rsa_);
  pub["use"] = "enc";
  const std::string jwks = nlohmann::json({{"keys", {pub}}}).dump();
  ExpectRefused(Sign(rsa_, CJOSE_HDR_ALG_RS256, Claims()), jwks, Expect(), "kid");
}

}  // namespace
}  // namespace grantvault::oauth
