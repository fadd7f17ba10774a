#!/usr/bin/env bash
# Installs what is missing, builds grantvault, and starts grantvaultd in the
# foreground on the embedded default state under ./var (a SoftHSM2 token with
# its PINs, KEK 1, the audit signing key and the SQLite database, all created
# on the first start). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target grantvaultd grantvault

./build/daemon/grantvaultd --state-dir ./var --init-only

cat <<MSG

grantvaultd is starting on ./var (sockets in ./var/run). From a second terminal:

  export GRANTVAULT_STATE_DIR=$PWD/var
  ./build/cli/grantvault status
  ./build/cli/grantvault keys status
  ./build/cli/grantvault keys rotate && ./build/cli/grantvault keys rewrap
  ./build/cli/grantvault --json keys status

Look inside the token (type the PIN from var/hsm/user.pin at the prompt):
  SOFTHSM2_CONF=var/hsm/softhsm2.conf pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so \\
    --token-label grantvault --login --list-objects

Stop the daemon with Ctrl-C. Run every test with ./test.sh.

MSG
exec ./build/daemon/grantvaultd --state-dir ./var
