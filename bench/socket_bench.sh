#!/usr/bin/env bash
# Compares grantvaultd's agent socket (Status requests) with a bare epoll echo
# server using the same framing, in one run, on Unix sockets only.
#
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build -j2
#   bench/socket_bench.sh
#
# Builds nothing. Environment (defaults in brackets):
#   BUILD_DIR    build tree with bench/echo_server, bench/loadgen, daemon/grantvaultd [build]
#   CONNECTIONS  connection counts to run                                   [1 16 64 256]
#   DEPTH        requests outstanding per connection                        [1]
#   DURATION     measured seconds per run                                   [5]
#   WARMUP       unmeasured seconds before each run                         [1]
#   REPEAT       runs per connection count and server; the table shows the
#                median (by requests/s)                                     [1]
#   THREADS      loadgen threads                                            [2]
#   ECHO_THREADS echo_server threads                                        [2]
#   PROFILE      if 1: one more (unmeasured) 64-connection run of grantvaultd under
#                `perf record -g`, top symbols printed at the end (needs perf) [0]
# With the defaults the whole script takes about 50 s; REPEAT=3 DURATION=3 about 100 s.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
CONNECTIONS=${CONNECTIONS:-"1 16 64 256"}
DEPTH=${DEPTH:-1}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
THREADS=${THREADS:-2}
ECHO_THREADS=${ECHO_THREADS:-2}
PROFILE=${PROFILE:-0}
REPEAT=${REPEAT:-1}

LOADGEN=$BUILD_DIR/bench/loadgen
ECHO_SERVER=$BUILD_DIR/bench/echo_server
DAEMON=$BUILD_DIR/daemon/grantvaultd
for bin in "$LOADGEN" "$ECHO_SERVER" "$DAEMON"; do
  if [[ ! -x $bin ]]; then
    echo "socket_bench: $bin is missing; build first (see the top of this script)" >&2
    exit 2
  fi
done

tmp=$(mktemp -d /tmp/gv-socket-bench.XXXXXX)
echo_pid=""
daemon_pid=""
perf_pid=""
cleanup() {
  for pid in $perf_pid $echo_pid $daemon_pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $perf_pid $echo_pid $daemon_pid; do
    # grantvaultd drains for at most 5 s; do not wait for ever.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo_sock=$tmp/echo.sock
agent_sock=$tmp/state/run/agent.sock

"$ECHO_SERVER" --socket "$echo_sock" --threads "$ECHO_THREADS" 2>"$tmp/echo.log" &
echo_pid=$!
"$DAEMON" --state-dir "$tmp/state" >"$tmp/grantvaultd.log" 2>&1 &
daemon_pid=$!

# Wait (at most 30 s: the first start creates the token and the database)
# until each socket answers a real request.
wait_ready() {  # name socket request pid
  for _ in $(seq 300); do
    if "$LOADGEN" --socket "$2" --request "$3" --probe 2>/dev/null; then return 0; fi
    if ! kill -0 "$4" 2>/dev/null; then
      echo "socket_bench: $1 exited during start-up:" >&2
      tail -n 20 "$tmp"/*.log >&2
      return 1
    fi
    sleep 0.1
  done
  echo "socket_bench: $1 did not answer on $2 within 30 s" >&2
  tail -n 20 "$tmp"/*.log >&2
  return 1
}
wait_ready echo_server "$echo_sock" echo "$echo_pid"
wait_ready grantvaultd "$agent_sock" status "$daemon_pid"

run() {  # socket request connections -> one loadgen result line
  timeout $((${DURATION%.*} + ${WARMUP%.*} + 20)) \
    "$LOADGEN" --socket "$1" --request "$2" --connections "$3" --depth "$DEPTH" \
    --duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "socket_bench: $(nproc) cores, depth $DEPTH, ${DURATION} s per run after ${WARMUP} s warm-up," \
  "$REPEAT run(s) each, loadgen threads $THREADS, echo_server threads $ECHO_THREADS"
# The run with the median requests/s of those given.
median() {
  local l
  for l in "$@"; do echo "$(field rps "$l") $l"; done | sort -n |
    sed -n "$((($# + 1) / 2))p" | cut -d' ' -f2-
}
rows=()
for c in $CONNECTIONS; do
  es=()
  gs=()
  for _ in $(seq "$REPEAT"); do  # interleaved, so that both see the same machine
    es+=("$(run "$echo_sock" echo "$c")")
    echo "${es[-1]}"
    gs+=("$(run "$agent_sock" status "$c")")
    echo "${gs[-1]}"
  done
  e=$(median "${es[@]}")
  g=$(median "${gs[@]}")
  row="$c"
  for f in rps p50_us p99_us p999_us; do row+=" $(field $f "$e") $(field $f "$g")"; done
  rows+=("$row")
done

echo
[[ $REPEAT -gt 1 ]] && echo "(each row: the run with the median requests/s of $REPEAT)"
echo "| connections | echo rps | grantvaultd rps | grantvaultd/echo | echo p50 / p99 / p99.9 (µs) | grantvaultd p50 / p99 / p99.9 (µs) |"
echo "|---:|---:|---:|---:|---:|---:|"
for r in "${rows[@]}"; do
  # shellcheck disable=SC2086
  set -- $r
  awk -v c="$1" -v er="$2" -v gr="$3" -v e50="$4" -v g50="$5" -v e99="$6" -v g99="$7" \
    -v e999="$8" -v g999="$9" 'BEGIN {
      printf "| %d | %d | %d | %.0f %% | %s / %s / %s | %s / %s / %s |\n",
        c, er, gr, (er > 0 ? 100 * gr / er : 0), e50, e99, e999, g50, g99, g999 }'
done

# An extra, unmeasured 64-connection run under perf (perf slows the daemon).
if [[ $PROFILE == 1 ]] && command -v perf >/dev/null; then
  perf record -q -g -o "$tmp/perf.data" -p "$daemon_pid" 2>"$tmp/perf.log" &
  perf_pid=$!
  sleep 0.5
  echo
  echo "under perf: $(run "$agent_sock" status 64)"
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  perf_pid=""
  echo "grantvaultd profile, 64 connections (perf report --no-children, top 40 symbols):"
  perf report -i "$tmp/perf.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null |
    awk '/^ +[0-9]/ && n++ < 40 { sub(/ +- +- *$/, ""); gsub(/ +/, " "); print }'
fi
