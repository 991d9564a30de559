#!/usr/bin/env bash
# WebSocket benchmark: herald vs the baseline (axum + tokio broadcast + per-client serde_json),
# same simulated node, same rates, same load generator, all on this machine.
#
#   bench/run-ws.sh                       # rates "max 1000", connections "100 1000", 10 s each
#   CONNS="100 1000 5000" SECS=5 bench/run-ws.sh
#
# Knobs (environment): RATES, CONNS, SECS (window), WARMUP (seconds before the window),
# LOADGEN_THREADS (client runtime workers; default one per CPU), CSV (output file),
# HERALD_PORT, BASELINE_PORT. Prints one loadgen line per run, then the herald/baseline
# ratios for deliveries per second and p99 latency, and writes every number to $CSV.
# Exits non-zero if a run fails or any connection saw a gap or a duplicate.
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"max 1000"}
CONNS=${CONNS:-"100 1000"}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
CSV=${CSV:-bench/results/ws.csv}
HERALD_PORT=${HERALD_PORT:-41100}
BASELINE_PORT=${BASELINE_PORT:-41101}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p herald-ws --bin herald -p herald-bench --bin herald-loadgen --bin herald-baseline
HERALD="$TARGET_DIR/release/herald"
BASELINE="$TARGET_DIR/release/herald-baseline"
LOADGEN="$TARGET_DIR/release/herald-loadgen"

# Thousands of sockets per process: raise the soft open-files limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$(dirname "$CSV")"
echo "server,rate,conns,secs,events_per_s,frames_per_s,bytes_per_s,lagged_notices,missed,gaps,dups,dropped,p50_us,p99_us,p999_us" >"$CSV"

SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

# Waits (at most 10 s) until the server answers /healthz.
wait_healthy() {
    local port=$1
    for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
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
for rate in $RATES; do
    for conns in $CONNS; do
        for server in herald baseline; do
            if [[ $server == herald ]]; then
                port=$HERALD_PORT
                "$HERALD" serve --listen "127.0.0.1:$port" --rate "$rate" >/dev/null 2>&1 &
            else
                port=$BASELINE_PORT
                "$BASELINE" --listen "127.0.0.1:$port" --rate "$rate" >/dev/null 2>&1 &
            fi
            SERVER_PID=$!
            wait_healthy "$port"
            line=$("$LOADGEN" --url "ws://127.0.0.1:$port/ws/events" --conns "$conns" \
                --secs "$SECS" --warmup-secs "$WARMUP" ${LOADGEN_THREADS:+--threads "$LOADGEN_THREADS"})
            stop_server
            echo "$server rate=$rate $line"
            row="$server,$rate,$conns"
            for k in secs events_per_s frames_per_s bytes_per_s lagged_notices missed gaps dups dropped p50_us p99_us p999_us; do
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
echo "ratio herald/baseline (deliveries/s: higher is better; p99 latency: lower is better)"
printf '%-6s %-6s %14s %14s %8s %10s %10s %8s\n' rate conns herald_ev/s baseline_ev/s ratio herald_p99 base_p99 ratio
awk -F, 'NR > 1 { key = $2 "," $3; ev[$1 "," key] = $5; p99[$1 "," key] = $14; keys[key] = 1 }
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
