// Throw-away X.509 certificates for TLS tests, generated in-process with
// OpenSSL: a self-signed CA and server certificates it issues (EC P-256,
// ECDSA-SHA256, valid from an hour ago for a day). Every failure aborts the
// test binary.
#ifndef GRANTVAULT_TESTS_TESTING_TEST_CERT_H_
#define GRANTVAULT_TESTS_TESTING_TEST_CERT_H_

#include <openssl/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace grantvault::testing {

// PEM files on disk.
struct CertificateFiles {
  std::string ca_file;    // the issuing CA's certificate: what a client trusts
  std::string cert_file;  // the server certificate
  std::string key_file;   // the server's private key, unencrypted PKCS#8
};

class TestCa {
 public:
  explicit TestCa(std::string_view common_name = "grantvault test CA");
  ~TestCa();
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  std::string CertificatePem() const;

  // Issues a server certificate (serverAuth) whose subjectAltName lists
  // `subject_alt_names`, each in OpenSSL's form ("IP:127.0.0.1",
  // "DNS:localhost"), and writes <dir>/ca.pem, <dir>/<name>.pem and
  // <dir>/<name>.key.
  CertificateFiles IssueServerCertificate(const std::string& dir,
                                          const std::vector<std::string>& subject_alt_names,
                                          std::string_view name = "server") const;

 private:
  struct KeyFree {
    void operator()(EVP_PKEY* key) const;
  };
  struct CertFree {
    void operator()(X509* cert) const;
  };
  std::unique_ptr<EVP_PKEY, KeyFree> key_;
  std::unique_ptr<X509, CertFree> cert_;
};

// A new CA and a server certificate for `subject_alt_names`, written as
// ca.pem, server.pem and server.key in `dir`.
CertificateFiles WriteTestCertificates(const std::string& dir,
                                       const std::vector<std::string>& subject_alt_names = {
                                           "IP:127.0.0.1", "DNS:localhost"});

// Like WriteTestCertificates, but the server certificate names neither
// 127.0.0.1 nor localhost (only DNS:wrong-host.invalid and IP:192.0.2.1), so
// a client connecting to either must refuse it.
CertificateFiles WriteMismatchedTestCertificates(const std::string& dir);

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_TEST_CERT_H_
