#!/usr/bin/env bash
# Resolve on agent.sock, end to end, in one run (docs/performance.md, "Resolve"):
#   1. cached Resolve at 1, 16, 64, 256 connections vs the bare echo server
#      (bench/echo_server, fed the very same Resolve frames), interleaved;
#   2. cold Resolve (every call forces a refresh at the demo provider) minus
#      the provider's own time per token request, per resolve;
#   3. optionally, cached Resolve at 64 connections with [audit] enabled = true
#      vs false (only if the daemon knows the key);
#   4. a store of 100,000 sealed grants (bench/seed_grants): start-to-READY
#      time and RSS with ~0 vs 100,000 grants, and cached Resolve at 1 and 64
#      connections against the small store's figures from step 1.
# Everything runs on a temporary state directory with the demo authorization
# server (tests/provider/server.mjs over TLS on 127.0.0.1; needs
# `npm ci --prefix tests/provider` once) and is removed at the end.
#
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   cmake --build build -j2 --target grantvaultd grantvault loadgen echo_server \
#       seed_grants ready_timer
#   bench/resolve_bench.sh
#
# Builds nothing. Environment (defaults in brackets):
#   BUILD_DIR    build tree holding the binaries below                      [build]
#   GRANTVAULTD, GRANTVAULT, LOADGEN, ECHO_SERVER, SEED_GRANTS, READY_TIMER
#                override single binaries' paths         [under BUILD_DIR]
#   CONNECTIONS  connection counts for step 1                         [1 16 64 256]
#   DURATION     measured seconds per run                                   [3]
#   WARMUP       unmeasured seconds before each run                         [1]
#   REPEAT       runs per connection count and server (median shown,
#                min–max spread too)                                        [3]
#   THREADS      loadgen threads                                            [2]
#   LOADGEN_SCHED batch: the measured loadgen runs under SCHED_BATCH (chrt -b 0),
#                for the echo server and grantvaultd alike, so that on cores it
#                shares with the server it does not preempt it at every answer
#                (docs/performance.md, "Scheduling"); normal: as started  [batch]
#   ECHO_THREADS echo_server threads                                        [2]
#   COLD         resolves for step 2 (0 skips it)                           [200]
#   AT_TTL       the provider's access-token lifetime, s: long enough to stay
#                cached for the whole run, shorter than the daemon's largest
#                min_valid_seconds (600) so that step 2 can force refreshes [590]
#   AUDIT        auto: step 3 if the daemon accepts [audit] enabled; 1: step 3
#                or fail; 0: skip it                                        [auto]
#   GRANTS       grants to seed for step 4 (0 skips it)                     [100000]
#   WORKSPACES   workspaces they are spread over                            [1000]
#   STARTS       daemon starts timed per store size                         [3]
#   LIMITS       extra lines for the daemon's [limits] table, e.g.
#                "agent_threads = 64"                                       [none]
#   PROFILE      1: one more (unmeasured) 64-connection cached-resolve run
#                under `perf record -g`, top symbols printed (needs perf)  [0]
#   PROFILE_AUDIT with PROFILE=1: true|false: profile with [audit] enabled set
#                so (needs the key); empty: the default configuration     [none]
#   PERF_DATA    with PROFILE=1: keep perf.data at this path             [none]
#   PERF_RECORD  with PROFILE=1: perf record's options  [-g; try: -F 999 --call-graph dwarf]
# With the defaults: about 5 minutes (seeding 100,000 grants takes 40–80 s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

BUILD_DIR=${BUILD_DIR:-build}
GRANTVAULTD=${GRANTVAULTD:-$BUILD_DIR/daemon/grantvaultd}
GRANTVAULT=${GRANTVAULT:-$BUILD_DIR/cli/grantvault}
LOADGEN=${LOADGEN:-$BUILD_DIR/bench/loadgen}
LOADGEN_SCHED=${LOADGEN_SCHED:-batch}
case $LOADGEN_SCHED in
  batch) loadgen_sched=(chrt -b 0) ;;
  normal) loadgen_sched=() ;;
  *) echo "resolve_bench: LOADGEN_SCHED must be batch or normal" >&2; exit 2 ;;
esac
ECHO_SERVER=${ECHO_SERVER:-$BUILD_DIR/bench/echo_server}
SEED_GRANTS=${SEED_GRANTS:-$BUILD_DIR/bench/seed_grants}
READY_TIMER=${READY_TIMER:-$BUILD_DIR/bench/ready_timer}
CONNECTIONS=${CONNECTIONS:-"1 16 64 256"}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-2}
ECHO_THREADS=${ECHO_THREADS:-2}
COLD=${COLD:-200}
AT_TTL=${AT_TTL:-590}
AUDIT=${AUDIT:-auto}
GRANTS=${GRANTS:-100000}
WORKSPACES=${WORKSPACES:-1000}
STARTS=${STARTS:-3}
PROFILE=${PROFILE:-0}

for bin in "$GRANTVAULTD" "$GRANTVAULT" "$LOADGEN" "$ECHO_SERVER" "$READY_TIMER" \
  $([[ $GRANTS -gt 0 ]] && echo "$SEED_GRANTS"); do
  if [[ ! -x $bin ]]; then
    echo "resolve_bench: $bin is missing; build first (see the top of this script)" >&2
    exit 2
  fi
done
[[ -d tests/provider/node_modules ]] || {
  echo "resolve_bench: run 'npm ci --prefix tests/provider' first" >&2
  exit 2
}
# Absolute paths: the binaries are started from other directories too.
abs() { [[ $1 == /* ]] && echo "$1" || echo "$root/$1"; }
GRANTVAULTD=$(abs "$GRANTVAULTD") GRANTVAULT=$(abs "$GRANTVAULT") LOADGEN=$(abs "$LOADGEN")
ECHO_SERVER=$(abs "$ECHO_SERVER") SEED_GRANTS=$(abs "$SEED_GRANTS") READY_TIMER=$(abs "$READY_TIMER")

tmp=$(mktemp -d /tmp/gv-resolve-bench.XXXXXX)
state=$tmp/state
agent_sock=$state/run/agent.sock
echo_sock=$tmp/echo.sock
provider_pid="" echo_pid="" daemon_pid="" timer_pid="" perf_pid=""

stop_pid() {  # pid [seconds]
  local pid=$1
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  # grantvaultd drains for at most 5 s; do not wait for ever.
  for _ in $(seq $((${2:-8} * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$perf_pid"
  stop_pid "$timer_pid"  # forwards SIGTERM to grantvaultd and waits for it
  stop_pid "$echo_pid"
  stop_pid "$provider_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "resolve_bench: $*" >&2; }
die() {
  log "$*"
  for f in "$tmp"/*.log; do
    [[ -f $f ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
# The load, and how many compilers (other builds on the machine) run right now.
loadavg() { echo "$(cut -d' ' -f1-3 /proc/loadavg) (other compilers running: $(ps -eo comm= | grep -cxE 'cc1plus|cc1|collect2|ld|as' || true))"; }

# --- the demo authorization server --------------------------------------------
mkdir -m 700 "$tmp/provider"
tests/provider/provider-cert.sh "$tmp/provider"
(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$tmp/provider/client.secret")
cat >"$tmp/provider/clients.json" <<JSON
[{"client_id": "grantvault-bench", "client_secret": "$(cat "$tmp/provider/client.secret")",
  "redirect_uris": ["http://127.0.0.1/callback"]}]
JSON
GV_PROVIDER_AT_TTL=$AT_TTL node tests/provider/server.mjs --cert "$tmp/provider/cert.pem" \
  --key "$tmp/provider/key.pem" --clients "$tmp/provider/clients.json" \
  >"$tmp/provider.out" 2>"$tmp/provider.log" &
provider_pid=$!
for _ in $(seq 200); do
  grep -q '^READY' "$tmp/provider.out" 2>/dev/null && break
  kill -0 "$provider_pid" 2>/dev/null || die "the demo provider exited"
  sleep 0.1
done
issuer=$(sed -n 's/^READY //p' "$tmp/provider.out")
[[ -n $issuer ]] || die "the demo provider did not start"

# --- policy, configuration, daemon -------------------------------------------
cat >"$tmp/policy.toml" <<TOML
[[callers]]
uid = $(id -u)
role = "agent"
workspaces = ["ws_bench"]

[[workspaces.ws_bench.tools]]
name = "read_docs"
connector = "demo"
scopes = ["read"]
TOML
write_config() {  # [audit: true|false|""]
  {
    echo "[oauth]"
    echo "ca_file = \"$tmp/provider/cert.pem\""
    echo "use_system_trust_store = false"
    echo "[policy]"
    echo "file = \"$tmp/policy.toml\""
    echo "[limits]"
    # The load generator is one uid with up to 256 connections.
    echo "agent_max_connections_per_uid = 0"
    if [[ -n ${LIMITS:-} ]]; then
      echo "$LIMITS"
    fi
    if [[ -n ${1:-} ]]; then
      echo "[audit]"
      echo "enabled = $1"
    fi
  } >"$tmp/grantvaultd.toml"
}
write_config ""

ready_ms=""
start_daemon() {  # starts grantvaultd under ready_timer; sets daemon_pid, ready_ms
  : >"$tmp/ready.out"
  "$READY_TIMER" --timeout 120 -- "$GRANTVAULTD" --state-dir "$state" \
    --config "$tmp/grantvaultd.toml" >"$tmp/ready.out" 2>>"$tmp/grantvaultd.log" &
  timer_pid=$!
  for _ in $(seq 1300); do
    grep -q '^ready_ms=' "$tmp/ready.out" && break
    kill -0 "$timer_pid" 2>/dev/null || die "grantvaultd did not start"
    sleep 0.1
  done
  ready_ms=$(field ready_ms " $(cat "$tmp/ready.out")")
  daemon_pid=$(field pid " $(cat "$tmp/ready.out")")
  [[ -n $daemon_pid ]] || die "grantvaultd did not become ready"
}
stop_daemon() {
  stop_pid "$timer_pid"
  timer_pid="" daemon_pid=""
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$daemon_pid/status"; }

resolve_args=(--workspace ws_bench --connector demo --tool read_docs)
probe_resolve() {  # waits (at most 30 s) until a resolve is answered; fills the cache
  for _ in $(seq 60); do
    "$LOADGEN" --socket "$agent_sock" --request resolve "${resolve_args[@]}" --probe \
      2>>"$tmp/probe.log" && return 0
    sleep 0.5
  done
  die "no resolve was answered on $agent_sock"
}

# Start-up with ~0 grants, on an initialised state (so the token and database
# creation is not counted).
"$GRANTVAULTD" --state-dir "$state" --config "$tmp/grantvaultd.toml" --init-only \
  >"$tmp/init.log" 2>&1 || die "grantvaultd --init-only failed"
small_starts=()
small_rss=()
for _ in $(seq "$STARTS"); do
  start_daemon
  sleep 1
  small_starts+=("$ready_ms")
  small_rss+=("$(rss_kib)")
  stop_daemon
done
start_daemon

cli=("$GRANTVAULT" --state-dir "$state" --admin bench)
"${cli[@]}" connectors register --id demo --type oidc --client-id grantvault-bench \
  --client-secret-file "$tmp/provider/client.secret" --issuer "$issuer" \
  >"$tmp/register.log" 2>&1 || die "connectors register failed: $(cat "$tmp/register.log")"
# authorize --paste prints the URL, then reads the redirect URL on stdin;
# approve.mjs plays the user at the provider.
mkfifo "$tmp/paste"
"${cli[@]}" authorize --workspace ws_bench --connector demo --scopes "openid offline_access read" \
  --paste <"$tmp/paste" >"$tmp/authorize.out" 2>"$tmp/authorize.log" &
authorize_pid=$!
exec 3>"$tmp/paste"
for _ in $(seq 100); do
  grep -q '^https://' "$tmp/authorize.out" && break
  sleep 0.1
done
url=$(grep -m1 '^https://' "$tmp/authorize.out") || die "authorize printed no URL"
redirect=$(node tests/provider/approve.mjs --ca "$tmp/provider/cert.pem" --user alice "$url" \
  2>>"$tmp/approve.log") || die "approve.mjs failed: $(cat "$tmp/approve.log")"
echo "$redirect" >&3
exec 3>&-
wait "$authorize_pid" || die "authorize failed: $(cat "$tmp/authorize.log")"
probe_resolve

echo "resolve_bench: $(nproc) cores, load average $(loadavg); loadgen scheduling $LOADGEN_SCHED; depth 1, ${DURATION} s per run" \
  "after ${WARMUP} s warm-up, $REPEAT run(s) each, loadgen threads $THREADS," \
  "echo_server threads $ECHO_THREADS, provider access tokens ${AT_TTL} s"

"$ECHO_SERVER" --socket "$echo_sock" --threads "$ECHO_THREADS" 2>"$tmp/echo.log" &
echo_pid=$!
for _ in $(seq 100); do
  "$LOADGEN" --socket "$echo_sock" --request echo --probe 2>/dev/null && break
  sleep 0.1
done

run() {  # request connections [extra loadgen args…] -> one loadgen result line
  local request=$1 c=$2
  shift 2
  local sock=$agent_sock
  [[ $request == echo* ]] && sock=$echo_sock
  local line
  line=$(timeout $((${DURATION%.*} + ${WARMUP%.*} + 30)) \
    ${loadgen_sched[@]+"${loadgen_sched[@]}"} "$LOADGEN" --socket "$sock" --request "$request" "${resolve_args[@]}" \
    --connections "$c" --depth 1 --duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS" "$@")
  echo "$line compilers=$(ps -eo comm= | grep -cxE 'cc1plus|cc1|collect2|ld|as' || true)"
}
# The run with the median requests/s of those given.
median() {
  local l
  for l in "$@"; do echo "$(field rps "$l") $l"; done | sort -n |
    sed -n "$((($# + 1) / 2))p" | cut -d' ' -f2-
}
# min–max of one field over the runs given.
spread() {
  local f=$1 l
  shift
  for l in "$@"; do field "$f" "$l"; done | sort -g | sed -n '1p;$p' | paste -sd' ' |
    awk '{ printf "%.0f–%.0f", $1, ($2 == "" ? $1 : $2) }'
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f %%", (b > 0 ? 100 * a / b : 0) }'; }
int() { printf '%.0f' "$1"; }

# --- 1. cached resolve vs echo -----------------------------------------------
declare -A small_runs
rows=()
for c in $CONNECTIONS; do
  es=() gs=()
  for _ in $(seq "$REPEAT"); do  # interleaved, so that both see the same machine
    es+=("$(run echo-resolve "$c")")
    echo "${es[-1]}"
    gs+=("$(run resolve "$c")")
    echo "${gs[-1]}"
  done
  small_runs[$c]=$(printf '%s\n' "${gs[@]}")
  e=$(median "${es[@]}")
  g=$(median "${gs[@]}")
  rows+=("| $c | $(int "$(field rps "$e")") ($(spread rps "${es[@]}")) | $(int "$(field rps "$g")") ($(spread rps "${gs[@]}")) | $(pct "$(field rps "$g")" "$(field rps "$e")") | $(int "$(field p50_us "$e")") / $(int "$(field p99_us "$e")") / $(int "$(field p999_us "$e")") | $(int "$(field p50_us "$g")") / $(int "$(field p99_us "$g")") ($(spread p99_us "${gs[@]}")) / $(int "$(field p999_us "$g")") |")
done
rss_after_load=$(rss_kib)
echo
echo "Cached resolve vs echo (each cell: the run with the median requests/s of $REPEAT; (min–max))"
echo "| connections | echo rps | resolve rps | resolve / echo | echo p50 / p99 / p99.9 (µs) | resolve p50 / p99 (min–max) / p99.9 (µs) |"
echo "|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo "grantvaultd RSS after these runs: $((rss_after_load / 1024)) MiB; load average $(loadavg)"

# --- 2. cold resolve -----------------------------------------------------------
if [[ $COLD -gt 0 ]]; then
  token_lines() { grep -c 'POST /token 200' "$tmp/provider.log" || true; }
  before=$(token_lines)
  cold=$(timeout 90 "$LOADGEN" --socket "$agent_sock" --request resolve "${resolve_args[@]}" \
    --min-valid 600 --connections 1 --depth 1 --count "$COLD" --duration 60 --threads 1) ||
    die "cold resolves failed: $cold"
  echo
  echo "$cold"
  after=$(token_lines)
  provider=$(grep 'POST /token 200' "$tmp/provider.log" | tail -n +"$((before + 1))" |
    sed -n 's/.* \([0-9.]*\)ms$/\1/p' | sort -g |
    awk '{ v[NR] = $1; s += $1 } END { printf "%d %.3f %.3f", NR, s / NR, v[int((NR + 1) / 2)] }')
  read -r n_token provider_mean provider_p50 <<<"$provider"
  echo "Cold resolve (min_valid_seconds 600 > the ${AT_TTL} s token lifetime: one refresh per call), 1 connection, $COLD calls:"
  echo "  token requests at the provider: $((after - before)) (expected $COLD)"
  awk -v mean="$(field mean_us "$cold")" -v p50="$(field p50_us "$cold")" \
    -v p99="$(field p99_us "$cold")" -v pm="$provider_mean" -v pp="$provider_p50" 'BEGIN {
      printf "  resolve latency: mean %.2f ms, p50 %.2f ms, p99 %.2f ms\n", mean / 1000, p50 / 1000, p99 / 1000
      printf "  provider time per token request (its log): mean %.2f ms, p50 %.2f ms\n", pm, pp
      printf "  grantvaultd overhead per cold resolve (mean latency - mean provider time): %.2f ms\n", mean / 1000 - pm }'
fi

# --- 3. audit on vs off --------------------------------------------------------
audit_supported=0
if [[ $AUDIT != 0 ]]; then
  # A configuration the daemon does not know is refused (exit 2) before the
  # state directory is touched; one it knows stops at the running daemon's lock.
  write_config false
  if "$GRANTVAULTD" --state-dir "$state" --config "$tmp/grantvaultd.toml" --init-only \
    >"$tmp/audit-probe.log" 2>&1; then :; fi
  grep -q 'another grantvaultd' "$tmp/audit-probe.log" && audit_supported=1
  write_config ""
  if [[ $audit_supported == 0 ]]; then
    echo
    echo "Audit on vs off: not measurable: this grantvaultd refuses '[audit] enabled'" \
      "($(head -n1 "$tmp/audit-probe.log"))"
    [[ $AUDIT == 1 ]] && die "AUDIT=1 but the daemon has no [audit] enabled key"
  else
    declare -A audit_runs
    for _ in $(seq "$REPEAT"); do
      for a in false true; do
        stop_daemon
        write_config "$a"
        start_daemon
        probe_resolve
        audit_runs[$a]+="$(run resolve 64 --label "resolve-audit-$a")"$'\n'
        echo "$(tail -n1 <<<"${audit_runs[$a]%$'\n'}")"
      done
    done
    echo
    echo "Cached resolve at 64 connections, [audit] enabled = false vs true (median of $REPEAT; (min–max)):"
    echo "| audit | resolve rps | p50 / p99 / p99.9 (µs) |"
    echo "|---|---:|---:|"
    for a in false true; do
      mapfile -t rs <<<"${audit_runs[$a]%$'\n'}"
      m=$(median "${rs[@]}")
      echo "| $a | $(int "$(field rps "$m")") ($(spread rps "${rs[@]}")) | $(int "$(field p50_us "$m")") / $(int "$(field p99_us "$m")") ($(spread p99_us "${rs[@]}")) / $(int "$(field p999_us "$m")") |"
    done
    stop_daemon
    write_config ""
    start_daemon
    probe_resolve
  fi
fi

# --- profile (unmeasured) ------------------------------------------------------
if [[ $PROFILE == 1 ]] && command -v perf >/dev/null; then
  if [[ -n ${PROFILE_AUDIT:-} ]]; then
    stop_daemon
    write_config "$PROFILE_AUDIT"
    start_daemon
    probe_resolve
  fi
  # shellcheck disable=SC2086
  perf record -q ${PERF_RECORD:--g} -o "$tmp/perf.data" -p "$daemon_pid" 2>"$tmp/perf.log" &
  perf_pid=$!
  sleep 0.5
  echo
  echo "under perf: $(run resolve 64)"
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  perf_pid=""
  [[ -n ${PERF_DATA:-} ]] && cp "$tmp/perf.data" "$PERF_DATA"
  echo "grantvaultd profile, cached resolve at 64 connections${PROFILE_AUDIT:+, audit $PROFILE_AUDIT} (perf report --no-children, top 40):"
  perf report -i "$tmp/perf.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null |
    awk '/^ +[0-9]/ && n++ < 40 { sub(/ +- +- *$/, ""); gsub(/ +/, " "); print }'
  if [[ -n ${PROFILE_AUDIT:-} ]]; then
    stop_daemon
    write_config ""
    start_daemon
    probe_resolve
  fi
fi

# --- 4. a store of GRANTS grants -------------------------------------------------
if [[ $GRANTS -gt 0 ]]; then
  stop_daemon
  echo
  echo "Seeding $GRANTS grants over $WORKSPACES workspaces (daemon stopped) …"
  "$SEED_GRANTS" --state-dir "$state" --grants "$GRANTS" --workspaces "$WORKSPACES" \
    2>"$tmp/seed.log" || die "seed_grants failed: $(tail -n3 "$tmp/seed.log")"
  big_starts=()
  big_rss=()
  for _ in $(seq "$STARTS"); do
    start_daemon
    sleep 1
    big_starts+=("$ready_ms")
    big_rss+=("$(rss_kib)")
    stop_daemon
  done
  start_daemon
  probe_resolve
  grants_now=$("${cli[@]}" status 2>/dev/null | sed -n 's/.*[Gg]rants[^0-9]*\([0-9][0-9]*\).*/\1/p' | head -n1)
  big_lines=()
  for c in 1 64; do
    bs=()
    for _ in $(seq "$REPEAT"); do
      bs+=("$(run resolve "$c" --label "resolve-${GRANTS}")")
      echo "${bs[-1]}"
    done
    m=$(median "${bs[@]}")
    ss=()
    if [[ -n ${small_runs[$c]:-} ]]; then
      mapfile -t ss <<<"${small_runs[$c]}"
    fi
    if [[ ${#ss[@]} -gt 0 ]]; then
      s=$(median "${ss[@]}")
      small_cell="$(int "$(field rps "$s")") | $(int "$(field p50_us "$s")") / $(int "$(field p99_us "$s")") ($(spread p99_us "${ss[@]}"))"
    else
      small_cell="– | –"
    fi
    big_lines+=("| $c | $small_cell | $(int "$(field rps "$m")") ($(spread rps "${bs[@]}")) | $(int "$(field p50_us "$m")") / $(int "$(field p99_us "$m")") ($(spread p99_us "${bs[@]}")) |")
  done
  ms_list() { printf '%s\n' "$@" | sort -g | paste -sd' ' | sed 's/ / \/ /g'; }
  mib_list() { printf '%s\n' "$@" | awk '{ printf "%s%.1f", (NR > 1 ? " / " : ""), $1 / 1024 }'; }
  echo
  echo "Store size (status reports ${grants_now:-?} grants):"
  echo "| grants | start to READY (ms, $STARTS starts, sorted) | RSS 1 s after READY (MiB) |"
  echo "|---:|---:|---:|"
  echo "| 0 | $(ms_list "${small_starts[@]}") | $(mib_list "${small_rss[@]}") |"
  echo "| $((GRANTS + 1)) | $(ms_list "${big_starts[@]}") | $(mib_list "${big_rss[@]}") |"
  echo
  echo "Cached resolve, small store (step 1) vs $GRANTS grants (median of $REPEAT; (min–max)):"
  echo "| connections | small rps | small p50 / p99 (µs) | large rps | large p50 / p99 (µs) |"
  echo "|---:|---:|---:|---:|---:|"
  printf '%s\n' "${big_lines[@]}"
  echo "load average at the end: $(loadavg)"
fi
