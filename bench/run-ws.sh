#!/usr/bin/env bash
# WebSocket benchmark: herald vs the baseline (axum + tokio broadcast + per-client serde_json),
# same simulated node, same rates, same load generator, all on this machine.
#
#   bench/run-ws.sh                       # rates "max 1000", connections "100 1000", 10 s each
#   CONNS="100 1000 5000" SECS=5 bench/run-ws.sh
#
# Knobs (environment): RATES, CONNS, SECS (window), WARMUP (seconds before the window),
# LOADGEN_THREADS (client runtime workers; default one per CPU), CSV (output file),
# APPEND=1 (add rows to an existing CSV), HERALD_PORT, BASELINE_PORT,
# SERVER_CPUS / LOADGEN_CPUS (taskset CPU lists, e.g. "0-7" and "8-15", to keep the server
# and the load generator off each other's cores; both runtimes size themselves to their set),
# BIN_DIR (a folder holding prebuilt herald, herald-baseline and herald-loadgen: no cargo
# build, for a machine without a toolchain). Prints one loadgen line per run, then the herald/baseline
# ratios for deliveries per second and p99 latency, and writes every number to $CSV.
# Exits non-zero if a run fails or any connection saw a gap or a duplicate.
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"max 1000"}
CONNS=${CONNS:-"100 1000"}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
CSV=${CSV:-bench/results/ws.csv}
# Below Linux's default ephemeral range (32768-60999), so the load generator's own client
# sockets cannot already hold a server's port.
HERALD_PORT=${HERALD_PORT:-21100}      # run n listens on HERALD_PORT + 2n
BASELINE_PORT=${BASELINE_PORT:-21101}  # run n listens on BASELINE_PORT + 2n
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if [[ -n ${BIN_DIR:-} ]]; then
    BINS=$BIN_DIR
else
    cargo build --release -q -p herald-ws --bin herald -p herald-bench --bin herald-loadgen --bin herald-baseline
    BINS="$TARGET_DIR/release"
fi
HERALD="$BINS/herald"
BASELINE="$BINS/herald-baseline"
LOADGEN="$BINS/herald-loadgen"
# Optional CPU pinning (taskset): the server on SERVER_CPUS, the load generator on LOADGEN_CPUS.
SERVER_PIN=()
LOADGEN_PIN=()
if [[ -n ${SERVER_CPUS:-} ]]; then SERVER_PIN=(taskset -c "$SERVER_CPUS"); fi
if [[ -n ${LOADGEN_CPUS:-} ]]; then LOADGEN_PIN=(taskset -c "$LOADGEN_CPUS"); fi

# Thousands of sockets per process: raise the soft open-files limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$(dirname "$CSV")"
FIELDS="secs connected events_per_s frames_per_s bytes_per_s lagged_notices missed gaps dups dropped latency_kind p50_us p99_us p999_us fan_p50_us fan_p99_us fan_p999_us upgrade_p50_us upgrade_p99_us upgrade_max_us upgrade_retries"
if [[ ${APPEND:-0} != 1 || ! -s $CSV ]]; then
    echo "server,rate,conns,${FIELDS// /,}" >"$CSV"
fi

SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

# One GET /healthz: curl where it is installed, else bash's /dev/tcp (a bare machine).
probe_healthz() {
    local port=$1
    if command -v curl >/dev/null; then
        curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
            head -n 1 <&3 | grep -q ' 200 ') 2>/dev/null
    fi
}

# Waits (at most 10 s) until the server answers /healthz.
wait_healthy() {
    local port=$1
    for _ in $(seq 1 100); do
        if probe_healthz "$port"; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "run-ws: the server exited before it was ready" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "run-ws: the server on port $port did not become healthy in 10 s" >&2
    return 1
}

field() { # field LINE KEY
    tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'
}

bad=0
run=0
for rate in $RATES; do
    for conns in $CONNS; do
        for server in herald baseline; do
            # A fresh port per run: sockets of the previous server may still hold its port.
            run=$((run + 1))
            if [[ $server == herald ]]; then
                port=$((HERALD_PORT + 2 * run))
                "${SERVER_PIN[@]}" "$HERALD" serve --listen "127.0.0.1:$port" --rate "$rate" >/dev/null 2>&1 &
            else
                port=$((BASELINE_PORT + 2 * run))
                "${SERVER_PIN[@]}" "$BASELINE" --listen "127.0.0.1:$port" --rate "$rate" >/dev/null 2>&1 &
            fi
            SERVER_PID=$!
            wait_healthy "$port"
            # A fixed rate lets the load generator time deliveries against the publish schedule.
            rate_arg=()
            if [[ $rate != max ]]; then rate_arg=(--rate "$rate"); fi
            if ! line=$("${LOADGEN_PIN[@]}" "$LOADGEN" --url "ws://127.0.0.1:$port/ws/events" --conns "$conns" \
                --secs "$SECS" --warmup-secs "$WARMUP" "${rate_arg[@]}" \
                ${LOADGEN_THREADS:+--threads "$LOADGEN_THREADS"}); then
                stop_server
                echo "run-ws: the load generator failed against $server at rate=$rate conns=$conns" >&2
                bad=1
                continue
            fi
            stop_server
            echo "$server rate=$rate $line"
            row="$server,$rate,$conns"
            for k in $FIELDS; do
                row="$row,$(field "$line" "$k")"
            done
            echo "$row" >>"$CSV"
            if [[ $(field "$line" gaps) != 0 || $(field "$line" dups) != 0 ]]; then
                echo "run-ws: $server at rate=$rate conns=$conns saw gaps or duplicates" >&2
                bad=1
            fi
        done
    done
done

echo
echo "ratio herald/baseline (deliveries/s: higher is better; p99 latency: lower is better;"
echo "latency against the publish schedule at a fixed rate, fan-out spread at max)"
printf '%-6s %-6s %14s %14s %8s %10s %10s %8s\n' rate conns herald_ev/s baseline_ev/s ratio herald_p99 base_p99 ratio
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { key = $2 "," $3; ev[$1 "," key] = $col["events_per_s"]; p99[$1 "," key] = $col["p99_us"]; keys[key] = 1 }
    END {
        for (k in keys) {
            split(k, rc, ",")
            he = ev["herald," k]; be = ev["baseline," k]
            hp = p99["herald," k]; bp = p99["baseline," k]
            printf "%-6s %-6s %14.0f %14.0f %8.2f %10s %10s %8.2f\n", rc[1], rc[2], he, be,
                (be > 0 ? he / be : 0), hp, bp, (bp > 0 ? hp / bp : 0)
        }
    }' "$CSV" | sort -k1,1 -k2,2n
echo "wrote $CSV"
exit "$bad"
