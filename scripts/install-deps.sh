#!/usr/bin/env bash
# Installs the Debian 12 packages grantvault needs to build, test and run, if
# any is missing, and the locked npm packages of the local authorization server
# (tests/provider). Idempotent: a machine that has them all is left alone.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang-format
  libsodium-dev libabsl-dev libssl-dev libsqlite3-dev sqlite3
  libpq-dev postgresql  # the PostgreSQL backend (db/postgres.h); tests start their own server
  softhsm2 p11-kit libp11-kit-dev opensc
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev
  libboost-dev protobuf-compiler libprotobuf-dev libtomlplusplus-dev libspdlog-dev
  libsystemd-dev libseccomp-dev nlohmann-json3-dev libcjose-dev liburiparser-dev
  systemd util-linux  # systemd-analyze, systemd-socket-activate, setpriv (tests/integration/systemd_test)
)

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

# Node.js >= 20 and npm run the local authorization server (tests/provider).
# Some machines get Node from elsewhere than Debian: apt only when missing.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi

apt_install() {
  echo "Installing missing packages: $*"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install as root: apt-get install $*" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@"
}
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if [ "$(node_major)" -lt 20 ]; then
  # Debian 12's own nodejs is 18: then install Node 20+ from nodejs.org/NodeSource.
  echo "Node.js >= 20 is needed for tests/provider (found $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# The provider's npm packages, exactly as locked; again when the lock changes.
provider="$(cd "$(dirname "$0")/.." && pwd)/tests/provider"
if [ ! -d "$provider/node_modules" ] || [ "$provider/package-lock.json" -nt "$provider/node_modules" ]; then
  echo "Installing tests/provider npm packages (npm ci)"
  npm ci --prefix "$provider" --no-audit --no-fund --loglevel=error
  touch "$provider/node_modules"
fi

# The Node/TypeScript client's npm packages (clients/node), the same way.
node_client="$(cd "$(dirname "$0")/.." && pwd)/clients/node"
if [ ! -d "$node_client/node_modules" ] || [ "$node_client/package-lock.json" -nt "$node_client/node_modules" ]; then
  echo "Installing clients/node npm packages (npm ci)"
  npm ci --prefix "$node_client" --no-audit --no-fund --loglevel=error
  touch "$node_client/node_modules"
fi
