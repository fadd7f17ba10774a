// AuditExport on admin.sock: a chain's records, signed, streamed as chunks.
#include <ostream>
#include <streambuf>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "front/service.h"

namespace grantvault::front {

namespace {

// Sends what is written to it as AuditExportChunk responses of at most
// kChunkBytes each (protobuf + frame overhead stay well inside 64 KiB).
class ChunkStream final : public std::streambuf {
 public:
  static constexpr size_t kChunkBytes = 48 * 1024;
  ChunkStream(ipc::Connection& connection, uint64_t request_id)
      : connection_(connection), request_id_(request_id) {
    buffer_.resize(kChunkBytes);
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }
  void set_progress(uint64_t done, uint64_t total) {
    done_ = done;
    total_ = total;
  }
  uint64_t bytes() const { return bytes_; }
  bool Flush() {
    const size_t n = static_cast<size_t>(pptr() - pbase());
    if (n == 0) return true;
    v1::Response r;
    r.set_request_id(request_id_);
    r.set_more(true);
    v1::AuditExportChunk* chunk = r.mutable_audit_export_chunk();
    chunk->set_data(std::string(pbase(), n));
    chunk->set_done(done_);
    chunk->set_total(total_);
    bytes_ += n;
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    std::string frame;
    if (!r.SerializeToString(&frame)) return false;
    return connection_.Send(std::move(frame), /*final=*/false);
  }

 protected:
  int_type overflow(int_type ch) override {
    if (!Flush()) return traits_type::eof();
    if (ch != traits_type::eof()) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }
  int sync() override { return Flush() ? 0 : -1; }

 private:
  ipc::Connection& connection_;
  const uint64_t request_id_;
  std::vector<char> buffer_;
  uint64_t done_ = 0, total_ = 0, bytes_ = 0;
};

}  // namespace

absl::Status Service::RunAuditExport(const std::shared_ptr<ipc::Connection>& connection,
                                     const v1::Request& request, v1::Response& response) {
  if (trail_.audit == nullptr) {
    return absl::FailedPreconditionError("auditing is turned off ([audit] enabled = false)");
  }
  const v1::AuditExportRequest& in = request.audit_export();
  if (in.workspace_id().empty() && !in.system()) {
    return absl::InvalidArgumentError("name a workspace, or ask for the system chain");
  }
  if (!in.workspace_id().empty() && in.system()) {
    return absl::InvalidArgumentError("a workspace or the system chain, not both");
  }
  audit::ExportFormat format = audit::ExportFormat::kJsonl;
  if (in.format() == "csv") {
    format = audit::ExportFormat::kCsv;
  } else if (!in.format().empty() && in.format() != "jsonl") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown export format '", in.format(), "' (jsonl or csv)"));
  }
  audit::ExportFilter filter;
  filter.workspace_id = in.workspace_id();
  if (in.since_ms() != 0) filter.since = absl::FromUnixMillis(in.since_ms());
  if (in.until_ms() != 0) filter.until = absl::FromUnixMillis(in.until_ms());
  filter.types.assign(in.event_types().begin(), in.event_types().end());
  ChunkStream chunks(*connection, request.request_id());
  std::ostream out(&chunks);
  uint64_t records = 0;
  GV_RETURN_IF_ERROR(trail_.audit->Export(filter, format, out, [&](uint64_t done, uint64_t total) {
    chunks.set_progress(done, total);
    records = done;
  }));
  out.flush();
  if (!chunks.Flush()) return absl::UnavailableError("the connection closed during the export");
  response.mutable_audit_export()->set_records(records);
  response.mutable_audit_export()->set_bytes(chunks.bytes());
  return absl::OkStatus();
}

}  // namespace grantvault::front
