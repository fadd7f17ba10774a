#include "tests/testing/test_cert.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace grantvault::testing {
namespace {

struct OpenSslFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
template <typename T>
using OpenSslPtr = std::unique_ptr<T, OpenSslFree>;

void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "test_cert: %s failed\n", what);
  ERR_print_errors_fp(stderr);
  std::abort();
}

OpenSslPtr<EVP_PKEY> NewP256Key() {
  OpenSslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  Check(ctx != nullptr && EVP_PKEY_keygen_init(ctx.get()) == 1 &&
            EVP_PKEY_CTX_set_group_name(ctx.get(), "P-256") == 1,
        "EC key generation setup");
  EVP_PKEY* key = nullptr;
  Check(EVP_PKEY_generate(ctx.get(), &key) == 1, "EC key generation");
  return OpenSslPtr<EVP_PKEY>(key);
}

// A certificate for `subject_key` named `common_name`, signed by `issuer_key`
// on behalf of `issuer` (self-signed when `issuer` is null).
OpenSslPtr<X509> NewCertificate(EVP_PKEY* subject_key, const std::string& common_name, X509* issuer,
                                EVP_PKEY* issuer_key,
                                const std::vector<std::pair<int, std::string>>& extensions) {
  OpenSslPtr<X509> cert(X509_new());
  Check(cert != nullptr && X509_set_version(cert.get(), X509_VERSION_3) == 1, "X509_new");
  OpenSslPtr<BIGNUM> serial(BN_new());
  Check(serial != nullptr && BN_rand(serial.get(), 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
            BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) != nullptr,
        "serial number");
  Check(X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) != nullptr &&
            X509_gmtime_adj(X509_getm_notAfter(cert.get()), 24 * 3600) != nullptr,
        "validity");
  Check(X509_set_pubkey(cert.get(), subject_key) == 1, "X509_set_pubkey");
  X509_NAME* subject = X509_get_subject_name(cert.get());
  Check(X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                   -1, 0) == 1,
        "subject name");
  Check(X509_set_issuer_name(cert.get(),
                             issuer != nullptr ? X509_get_subject_name(issuer) : subject) == 1,
        "issuer name");
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  for (const auto& [nid, value] : extensions) {
    OpenSslPtr<X509_EXTENSION> extension(X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str()));
    Check(extension != nullptr && X509_add_ext(cert.get(), extension.get(), -1) == 1,
          "certificate extension");
  }
  Check(X509_sign(cert.get(), issuer_key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

void WriteCertificate(const std::string& path, X509* cert) {
  OpenSslPtr<BIO> bio(BIO_new_file(path.c_str(), "w"));
  Check(bio != nullptr && PEM_write_bio_X509(bio.get(), cert) == 1, "writing a certificate");
}

void WriteKey(const std::string& path, EVP_PKEY* key) {
  OpenSslPtr<BIO> bio(BIO_new_file(path.c_str(), "w"));
  Check(bio != nullptr &&
            PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "writing a private key");
}

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& part : parts) {
    if (!out.empty()) out.push_back(',');
    out.append(part);
  }
  return out;
}

}  // namespace

void TestCa::KeyFree::operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
void TestCa::CertFree::operator()(X509* cert) const { X509_free(cert); }

TestCa::TestCa(std::string_view common_name) {
  OpenSslPtr<EVP_PKEY> key = NewP256Key();
  OpenSslPtr<X509> cert = NewCertificate(key.get(), std::string(common_name), nullptr, key.get(),
                                         {{NID_basic_constraints, "critical,CA:TRUE"},
                                          {NID_key_usage, "critical,keyCertSign,cRLSign"},
                                          {NID_subject_key_identifier, "hash"}});
  key_.reset(key.release());
  cert_.reset(cert.release());
}

TestCa::~TestCa() = default;

std::string TestCa::CertificatePem() const {
  OpenSslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  Check(bio != nullptr && PEM_write_bio_X509(bio.get(), cert_.get()) == 1, "PEM encoding");
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

CertificateFiles TestCa::IssueServerCertificate(const std::string& dir,
                                                const std::vector<std::string>& subject_alt_names,
                                                std::string_view name) const {
  Check(!subject_alt_names.empty(), "a server certificate needs a subjectAltName");
  OpenSslPtr<EVP_PKEY> key = NewP256Key();
  OpenSslPtr<X509> cert =
      NewCertificate(key.get(), "grantvault test server", cert_.get(), key_.get(),
                     {{NID_basic_constraints, "critical,CA:FALSE"},
                      {NID_key_usage, "critical,digitalSignature"},
                      {NID_ext_key_usage, "serverAuth"},
                      {NID_subject_key_identifier, "hash"},
                      {NID_authority_key_identifier, "keyid:always"},
                      {NID_subject_alt_name, Join(subject_alt_names)}});
  CertificateFiles files;
  files.ca_file = dir + "/ca.pem";
  files.cert_file = dir + "/" + std::string(name) + ".pem";
  files.key_file = dir + "/" + std::string(name) + ".key";
  WriteCertificate(files.ca_file, cert_.get());
  WriteCertificate(files.cert_file, cert.get());
  WriteKey(files.key_file, key.get());
  return files;
}

CertificateFiles WriteTestCertificates(const std::string& dir,
                                       const std::vector<std::string>& subject_alt_names) {
  return TestCa().IssueServerCertificate(dir, subject_alt_names);
}

CertificateFiles WriteMismatchedTestCertificates(const std::string& dir) {
  return WriteTestCertificates(dir, {"DNS:wrong-host.invalid", "IP:192.0.2.1"});
}

}  // namespace grantvault::testing
