#include "hsm/data_object.h"

#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/softhsm_token.h"

namespace grantvault::hsm {
namespace {

using ::testing::HasSubstr;
using testing::SoftHsmToken;

class DataObjectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = SoftHsmToken::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    hsm_ = std::move(*t);
  }
  Token& token() { return hsm_->token(); }
  std::unique_ptr<SoftHsmToken> hsm_;
};

TEST_F(DataObjectTest, AbsentThenWrittenThenOverwrittenAndItSurvivesAReopen) {
  auto none = ReadDataObject(token(), "anchor");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());

  const std::vector<uint8_t> first = {1, 2, 3};
  ASSERT_TRUE(WriteDataObject(token(), "anchor", first).ok());
  const std::vector<uint8_t> second(3000, 0xab);  // longer than the first
  absl::Status overwritten = WriteDataObject(token(), "anchor", second);
  ASSERT_TRUE(overwritten.ok()) << overwritten;

  ASSERT_TRUE(hsm_->Reopen().ok());
  auto read = ReadDataObject(token(), "anchor");
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, second);
  auto other = ReadDataObject(token(), "anchor-other");
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->has_value());
}

TEST_F(DataObjectTest, AnEmptyValueIsAValue) {
  ASSERT_TRUE(WriteDataObject(token(), "empty", {}).ok());
  auto read = ReadDataObject(token(), "empty");
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  EXPECT_TRUE((*read)->empty());
}

TEST_F(DataObjectTest, TheObjectIsAPrivateTokenObject) {
  ASSERT_TRUE(WriteDataObject(token(), "anchor", std::vector<uint8_t>{7}).ok());
  auto session = token().Acquire();
  ASSERT_TRUE(session.ok());
  CK_OBJECT_CLASS cls = CKO_DATA;
  std::string label = "anchor";
  CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label.data(), label.size()}};
  ASSERT_EQ(session->fn()->C_FindObjectsInit(session->handle(), find, 2), CKR_OK);
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  ASSERT_EQ(session->fn()->C_FindObjects(session->handle(), &handle, 1, &n), CKR_OK);
  ASSERT_EQ(session->fn()->C_FindObjectsFinal(session->handle()), CKR_OK);
  ASSERT_EQ(n, 1u);
  CK_BBOOL is_token = CK_FALSE, is_private = CK_FALSE;
  CK_ATTRIBUTE attrs[] = {{CKA_TOKEN, &is_token, sizeof(is_token)},
                          {CKA_PRIVATE, &is_private, sizeof(is_private)}};
  ASSERT_EQ(session->fn()->C_GetAttributeValue(session->handle(), handle, attrs, 2), CKR_OK);
  EXPECT_EQ(is_token, CK_TRUE);
  EXPECT_EQ(is_private, CK_TRUE);
}

TEST_F(DataObjectTest, TwoObjectsUnderOneLabelAreRefusedAndDestroyRemovesThem) {
  ASSERT_TRUE(WriteDataObject(token(), "anchor", std::vector<uint8_t>{1}).ok());
  // A second object under the same label, as someone with the PIN could add.
  {
    auto session = token().Acquire();
    ASSERT_TRUE(session.ok());
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    std::string label = "anchor", application = kDataObjectApplication;
    uint8_t value = 2;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_TOKEN, &yes, sizeof(yes)},
                           {CKA_PRIVATE, &yes, sizeof(yes)},
                           {CKA_LABEL, label.data(), label.size()},
                           {CKA_APPLICATION, application.data(), application.size()},
                           {CKA_VALUE, &value, 1}};
    CK_OBJECT_HANDLE created;
    ASSERT_EQ(session->fn()->C_CreateObject(session->handle(), tmpl, 6, &created), CKR_OK);
  }
  auto read = ReadDataObject(token(), "anchor");
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(read.status().message(), HasSubstr("2 data objects labelled \"anchor\""));
  EXPECT_EQ(WriteDataObject(token(), "anchor", std::vector<uint8_t>{3}).code(),
            absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(DestroyDataObject(token(), "anchor").ok());
  auto gone = ReadDataObject(token(), "anchor");
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
  EXPECT_TRUE(DestroyDataObject(token(), "anchor").ok());
}

}  // namespace
}  // namespace grantvault::hsm
