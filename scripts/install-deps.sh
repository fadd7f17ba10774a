#!/usr/bin/env bash
# Installs the Debian 12 packages grantvault needs to build, test and run, if
# any is missing. Idempotent: a machine that has them all is left alone.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang-format
  libsodium-dev libabsl-dev libssl-dev libsqlite3-dev sqlite3
  softhsm2 p11-kit libp11-kit-dev opensc
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev
  libboost-dev protobuf-compiler libprotobuf-dev libtomlplusplus-dev libspdlog-dev
  libsystemd-dev nlohmann-json3-dev
)

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Installing missing packages: ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install as root: apt-get install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
