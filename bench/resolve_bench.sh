#!/usr/bin/env bash
# Resolve on agent.sock, end to end, in one run (docs/performance.md, "Resolve"):
#   1. cached Resolve at 1, 16, 64, 256 connections vs the bare echo server
#      (bench/echo_server, fed the very same Resolve frames), interleaved, in
#      two workloads: "mixed" (the headline: 16 distinct resolves over 4
#      grants — 2 workspaces x 2 connectors — and 8 tools, rotated on every
#      connection from its own offset, so that no two consecutive requests on
#      a connection are the same; bench/resolve_mix.txt is generated below)
#      and "single" (one request, the same on every call);
#   2. cold Resolve: a second demo provider whose access tokens live COLD_TTL
#      (1 s); every call comes after the previous token expired, so each one
#      makes one refresh, as an agent that comes back after a pause does;
#      its latency minus the provider's own time per refresh, which a bare
#      client (bench/refresh_rtt, with a grant of its own from
#      bench/reference_grant.mjs) measures after them, as often and as far
#      apart; also minus the provider's handler time from its log;
#   3. optionally, cached Resolve (both workloads) at 64 connections with
#      [audit] enabled = true vs false (only if the daemon knows the key);
#   4. a store of 100,000 sealed grants (bench/seed_grants): start-to-READY
#      time and RSS with ~0 vs 100,000 grants, and cached Resolve at 1 and 64
#      connections against the small store's figures from step 1.
# Everything runs on a temporary state directory with the demo authorization
# server (tests/provider/server.mjs over TLS on 127.0.0.1; needs
# `npm ci --prefix tests/provider` once) and is removed at the end.
#
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   cmake --build build -j2 --target grantvaultd grantvault loadgen echo_server \
#       seed_grants ready_timer refresh_rtt
#   bench/resolve_bench.sh
#
# Builds nothing. Environment (defaults in brackets):
#   BUILD_DIR    build tree holding the binaries below                      [build]
#   GRANTVAULTD, GRANTVAULT, LOADGEN, ECHO_SERVER, SEED_GRANTS, READY_TIMER, REFRESH_RTT
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
#   WORKLOADS    step 1's workloads, in this order                  [mixed single]
#   COLD         resolves for step 2 (0 skips it); each waits COLD_TTL + 0.1 s
#                for the previous token to expire                           [40]
#   COLD_TTL     the cold provider's access-token lifetime, s               [1]
#   AT_TTL       the main provider's access-token lifetime, s: long enough to
#                stay cached (and never due for refresh ahead) all run      [3600]
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
# With the defaults: about 7 minutes (seeding 100,000 grants takes 40–80 s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=bench/lib.sh
source bench/lib.sh

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
REFRESH_RTT=${REFRESH_RTT:-$BUILD_DIR/bench/refresh_rtt}
CONNECTIONS=${CONNECTIONS:-"1 16 64 256"}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-2}
ECHO_THREADS=${ECHO_THREADS:-2}
WORKLOADS=${WORKLOADS:-"mixed single"}
COLD=${COLD:-40}
COLD_TTL=${COLD_TTL:-1}
AT_TTL=${AT_TTL:-3600}
AUDIT=${AUDIT:-auto}
GRANTS=${GRANTS:-100000}
WORKSPACES=${WORKSPACES:-1000}
STARTS=${STARTS:-3}
PROFILE=${PROFILE:-0}

for bin in "$GRANTVAULTD" "$GRANTVAULT" "$LOADGEN" "$ECHO_SERVER" "$READY_TIMER" \
  $([[ $GRANTS -gt 0 ]] && echo "$SEED_GRANTS") $([[ $COLD -gt 0 ]] && echo "$REFRESH_RTT"); do
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
REFRESH_RTT=$(abs "$REFRESH_RTT")

tmp=$(mktemp -d /tmp/gv-resolve-bench.XXXXXX)
# The daemon refuses root unless told (docs/operations.md, "Sandbox").
daemon_flags=()
[[ $(id -u) == 0 ]] && daemon_flags=(--allow-root)
state=$tmp/state
agent_sock=$state/run/agent.sock
echo_sock=$tmp/echo.sock
provider_pid="" cold_provider_pid="" echo_pid="" daemon_pid="" timer_pid="" perf_pid=""

cleanup() {
  stop_pid "$perf_pid"
  stop_pid "$timer_pid"  # forwards SIGTERM to grantvaultd and waits for it
  stop_pid "$echo_pid"
  stop_pid "$provider_pid"
  stop_pid "$cold_provider_pid"
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

# --- the demo authorization servers --------------------------------------------
# "provider" issues the cached workloads' tokens (AT_TTL); "cold-provider",
# with the same certificate and client, those of step 2 (COLD_TTL).
mkdir -m 700 "$tmp/provider"
tests/provider/provider-cert.sh "$tmp/provider"
(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$tmp/provider/client.secret")
cat >"$tmp/provider/clients.json" <<JSON
[{"client_id": "grantvault-bench", "client_secret": "$(cat "$tmp/provider/client.secret")",
  "redirect_uris": ["http://127.0.0.1/callback"]}]
JSON
start_provider provider "$AT_TTL"
provider_pid=$started_pid issuer=$started_issuer
if [[ $COLD -gt 0 ]]; then
  start_provider cold-provider "$COLD_TTL"
  cold_provider_pid=$started_pid cold_issuer=$started_issuer
fi

# --- policy, configuration, daemon -------------------------------------------
# ws_bench/demo/read_docs is the single-request workload. The mixed one: in
# ws_bench and ws_mix, for each of the connectors demo and demo2, four tools
# (read, write, edit, search) with different scope sets: 16 requests, each a
# release of its own (grant, tool and scopes differ). ws_cold/cold: step 2.
mix_workspaces=(ws_bench ws_mix)
mix_connectors=(demo demo2)
mix_tools=(read write edit search)
tool_scopes() {
  case $1 in read | search) echo '["read"]' ;; write) echo '["write"]' ;; edit) echo '["read", "write"]' ;; esac
}
{
  echo "[[callers]]"
  echo "uid = $(id -u)"
  echo 'role = "agent"'
  echo 'workspaces = ["ws_bench", "ws_mix", "ws_cold"]'
  echo
  echo "[[workspaces.ws_bench.tools]]"
  echo 'name = "read_docs"'
  echo 'connector = "demo"'
  echo 'scopes = ["read"]'
  for w in "${mix_workspaces[@]}"; do
    for c in "${mix_connectors[@]}"; do
      for t in "${mix_tools[@]}"; do
        echo
        echo "[[workspaces.$w.tools]]"
        echo "name = \"${c}_$t\""
        echo "connector = \"$c\""
        echo "scopes = $(tool_scopes "$t")"
      done
    done
  done
  echo
  echo "[[workspaces.ws_cold.tools]]"
  echo 'name = "cold_read"'
  echo 'connector = "cold"'
  echo 'scopes = ["read"]'
} >"$tmp/policy.toml"
# Tool-major: consecutive requests of a connection also change grant.
for t in "${mix_tools[@]}"; do
  for w in "${mix_workspaces[@]}"; do
    for c in "${mix_connectors[@]}"; do echo "$w $c ${c}_$t"; done
  done
done >"$tmp/mix.txt"
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
  "$READY_TIMER" --timeout 120 -- "$GRANTVAULTD" "${daemon_flags[@]}" --state-dir "$state" \
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
# The daemon's: the front's, its spawner's and its broker's.
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
rss_kib() {
  local total=0 pid kib
  for pid in "$daemon_pid" $(descendants "$daemon_pid"); do
    kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

single_args=(--workspace ws_bench --connector demo --tool read_docs)
mixed_args=(--mix "$tmp/mix.txt")
probe_resolve() {  # waits (at most 30 s) until every resolve is answered; fills the cache
  for _ in $(seq 60); do
    "$LOADGEN" --socket "$agent_sock" --request resolve "${single_args[@]}" --probe \
      2>>"$tmp/probe.log" &&
      "$LOADGEN" --socket "$agent_sock" --request resolve "${mixed_args[@]}" --probe \
        2>>"$tmp/probe.log" && return 0
    sleep 0.5
  done
  die "no resolve was answered on $agent_sock"
}

# Start-up with ~0 grants, on an initialised state (so the token and database
# creation is not counted).
"$GRANTVAULTD" "${daemon_flags[@]}" --state-dir "$state" --config "$tmp/grantvaultd.toml" --init-only \
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
register_connector() {  # id issuer
  "${cli[@]}" connectors register --id "$1" --type oidc --client-id grantvault-bench \
    --client-secret-file "$tmp/provider/client.secret" --issuer "$2" \
    >"$tmp/register.log" 2>&1 || die "connectors register $1 failed: $(cat "$tmp/register.log")"
}
register_connector demo "$issuer"
register_connector demo2 "$issuer"
authorize_grant ws_bench demo alice
authorize_grant ws_bench demo2 bob
authorize_grant ws_mix demo carol
authorize_grant ws_mix demo2 dave
if [[ $COLD -gt 0 ]]; then
  register_connector cold "$cold_issuer"
  authorize_grant ws_cold cold erin
  # The bare client's own grant at the same provider (step 2's baseline).
  cold_token_endpoint=$(node bench/reference_grant.mjs --issuer "$cold_issuer" \
    --ca "$tmp/provider/cert.pem" --client-id grantvault-bench \
    --client-secret-file "$tmp/provider/client.secret" --user frank \
    --out "$tmp/reference.refresh" 2>>"$tmp/reference.log") ||
    die "reference_grant.mjs failed: $(cat "$tmp/reference.log")"
fi
probe_resolve

echo "resolve_bench: $(nproc) cores, load average $(loadavg); loadgen scheduling $LOADGEN_SCHED; depth 1, ${DURATION} s per run" \
  "after ${WARMUP} s warm-up, $REPEAT run(s) each, loadgen threads $THREADS," \
  "echo_server threads $ECHO_THREADS, provider access tokens ${AT_TTL} s;" \
  "mixed workload: $(wc -l <"$tmp/mix.txt") distinct resolves over 4 grants, 8 tools"

"$ECHO_SERVER" --socket "$echo_sock" --threads "$ECHO_THREADS" 2>"$tmp/echo.log" &
echo_pid=$!
for _ in $(seq 100); do
  "$LOADGEN" --socket "$echo_sock" --request echo --probe 2>/dev/null && break
  sleep 0.1
done

run() {  # workload request connections [extra loadgen args…] -> one loadgen result line
  local workload=$1 request=$2 c=$3
  shift 3
  local sock=$agent_sock
  [[ $request == echo* ]] && sock=$echo_sock
  local -a args=("${single_args[@]}")
  [[ $workload == mixed ]] && args=("${mixed_args[@]}")
  local line
  line=$(timeout $((${DURATION%.*} + ${WARMUP%.*} + 30)) \
    ${loadgen_sched[@]+"${loadgen_sched[@]}"} "$LOADGEN" --socket "$sock" --request "$request" "${args[@]}" \
    --connections "$c" --depth 1 --duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS" \
    --label "$request-$workload" "$@")
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
# Per workload and connection count: the echo server and grantvaultd in turn,
# REPEAT pairs; the ratio column is the median (and min–max) of the pairs'
# ratios, each from two runs a few seconds apart.
pair_ratios() {  # "echo-line|gv-line" … -> "median (min–max)"
  local p
  for p in "$@"; do
    awk -v g="$(field rps "${p#*|}")" -v e="$(field rps "${p%%|*}")" 'BEGIN { printf "%.1f\n", (e > 0 ? 100 * g / e : 0) }'
  done | sort -g | awk '{ v[NR] = $1 } END { printf "%.0f %% (%.0f–%.0f)", v[int((NR + 1) / 2)], v[1], v[NR] }'
}
declare -A small_runs rows
for c in $CONNECTIONS; do
  declare -A es=() gs=() ps=()
  for _ in $(seq "$REPEAT"); do  # interleaved, so that both see the same machine
    for w in $WORKLOADS; do
      e_line=$(run "$w" echo-resolve "$c")
      echo "$e_line"
      g_line=$(run "$w" resolve "$c")
      echo "$g_line"
      es[$w]+="$e_line"$'\n' gs[$w]+="$g_line"$'\n' ps[$w]+="$e_line|$g_line"$'\n'
    done
  done
  for w in $WORKLOADS; do
    mapfile -t el <<<"${es[$w]%$'\n'}"
    mapfile -t gl <<<"${gs[$w]%$'\n'}"
    mapfile -t pl <<<"${ps[$w]%$'\n'}"
    small_runs[$w,$c]=${gs[$w]%$'\n'}
    e=$(median "${el[@]}")
    g=$(median "${gl[@]}")
    rows[$w]+="| $c | $(int "$(field rps "$e")") ($(spread rps "${el[@]}")) | $(int "$(field rps "$g")") ($(spread rps "${gl[@]}")) | $(pct "$(field rps "$g")" "$(field rps "$e")") | $(pair_ratios "${pl[@]}") | $(int "$(field p50_us "$e")") / $(int "$(field p99_us "$e")") / $(int "$(field p999_us "$e")") | $(int "$(field p50_us "$g")") / $(int "$(field p99_us "$g")") ($(spread p99_us "${gl[@]}")) / $(int "$(field p999_us "$g")") |"$'\n'
  done
  unset es gs ps
done
rss_after_load=$(rss_kib)
for w in $WORKLOADS; do
  echo
  echo "Cached resolve, $w workload, vs echo (each cell: the run with the median requests/s of $REPEAT; (min–max))"
  echo "| connections | echo rps | resolve rps | resolve / echo (medians) | resolve / echo per pair, median (min–max) | echo p50 / p99 / p99.9 (µs) | resolve p50 / p99 (min–max) / p99.9 (µs) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s' "${rows[$w]}"
done
echo "grantvaultd RSS after these runs: $((rss_after_load / 1024)) MiB; load average $(loadavg)"

# --- 2. cold resolve -----------------------------------------------------------
# Each call waits until the previous call's token (COLD_TTL) has expired, so
# the cache cannot answer it (tokens/token_cache.h, ServesMinValid: no
# min_valid forces a refresh of a token in the first half of its life) and the
# daemon refreshes at the cold provider, as for an agent back after a pause.
if [[ $COLD -gt 0 ]]; then
  token_lines() { grep -c 'POST /token 200' "$tmp/cold-provider.log" || true; }
  before=$(token_lines)
  cold_wait=$(awk -v t="$COLD_TTL" 'BEGIN { printf "%.2f", t + 0.1 }')
  : >"$tmp/cold.lines"
  # The baseline: the same refresh from a bare client (bench/refresh_rtt:
  # grantvault's HTTPS client and nothing else) with its own grant at the same
  # provider, one after each cold resolve, so that both see the provider
  # alike and never overlap. Each request comes half a wait after the other
  # one (and a cold resolve still a whole wait after the previous one, its
  # token expired): the time a machine has been idle before a request changes
  # what it costs (a cold resolve half a wait after the bare refresh took 1.6
  # ms less than one a whole wait after it).
  mkfifo "$tmp/reference.go"
  "$REFRESH_RTT" --token-endpoint "$cold_token_endpoint" --ca-file "$tmp/provider/cert.pem" \
    --client-id grantvault-bench --client-secret-file "$tmp/provider/client.secret" \
    --refresh-token-file "$tmp/reference.refresh" <"$tmp/reference.go" \
    >"$tmp/reference.rtt" 2>>"$tmp/reference.log" &
  reference_pid=$!
  exec 4>"$tmp/reference.go"
  half_wait=$(awk -v w="$cold_wait" 'BEGIN { printf "%.2f", w / 2 }')
  for i in $(seq "$COLD"); do
    sleep "$half_wait"
    line=$(timeout 40 "$LOADGEN" --socket "$agent_sock" --request resolve --workspace ws_cold \
      --connector cold --tool cold_read --connections 1 --depth 1 --count 1 --duration 30 \
      --threads 1 --label cold) || die "a cold resolve failed: $line"
    echo "$line" >>"$tmp/cold.lines"
    sleep "$half_wait"
    echo go >&4
    for _ in $(seq 100); do
      [[ $(wc -l <"$tmp/reference.rtt") -ge $i ]] && break
      kill -0 "$reference_pid" 2>/dev/null || die "refresh_rtt failed: $(cat "$tmp/reference.log")"
      sleep 0.05
    done
  done
  exec 4>&-
  wait "$reference_pid" || die "refresh_rtt failed: $(cat "$tmp/reference.log")"
  after=$(token_lines)
  stats() {  # numbers on stdin -> "n mean p50 p99 max"
    sort -g | awk '{ v[NR] = $1; s += $1 } END {
      p99 = int(0.99 * NR + 0.999999); if (p99 < 1) p99 = 1
      printf "%d %.3f %.3f %.3f %.3f\n", NR, s / NR, v[int((NR + 1) / 2)], v[p99], v[NR] }'
  }
  read -r _ cold_mean cold_p50 cold_p99 cold_max < <(sed -n 's/.* mean_us=\([^ ]*\).*/\1/p' "$tmp/cold.lines" |
    awk '{ print $1 / 1000 }' | stats)
  provider_times() {  # the cold provider's handler times (its log) after its first $1
    grep 'POST /token 200' "$tmp/cold-provider.log" | tail -n +"$(($1 + 1))" |
      sed -n 's/.* \([0-9.]*\)ms$/\1/p'
  }
  # The provider's log interleaves both clients' requests: odd lines are the
  # daemon's, even ones the bare client's.
  read -r _ provider_mean provider_p50 _ _ < <(provider_times "$before" | awk 'NR % 2 == 1' | stats)
  read -r _ bare_provider_mean _ _ _ < <(provider_times "$before" | awk 'NR % 2 == 0' | stats)
  read -r _ bare_mean bare_p50 bare_p99 _ < <(awk '{ print $1 / 1000 }' "$tmp/reference.rtt" | stats)
  # Per pair (a cold resolve and the bare refresh after it), each net of its
  # own request's handler time: the median is the headline (one stall of the
  # machine moves a mean of 40 by tenths of a millisecond).
  read -r _ pair_mean pair_p50 _ _ < <(paste \
    <(sed -n 's/.* mean_us=\([^ ]*\).*/\1/p' "$tmp/cold.lines") \
    <(provider_times "$before" | awk 'NR % 2 == 1') \
    "$tmp/reference.rtt" \
    <(provider_times "$before" | awk 'NR % 2 == 0') |
    awk 'NF == 4 { print ($1 / 1000 - $2) - ($3 / 1000 - $4) }' | stats)
  echo
  echo "Cold resolve (each call after its previous token expired: tokens of ${COLD_TTL} s, ${cold_wait} s apart), 1 connection, $COLD calls:"
  echo "  token requests at the cold provider: $((after - before)) (expected $((2 * COLD)): $COLD from grantvaultd, $COLD from the bare client)"
  awk -v mean="$cold_mean" -v p50="$cold_p50" -v p99="$cold_p99" -v max="$cold_max" \
    -v pm="$provider_mean" -v pp="$provider_p50" -v bm="$bare_mean" -v bp="$bare_p50" \
    -v b99="$bare_p99" -v bpm="$bare_provider_mean" -v dm="$pair_mean" -v dp="$pair_p50" 'BEGIN {
      printf "  resolve latency: mean %.2f ms, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", mean, p50, p99, max
      printf "  the same refresh from a bare client (refresh_rtt, round trip): mean %.2f ms, p50 %.2f ms, p99 %.2f ms\n", bm, bp, b99
      printf "  provider handler time per token request (its log): mean %.2f ms, p50 %.2f ms (bare client: mean %.2f ms)\n", pm, pp, bpm
      printf "  grantvaultd overhead per cold resolve, per pair net of each request'"'"'s handler time: median %.2f ms, mean %.2f ms\n", dp, dm
      printf "  the same from the means: (mean latency - bare client mean): %.2f ms; net of handler times: %.2f ms\n", mean - bm, (mean - pm) - (bm - bpm)
      printf "  the same against the handler time alone (mean latency - mean handler time): %.2f ms\n", mean - pm
      printf "  cold resolve / bare refresh (means): %.1f x\n", (bm > 0 ? mean / bm : 0) }'
  echo "  load average $(loadavg)"
fi

# --- 3. audit on vs off --------------------------------------------------------
audit_supported=0
if [[ $AUDIT != 0 ]]; then
  # A configuration the daemon does not know is refused (exit 2) before the
  # state directory is touched; one it knows stops at the running daemon's lock.
  write_config false
  if "$GRANTVAULTD" "${daemon_flags[@]}" --state-dir "$state" --config "$tmp/grantvaultd.toml" --init-only \
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
    audit_workload=${WORKLOADS%% *}
    for _ in $(seq "$REPEAT"); do
      for a in false true; do
        stop_daemon
        write_config "$a"
        start_daemon
        probe_resolve
        audit_runs[$a]+="$(run "$audit_workload" resolve 64 --label "resolve-$audit_workload-audit-$a")"$'\n'
        echo "$(tail -n1 <<<"${audit_runs[$a]%$'\n'}")"
      done
    done
    echo
    echo "Cached resolve, $audit_workload workload, at 64 connections, [audit] enabled = false vs true (median of $REPEAT; (min–max)):"
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
  echo "under perf: $(run "${WORKLOADS%% *}" resolve 64)"
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  perf_pid=""
  [[ -n ${PERF_DATA:-} ]] && cp "$tmp/perf.data" "$PERF_DATA"
  echo "grantvaultd profile, cached resolve (${WORKLOADS%% *}) at 64 connections${PROFILE_AUDIT:+, audit $PROFILE_AUDIT} (perf report --no-children, top 40):"
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
  for w in $WORKLOADS; do
  for c in 1 64; do
    bs=()
    for _ in $(seq "$REPEAT"); do
      bs+=("$(run "$w" resolve "$c" --label "resolve-$w-${GRANTS}")")
      echo "${bs[-1]}"
    done
    m=$(median "${bs[@]}")
    ss=()
    if [[ -n ${small_runs[$w,$c]:-} ]]; then
      mapfile -t ss <<<"${small_runs[$w,$c]}"
    fi
    if [[ ${#ss[@]} -gt 0 ]]; then
      s=$(median "${ss[@]}")
      small_cell="$(int "$(field rps "$s")") | $(int "$(field p50_us "$s")") / $(int "$(field p99_us "$s")") ($(spread p99_us "${ss[@]}"))"
    else
      small_cell="– | –"
    fi
    big_lines+=("| $w | $c | $small_cell | $(int "$(field rps "$m")") ($(spread rps "${bs[@]}")) | $(int "$(field p50_us "$m")") / $(int "$(field p99_us "$m")") ($(spread p99_us "${bs[@]}")) |")
  done
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
  echo "| workload | connections | small rps | small p50 / p99 (µs) | large rps | large p50 / p99 (µs) |"
  echo "|---|---:|---:|---:|---:|---:|"
  printf '%s\n' "${big_lines[@]}"
  echo "load average at the end: $(loadavg)"
fi
