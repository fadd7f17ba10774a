#!/usr/bin/env bash
# Writes a self-signed certificate for https://127.0.0.1 (also valid for
# "localhost") into DIR: DIR/cert.pem (also the CA file clients trust) and
# DIR/key.pem (mode 0600). Valid for 30 days; EC P-256.
#   usage: provider-cert.sh DIR
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
  -days 30 -keyout "$dir/key.pem.tmp" -out "$dir/cert.pem.tmp" 2>/dev/null
chmod 0600 "$dir/key.pem.tmp"
chmod 0644 "$dir/cert.pem.tmp"
mv -f "$dir/key.pem.tmp" "$dir/key.pem"
mv -f "$dir/cert.pem.tmp" "$dir/cert.pem"
