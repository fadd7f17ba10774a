#!/usr/bin/env bash
# The API proxy against direct calls, in one run (docs/performance.md, "Proxy"):
# the same mixed calls — 4 grants (2 workspaces x 2 connectors), 3 tools each
# (get an item, search, create an item with a 2 KiB body) — made by
# bench/proxy_load N at a time, either through grantvaultd's proxy on
# agent.sock (each of the N with its own connection; the daemon adds the
# grant's token, checks the tool's declared calls and the API bases, audits
# every call) or directly to the same local TLS API (bench/api_server) with a
# bearer token, over keep-alive connections. Direct and proxied runs
# alternate; REPEAT of each per N; medians shown, with the added p50/p99 and
# the throughput ratio.
#
#   cmake --build build -j2 --target grantvaultd grantvault api_server proxy_load
#   bench/proxy_bench.sh
#
# Builds nothing. Environment (defaults in brackets):
#   BUILD_DIR  build tree holding the binaries                          [build]
#   CALLS      calls in flight per run                                  [1 64]
#   DURATION   measured seconds per run                                 [3]
#   WARMUP     unmeasured seconds before each run                       [1]
#   REPEAT     runs per N and path                                      [3]
#   API_THREADS api_server threads                                      [2]
#   IO_THREADS the daemon's [limits] io_threads                          [2]
#   LOADGEN_SCHED normal: proxy_load as started; batch: under SCHED_BATCH
#              (chrt -b 0), for direct and proxied calls alike, as
#              resolve_bench.sh does (docs/performance.md, "Scheduling"). Here
#              it did not raise throughput and slowed single calls     [normal]
#   PROFILE    1: one more (unmeasured) proxied run at the last N under
#              `perf record -g` on the daemon's front, top symbols printed,
#              the data kept in PERF_DATA   [0, /tmp/proxy_bench.perf.data]
# With the defaults: about 1 minute.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

BUILD_DIR=${BUILD_DIR:-build}
GRANTVAULTD=$BUILD_DIR/daemon/grantvaultd
GRANTVAULT=$BUILD_DIR/cli/grantvault
API_SERVER=$BUILD_DIR/bench/api_server
PROXY_LOAD=$BUILD_DIR/bench/proxy_load
CALLS=${CALLS:-1 64}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
REPEAT=${REPEAT:-3}
API_THREADS=${API_THREADS:-2}
IO_THREADS=${IO_THREADS:-2}
LOADGEN_SCHED=${LOADGEN_SCHED:-normal}
case $LOADGEN_SCHED in
  batch) load_sched=(chrt -b 0) ;;
  normal) load_sched=() ;;
  *) echo "proxy_bench: LOADGEN_SCHED must be batch or normal" >&2; exit 2 ;;
esac
for b in "$GRANTVAULTD" "$GRANTVAULT" "$API_SERVER" "$PROXY_LOAD"; do
  [[ -x $b ]] || { echo "proxy_bench: $b is missing (see the header for the build)" >&2; exit 2; }
done

tmp=$(mktemp -d)
chmod 700 "$tmp"
daemon_pid="" provider_pid="" api_pid=""
cleanup() {
  stop_pid "$daemon_pid"
  stop_pid "$api_pid"
  stop_pid "$provider_pid"
  if [[ ${PROFILE:-0} == 1 && -f $tmp/perf.data ]]; then
    mv "$tmp/perf.data" "${PERF_DATA:-/tmp/proxy_bench.perf.data}"
    log "the profile is in ${PERF_DATA:-/tmp/proxy_bench.perf.data}"
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "proxy_bench: $*" >&2; }
die() {
  log "$*"
  for f in "$tmp"/*.log; do [[ -f $f ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  exit 1
}

# --- the demo authorization server and the API -------------------------------
mkdir -m 700 "$tmp/provider"
tests/provider/provider-cert.sh "$tmp/provider"
(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$tmp/provider/client.secret")
cat >"$tmp/provider/clients.json" <<JSON
[{"client_id": "grantvault-bench", "client_secret": "$(cat "$tmp/provider/client.secret")",
  "redirect_uris": ["http://127.0.0.1/callback"]}]
JSON
start_provider provider 3600
provider_pid=$started_pid issuer=$started_issuer
"$API_SERVER" --cert "$tmp/provider/cert.pem" --key "$tmp/provider/key.pem" \
  --threads "$API_THREADS" >"$tmp/api.out" 2>"$tmp/api.log" &
api_pid=$!
for _ in $(seq 50); do grep -q '^READY' "$tmp/api.out" 2>/dev/null && break; sleep 0.1; done
api_port=$(sed -n 's/^PORT //p' "$tmp/api.out")
[[ -n $api_port ]] || die "api_server did not start"
api="https://127.0.0.1:$api_port"

# --- policy, configuration, daemon, grants -----------------------------------
workspaces=(ws_a ws_b)
connectors=(api1 api2)
{
  echo "[[callers]]"
  echo "uid = $(id -u)"
  echo 'role = "agent"'
  echo 'workspaces = ["ws_a", "ws_b"]'
  for w in "${workspaces[@]}"; do
    for c in "${connectors[@]}"; do
      for t in get:GET:/v1/items search:GET:/v1/search create:POST:/v1/items; do
        IFS=: read -r name method prefix <<<"$t"
        printf '\n[[workspaces.%s.tools]]\nname = "%s_%s"\nconnector = "%s"\n' "$w" "$c" "$name" "$c"
        printf 'scopes = ["%s"]\nhttp = ["%s %s"]\n' "$([[ $name == create ]] && echo write || echo read)" \
          "$method" "$prefix"
      done
    done
  done
} >"$tmp/policy.toml"
# Tool-major, as agents alternate between tools: half reads, a quarter
# searches, a quarter writes; consecutive calls of one thread change grant.
for t in get search get create; do
  for w in "${workspaces[@]}"; do
    for c in "${connectors[@]}"; do
      case $t in
        get) echo "$w $c ${c}_get GET /v1/items/t_$RANDOM" ;;
        search) echo "$w $c ${c}_search GET /v1/search?q=printer&page=1" ;;
        create) echo "$w $c ${c}_create POST /v1/items 2048" ;;
      esac
    done
  done
done >"$tmp/mix.txt"
state=$tmp/state
cat >"$tmp/grantvaultd.toml" <<TOML
[oauth]
ca_file = "$tmp/provider/cert.pem"
use_system_trust_store = false
[policy]
file = "$tmp/policy.toml"
[proxy]
ca_file = "$tmp/provider/cert.pem"
use_system_trust_store = false
# 64 calls over 4 grants: one grant now and then has more than the default 32.
max_calls_per_grant = 64
[limits]
agent_max_connections_per_uid = 512
io_threads = $IO_THREADS
TOML
flags=(--state-dir "$state" --config "$tmp/grantvaultd.toml")
[[ $(id -u) -eq 0 ]] && flags+=(--allow-root)
"$GRANTVAULTD" "${flags[@]}" >"$tmp/grantvaultd.log" 2>&1 &
daemon_pid=$!
cli=("$GRANTVAULT" --state-dir "$state" --admin bench)
for _ in $(seq 100); do "${cli[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
"${cli[@]}" status >/dev/null 2>&1 || die "grantvaultd did not start"
for c in "${connectors[@]}"; do
  "${cli[@]}" connectors register --id "$c" --type oidc --client-id grantvault-bench \
    --client-secret-file "$tmp/provider/client.secret" --issuer "$issuer" \
    --api-base "$api/v1/" --private-network >"$tmp/register.log" 2>&1 ||
    die "connectors register $c failed: $(cat "$tmp/register.log")"
done
users=(alice bob carol dave)
i=0
for w in "${workspaces[@]}"; do
  for c in "${connectors[@]}"; do authorize_grant "$w" "$c" "${users[$i]}"; i=$((i + 1)); done
done

# --- runs --------------------------------------------------------------------
ticks_per_s=$(getconf CLK_TCK)
cpu_us_of() {  # pid...: CPU time (user + system) of those processes, µs
  local total=0 pid
  for pid in "$@"; do
    [[ -r /proc/$pid/stat ]] || continue
    # Fields 14 and 15 (utime, stime) after the ")" that ends the name.
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo $((total * 1000000 / ticks_per_s))
}
run() {  # mode calls: proxy_load's line, plus the CPU the daemon and the API used
  local out front0 api0
  local daemon_pids=("$daemon_pid" $(pgrep -P "$daemon_pid" || true))
  front0=$(cpu_us_of "${daemon_pids[@]}") api0=$(cpu_us_of "$api_pid")
  if [[ $1 == proxy ]]; then
    out=$("${load_sched[@]}" "$PROXY_LOAD" --mode proxy --socket "$state/run/agent.sock" --mix "$tmp/mix.txt" \
      --calls "$2" --duration "$DURATION" --warmup "$WARMUP" 2>>"$tmp/load.log") ||
      die "proxy_load (proxy, $2) failed: $out"
  else
    out=$("${load_sched[@]}" "$PROXY_LOAD" --mode direct --api "$api" --ca "$tmp/provider/cert.pem" \
      --mix "$tmp/mix.txt" --calls "$2" --duration "$DURATION" --warmup "$WARMUP" \
      2>>"$tmp/load.log") || die "proxy_load (direct, $2) failed: $out"
  fi
  echo "$out daemon_cpu_us=$(($(cpu_us_of "${daemon_pids[@]}") - front0))" \
    "api_cpu_us=$(($(cpu_us_of "$api_pid") - api0))"
}
field() { sed -n "s/\(^\|.* \)$1=\([0-9.]*\).*/\2/p" <<<"$2"; }
cpu_per_call() {  # proxy_load line: "load L, daemon D, API A µs" of CPU per call
  local n
  n=$(field completed "$1")
  awk -v n="$n" -v l="$(field cpu_us "$1")" -v d="$(field daemon_cpu_us "$1")" \
    -v a="$(field api_cpu_us "$1")" 'BEGIN {
      if (n == 0) { print "no calls"; exit }
      printf "load %.0f, daemon %.0f, API %.0f µs", l / n, d / n, a / n }'
}
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run proxy 1 >/dev/null  # fills the token cache and the connection pools
log "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg); proxy_load scheduling $LOADGEN_SCHED"
printf '%-6s %-7s %12s %9s %9s\n' calls path "calls/s" "p50 µs" "p99 µs"
for n in $CALLS; do
  d_rps="" d_p50="" d_p99="" p_rps="" p_p50="" p_p99=""
  for _ in $(seq "$REPEAT"); do
    d=$(run direct "$n")
    p=$(run proxy "$n")
    d_rps+=" $(field calls_per_s "$d")" d_p50+=" $(field p50_us "$d")" d_p99+=" $(field p99_us "$d")"
    p_rps+=" $(field calls_per_s "$p")" p_p50+=" $(field p50_us "$p")" p_p99+=" $(field p99_us "$p")"
    d_cpu=$(cpu_per_call "$d") p_cpu=$(cpu_per_call "$p")
  done
  dr=$(median <<<"$d_rps") d5=$(median <<<"$d_p50") d9=$(median <<<"$d_p99")
  pr=$(median <<<"$p_rps") p5=$(median <<<"$p_p50") p9=$(median <<<"$p_p99")
  printf '%-6s %-7s %12s %9s %9s   (runs:%s)\n' "$n" direct "$dr" "$d5" "$d9" "$d_rps"
  printf '%-6s %-7s %12s %9s %9s   (runs:%s)\n' "$n" proxy "$pr" "$p5" "$p9" "$p_rps"
  awk -v n="$n" -v dr="$dr" -v pr="$pr" -v d5="$d5" -v p5="$p5" -v d9="$d9" -v p9="$p9" 'BEGIN {
    printf "%-6s added p50 %.2f ms, added p99 %.2f ms, throughput %.2f of direct\n",
      n, (p5 - d5) / 1000, (p9 - d9) / 1000, pr / dr }'
  printf '%-6s CPU per call (last run): direct %s; proxied %s\n' "$n" "$d_cpu" "$p_cpu"
done
if [[ ${PROFILE:-0} == 1 ]]; then
  last=${CALLS##* }
  perf record -F 999 -g -o "$tmp/perf.data" -p "$daemon_pid" >/dev/null 2>&1 &
  perf_pid=$!
  run proxy "$last" >/dev/null
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  perf report -i "$tmp/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -40
  echo "-- by thread:"
  perf report -i "$tmp/perf.data" --no-children --sort comm --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -12
  echo "-- the audit writer's thread:"
  perf report -i "$tmp/perf.data" --comm gv-audit-write --no-children --percent-limit 0.25 \
    --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -30
  echo "-- by caller (children):"
  perf report -i "$tmp/perf.data" --children --percent-limit 4 --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9]' | head -60
fi
calls=$(grep -c 'proxy.call' "$tmp/grantvaultd.log" || true)
log "the daemon logged $calls lines about proxied calls; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
