#include "hsm/keys.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/softhsm_token.h"

namespace grantvault::hsm {
namespace {

using testing::SoftHsmToken;

class KeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = SoftHsmToken::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    hsm_ = std::move(*t);
  }
  Token& token() { return hsm_->token(); }
  std::unique_ptr<SoftHsmToken> hsm_;
};

TEST(KekLabelTest, RoundTrips) {
  EXPECT_EQ(KekLabel(7), "grantvault-kek-7");
  EXPECT_EQ(KekVersionFromLabel("grantvault-kek-7"), 7);
  EXPECT_EQ(KekVersionFromLabel("grantvault-kek-"), -1);
  EXPECT_EQ(KekVersionFromLabel("grantvault-kek-7x"), -1);
  EXPECT_EQ(KekVersionFromLabel("grantvault-kek-0"), -1);
  EXPECT_EQ(KekVersionFromLabel("other-7"), -1);
}

TEST_F(KeysTest, KekIsSensitiveAndNeverExtractable) {
  absl::StatusOr<KeyRef> kek = GenerateKek(token(), KekLabel(1));
  ASSERT_TRUE(kek.ok()) << kek.status();
  EXPECT_EQ(kek->id.size(), 16u);
  absl::StatusOr<KeyAttributes> a = DescribeKey(token(), CKO_SECRET_KEY, *kek);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->key_type, static_cast<CK_KEY_TYPE>(CKK_AES));
  EXPECT_EQ(a->value_len, 32u);
  EXPECT_TRUE(a->token);
  EXPECT_TRUE(a->private_object);
  EXPECT_TRUE(a->sensitive);
  EXPECT_FALSE(a->extractable);
  EXPECT_TRUE(a->always_sensitive);
  EXPECT_TRUE(a->never_extractable);
  EXPECT_TRUE(a->encrypt);
  EXPECT_TRUE(a->decrypt);
  EXPECT_FALSE(a->wrap);
  EXPECT_FALSE(a->unwrap);
  EXPECT_FALSE(a->derive);
}

TEST_F(KeysTest, ReadingTheKekValueIsRefusedByTheToken) {
  absl::StatusOr<KeyRef> kek = GenerateKek(token(), KekLabel(1));
  ASSERT_TRUE(kek.ok());
  absl::StatusOr<Session> s = token().Acquire();
  ASSERT_TRUE(s.ok());
  absl::StatusOr<CK_OBJECT_HANDLE> h = FindObject(*s, CKO_SECRET_KEY, *kek);
  ASSERT_TRUE(h.ok());
  uint8_t value[64];
  CK_ATTRIBUTE attr{CKA_VALUE, value, sizeof(value)};
  EXPECT_EQ(s->fn()->C_GetAttributeValue(s->handle(), *h, &attr, 1),
            static_cast<CK_RV>(CKR_ATTRIBUTE_SENSITIVE));
  EXPECT_EQ(attr.ulValueLen, CK_UNAVAILABLE_INFORMATION);
  // Nor can it be made extractable after the fact.
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE make_extractable{CKA_EXTRACTABLE, &yes, sizeof(yes)};
  EXPECT_NE(s->fn()->C_SetAttributeValue(s->handle(), *h, &make_extractable, 1),
            static_cast<CK_RV>(CKR_OK));
}

TEST_F(KeysTest, DuplicateLabelIsRefused) {
  ASSERT_TRUE(GenerateKek(token(), KekLabel(1)).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(GenerateKek(token(), KekLabel(1)).status()));
}

TEST_F(KeysTest, ListFindsKeysByPrefixAndDestroyRemovesThem) {
  ASSERT_TRUE(GenerateKek(token(), KekLabel(1)).ok());
  absl::StatusOr<KeyRef> two = GenerateKek(token(), KekLabel(2));
  ASSERT_TRUE(two.ok());
  absl::StatusOr<std::vector<KeyRef>> keys = ListKeys(token(), CKO_SECRET_KEY, kKekLabelPrefix);
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(keys->size(), 2u);
  ASSERT_TRUE(DestroyKey(token(), CKO_SECRET_KEY, *two).ok());
  keys = ListKeys(token(), CKO_SECRET_KEY, kKekLabelPrefix);
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].label, KekLabel(1));
  EXPECT_TRUE(absl::IsNotFound(DescribeKey(token(), CKO_SECRET_KEY, *two).status()));
}

TEST_F(KeysTest, AuditKeySignsWhatOpenSslVerifiesWithThePemPublicKey) {
  absl::StatusOr<KeyRef> key = GenerateSigningKeyPair(token(), "grantvault-audit-1");
  ASSERT_TRUE(key.ok()) << key.status();
  absl::StatusOr<KeyAttributes> a = DescribeKey(token(), CKO_PRIVATE_KEY, *key);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->key_type, static_cast<CK_KEY_TYPE>(CKK_EC));
  EXPECT_TRUE(a->sensitive);
  EXPECT_FALSE(a->extractable);
  EXPECT_TRUE(a->sign);

  absl::StatusOr<std::string> pem = SigningPublicKeyPem(token(), *key);
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_THAT(*pem, ::testing::StartsWith("-----BEGIN PUBLIC KEY-----"));

  const std::string message = "checkpoint: workspace w1, records 1..1000, head abc";
  const auto* bytes = reinterpret_cast<const uint8_t*>(message.data());
  absl::StatusOr<std::vector<uint8_t>> sig = SignSha256(token(), *key, {bytes, message.size()});
  ASSERT_TRUE(sig.ok()) << sig.status();

  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())), BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(
      PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
  ASSERT_NE(pkey, nullptr);
  auto verify = [&](const std::string& m) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, pkey.get());
    return EVP_DigestVerify(ctx.get(), sig->data(), sig->size(),
                            reinterpret_cast<const uint8_t*>(m.data()), m.size()) == 1;
  };
  EXPECT_TRUE(verify(message));
  EXPECT_FALSE(verify(message + "x"));
}

}  // namespace
}  // namespace grantvault::hsm
