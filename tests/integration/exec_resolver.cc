// A second program for the attestation tests (resolve_test): a process that
// was attested as another executable execs this one, keeping its agent.sock
// connection open across the exec (no CLOEXEC), and this program then asks
// on it. Usage: exec_resolver <fd> <workspace> <tool> <request id>. Sends
// Resolve{workspace, connector "demo", tool, min_valid_seconds 1} (the same
// encoding as resolve_test's ResolveRequest), reads the answer and prints one
// line: "code=<Error.Code, 0 for a token> closed=<0|1>", closed meaning that
// the daemon closed the connection within 5 s of the answer. It never prints
// a token.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "grantvault/v1/envelope.pb.h"
#include "tests/integration/raw_socket.h"

int main(int argc, char** argv) {
  int fd = -1;
  uint64_t request_id = 0;
  if (argc != 5 || !absl::SimpleAtoi(argv[1], &fd) || !absl::SimpleAtoi(argv[4], &request_id)) {
    std::fprintf(stderr, "usage: exec_resolver <fd> <workspace> <tool> <request id>\n");
    return 2;
  }
  grantvault::testing::RawSocket raw(grantvault::testing::RawSocket::AdoptFd{fd});
  grantvault::v1::Request request;
  request.set_request_id(request_id);
  grantvault::v1::ResolveRequest* in = request.mutable_resolve();
  in->set_workspace_id(argv[2]);
  in->set_connector_id("demo");
  in->set_tool(argv[3]);
  in->set_min_valid_seconds(1);
  if (!raw.WriteRequest(request)) {
    std::printf("code=write-failed closed=1\n");
    return 0;
  }
  std::optional<grantvault::v1::Response> response = raw.ReadResponse(absl::Seconds(20));
  if (!response) {
    std::printf("code=no-answer closed=1\n");
    return 0;
  }
  const int code = response->has_error() ? static_cast<int>(response->error().code()) : 0;
  const bool closed = raw.ClosedByPeer(absl::Seconds(5));
  std::printf("code=%d closed=%d\n", code, closed ? 1 : 0);
  return 0;
}
