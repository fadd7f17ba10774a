# Shell functions the benchmarks share (sourced by bench/*_bench.sh). They use
# the caller's $tmp (a private temporary directory), die() and, for
# authorize_grant, the "${cli[@]}" array (grantvault with --state-dir and
# --admin) and the demo provider's certificate in $tmp/provider/cert.pem.

# Stops a process: SIGTERM, then SIGKILL after [seconds] (default 8).
stop_pid() {  # pid [seconds]
  local pid=$1
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  # grantvaultd drains for at most 5 s; do not wait for ever.
  for _ in $(seq $((${2:-8} * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Starts tests/provider/server.mjs (the demo authorization server) with the
# client in $tmp/provider/clients.json and access tokens living `ttl` s.
start_provider() {  # name ttl -> sets started_pid, started_issuer
  GV_PROVIDER_AT_TTL=$2 node tests/provider/server.mjs --cert "$tmp/provider/cert.pem" \
    --key "$tmp/provider/key.pem" --clients "$tmp/provider/clients.json" \
    >"$tmp/$1.out" 2>"$tmp/$1.log" &
  started_pid=$!
  for _ in $(seq 200); do
    grep -q '^READY' "$tmp/$1.out" 2>/dev/null && break
    kill -0 "$started_pid" 2>/dev/null || die "the demo provider ($1) exited"
    sleep 0.1
  done
  started_issuer=$(sed -n 's/^READY //p' "$tmp/$1.out")
  [[ -n $started_issuer ]] || die "the demo provider ($1) did not start"
}

# authorize --paste prints the URL, then reads the redirect URL on stdin;
# approve.mjs plays the user at the provider.
authorize_grant() {  # workspace connector user
  rm -f "$tmp/paste"
  mkfifo "$tmp/paste"
  "${cli[@]}" authorize --workspace "$1" --connector "$2" --scopes "openid offline_access read write" \
    --paste <"$tmp/paste" >"$tmp/authorize.out" 2>"$tmp/authorize.log" &
  authorize_pid=$!
  exec 3>"$tmp/paste"
  for _ in $(seq 100); do
    grep -qs '^https://' "$tmp/authorize.out" && break
    sleep 0.1
  done
  url=$(grep -m1 '^https://' "$tmp/authorize.out") || die "authorize printed no URL"
  redirect=$(node tests/provider/approve.mjs --ca "$tmp/provider/cert.pem" --user "$3" "$url" \
    2>>"$tmp/approve.log") || die "approve.mjs failed: $(cat "$tmp/approve.log")"
  echo "$redirect" >&3
  exec 3>&-
  wait "$authorize_pid" || die "authorize $1/$2 failed: $(cat "$tmp/authorize.log")"
}
