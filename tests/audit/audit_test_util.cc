#include "tests/audit/audit_test_util.h"

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/pem.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::audit::testing {

SoftwareSigner::SoftwareSigner(std::string label)
    : label_(std::move(label)), key_(EVP_EC_gen("P-256")) {
  if (key_ == nullptr) std::abort();
}

SoftwareSigner::SoftwareSigner(const SoftwareSigner& other)
    : Signer(), label_(other.label_), key_(other.key_) {
  EVP_PKEY_up_ref(key_);
}

SoftwareSigner::~SoftwareSigner() { EVP_PKEY_free(key_); }

absl::StatusOr<std::vector<uint8_t>> SoftwareSigner::SignSha256(std::span<const uint8_t> data) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  size_t len = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key_) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, data.data(), data.size()) != 1) {
    return absl::InternalError("software signer failed");
  }
  std::vector<uint8_t> sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, data.data(), data.size()) != 1) {
    return absl::InternalError("software signer failed");
  }
  sig.resize(len);
  return sig;
}

absl::StatusOr<std::string> SoftwareSigner::PublicKeyPem() {
  std::unique_ptr<BIO, decltype(&BIO_free_all)> bio(BIO_new(BIO_s_mem()), BIO_free_all);
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key_) != 1) {
    return absl::InternalError("cannot write PEM");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Event AdminEvent(const std::string& workspace, const std::string& reason, const std::string& type) {
  Event e;
  e.type = type;
  e.workspace_id = workspace;
  e.actor.admin_user = "alice";
  e.grant_id = "gr_abcdefghijklmnopqrstuvwxyz";
  e.connector_id = "github";
  e.account_id = "12345";
  e.scopes = {"repo"};
  e.outcome = "ok";
  e.reason = reason;
  e.details = {{"request_id", "req-1"}};
  return e;
}

Event TokenEvent(const std::string& workspace, const std::string& grant_id) {
  Event e;
  e.type = "token.released";
  e.workspace_id = workspace;
  e.actor.uid = 1000;
  e.actor.pid = 4242;
  e.actor.exe = "/usr/bin/agent-host";
  e.grant_id = grant_id;
  e.connector_id = "google_workspace";
  e.account_id = "1134";
  e.scopes = {"https://www.googleapis.com/auth/gmail.readonly"};
  e.outcome = "ok";
  e.details = {{"tool", "gmail.search"}};
  return e;
}

std::string ExportToString(AuditLog& log, const ExportFilter& filter, ExportFormat format) {
  std::ostringstream out;
  absl::Status s = log.Export(filter, format, out, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  return out.str();
}

absl::StatusOr<VerifyReport> VerifyString(const std::string& text, const std::string& pem) {
  std::istringstream in(text);
  return VerifyExportStream(in, pem);
}

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    size_t end = nl == std::string::npos ? text.size() : nl + 1;
    lines.push_back(text.substr(start, end - start));
    start = end;
  }
  return lines;
}

std::string JoinLines(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += l;
  return out;
}

namespace {

size_t FindLine(const std::vector<std::string>& lines, ExportFormat format,
                const std::vector<std::string>& kinds, uint64_t seq) {
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& l = lines[i];
    for (const std::string& kind : kinds) {
      if (format == ExportFormat::kJsonl) {
        if (l.find(absl::StrCat("\"kind\":\"", kind, "\"")) != std::string::npos &&
            l.find(absl::StrCat("\"seq\":", seq, ",")) != std::string::npos) {
          return i;
        }
      } else {
        std::vector<std::string> cells = absl::StrSplit(l, ',');
        if (cells.size() > 2 && cells[0] == kind && cells[2] == std::to_string(seq)) {
          return i;
        }
      }
    }
  }
  return kNoLine;
}

}  // namespace

size_t LineOfSeq(const std::vector<std::string>& lines, ExportFormat format, uint64_t seq) {
  return FindLine(lines, format, {"record", "stub"}, seq);
}

size_t LineOfCheckpoint(const std::vector<std::string>& lines, ExportFormat format, uint64_t seq) {
  return FindLine(lines, format, {"checkpoint"}, seq);
}

std::string SignatureOf(const std::string& line, ExportFormat format) {
  if (format == ExportFormat::kJsonl) {
    size_t start = line.find("\"signature\":\"");
    if (start == std::string::npos) return "";
    start += 13;
    return line.substr(start, line.find('"', start) - start);
  }
  std::vector<std::string> cells = absl::StrSplit(line, ',');
  return cells.size() > 21 ? cells[21] : "";
}

std::string ReadFilesWithPrefix(const std::string& dir, const std::string& prefix) {
  std::string all;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().filename().string().starts_with(prefix) && entry.is_regular_file()) {
      all += grantvault::testing::ReadFileOrDie(entry.path().string());
    }
  }
  return all;
}

}  // namespace grantvault::audit::testing
