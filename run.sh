#!/usr/bin/env bash
# Installs what is missing, builds grantvault, and starts, on the embedded
# default state under ./var (SoftHSM2 token + SQLite, created on first start):
#   - the local demo authorization server (oidc-provider over TLS on
#     https://127.0.0.1:$DEMO_PORT), and
#   - grantvaultd, with the demo server registered as connector "demo".
# Both stop on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD
DEMO_PORT=${DEMO_PORT:-9443}

scripts/install-deps.sh
# The same options as test.sh's build (which shares ./build), so that switching
# between the scripts rebuilds nothing; the hooks act only under --test-hook.
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGRANTVAULT_TEST_HOOKS=ON >/dev/null
cmake --build build -j"$(nproc)" --target grantvaultd grantvault
npm --prefix clients/node run build >/dev/null  # the agent hosts' client (docs/clients.md)

cli=("$root/build/cli/grantvault" --state-dir "$root/var")
daemon_flags=()
if [ "$(id -u)" -eq 0 ]; then
  echo "run.sh: running as root, so grantvaultd gets --allow-root; an installed daemon runs as" \
    "the unprivileged grantvault user (User=grantvault in systemd/grantvaultd.service)" >&2
  daemon_flags=(--allow-root)
fi
./build/daemon/grantvaultd "${daemon_flags[@]}" --state-dir ./var --init-only

# The demo authorization server: its certificate, client and secret live in
# var/demo-provider (mode 0700); the secret is made once and kept.
demo=var/demo-provider
mkdir -p "$demo" && chmod 700 "$demo"
[ -f "$demo/cert.pem" ] || tests/provider/provider-cert.sh "$demo"
if [ ! -f "$demo/client.secret" ]; then
  (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$demo/client.secret")
fi
(umask 077 && cat > "$demo/clients.json" <<JSON
[{"client_id": "grantvault-demo", "client_secret": "$(cat "$demo/client.secret")",
  "redirect_uris": ["http://127.0.0.1/callback"]}]
JSON
)
cat > var/grantvaultd.toml <<TOML
# Written by run.sh: trust the demo authorization server's self-signed certificate.
[oauth]
ca_file = "$root/$demo/cert.pem"
TOML

# A caller policy that lets you (this uid) resolve tokens in workspace ws_demo
# for one declared tool (docs/policy.md). Kept once written: edit it and send
# the daemon SIGHUP to reload.
if [ ! -f var/policy.toml ]; then
  cat > var/policy.toml <<TOML
# Written by run.sh (docs/policy.md).
[[callers]]
uid = $(id -u)
role = "agent"
workspaces = ["ws_demo"]

[workspaces.ws_demo]

[[workspaces.ws_demo.tools]]
name = "read_profile"
connector = "demo"
scopes = ["read"]
http = ["GET /me"]      # what it may call through the proxy: the demo server's userinfo
TOML
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

node tests/provider/server.mjs --port "$DEMO_PORT" --cert "$demo/cert.pem" --key "$demo/key.pem" \
  --clients "$demo/clients.json" > "$demo/stdout" 2> "$demo/server.log" &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q '^READY' "$demo/stdout" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$demo/server.log" >&2; exit 1; }
  sleep 0.1
done
issuer=$(sed -n 's/^READY //p' "$demo/stdout")
[ -n "$issuer" ] || { echo "the demo authorization server did not start" >&2; exit 1; }

./build/daemon/grantvaultd "${daemon_flags[@]}" --state-dir ./var --config var/grantvaultd.toml &
pids+=($!)
for _ in $(seq 1 100); do
  "${cli[@]}" status >/dev/null 2>&1 && break
  kill -0 "${pids[1]}" 2>/dev/null || exit 1
  sleep 0.1
done
"${cli[@]}" connectors register --id demo --type oidc --client-id grantvault-demo \
  --client-secret-file "$demo/client.secret" --issuer "$issuer" --admin "$(id -un)" \
  --api-base "$issuer/" --private-network

cat <<MSG

grantvaultd is serving on ./var/run; the demo authorization server on $issuer
(its log: $demo/server.log). From a second terminal:

  export GRANTVAULT_STATE_DIR=$root/var
  ./build/cli/grantvault status
  ./build/cli/grantvault scopes suggest --workspace ws_demo --connector demo
  ./build/cli/grantvault authorize --workspace ws_demo --connector demo --from-manifests
        # open the printed URL in a browser on this machine; any user name and
        # password sign in; the browser comes back to the CLI's loopback listener
  ./build/cli/grantvault grants list --workspace ws_demo
  ./build/cli/grantvault resolve --workspace ws_demo --connector demo --tool read_profile
        # what an agent host gets on agent.sock (--reveal prints the token)
  ./build/cli/grantvault proxy --workspace ws_demo --connector demo --tool read_profile -i /me
        # or the daemon makes the call itself with the grant's token (docs/proxy.md):
        # the demo server's userinfo answers; the token never leaves grantvaultd
  ./build/cli/grantvault revoke --workspace ws_demo --connector demo --reason "trying it"
  ./build/cli/grantvault keys audit-public-key -o audit.pem
  ./build/cli/grantvault audit export --workspace ws_demo -o ws_demo.jsonl
  ./build/cli/grantvault audit verify ws_demo.jsonl --public-key audit.pem
  ./build/cli/grantvault keys rotate && ./build/cli/grantvault keys rewrap

Without a browser here: add --paste to authorize, and paste the final redirect URL
(or let tests/provider/approve.mjs --ca $demo/cert.pem --user alice 'URL' play the user).

Stop both with Ctrl-C. Run every test with ./test.sh.

MSG
wait "${pids[1]}"
