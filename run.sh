#!/usr/bin/env bash
# Installs what is missing, builds grantvault, and creates (or checks) the
# embedded default state under ./var: a SoftHSM2 token with its PINs, KEK 1,
# the audit signing key and the SQLite database.
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target grantvaultd

./build/daemon/grantvaultd --state-dir ./var --init-only

cat <<'MSG'

Next:
  ls -l var var/hsm                      # what was created, and its modes
  SOFTHSM2_CONF=var/hsm/softhsm2.conf pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so \
    --token-label grantvault --login --list-objects
                                         # the KEK and audit key, sensitive and non-extractable
                                         # (type the PIN from var/hsm/user.pin at the prompt)
  ./test.sh                              # every test, also under ASan + UBSan
MSG
