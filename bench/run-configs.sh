#!/usr/bin/env bash
# herald alone, several server configurations compared in rounds: each round runs every
# configuration back to back, so a VM's slow spells hit them all alike.
#
#   bench/run-configs.sh "default:" "max_behind_128:--max-behind 128"
#   ROUNDS=3 RATE=1000 CONNS=100 bench/run-configs.sh "small:--capacity 128" "big:--capacity 65536"
#
# Each argument is LABEL:FLAGS: FLAGS (possibly empty) go to `herald serve`. Knobs
# (environment): ROUNDS (default 5), RATE (--rate of the simulated node, default 2000),
# CONNS (default 1000), SECS (measurement window, default 10), WARMUP (default 2), PORT
# (the first run listens on PORT + 2, default 21400), BIN_DIR (prebuilt herald and
# herald-loadgen; default: build them). Prints one line per run: the round, the label,
# and the load generator's counts and latencies (the first p50/p99/p999 are
# publish-to-receive latency, the second triplet the fan-out spread, the last pair the
# upgrade times).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
RATE=${RATE:-2000}
CONNS=${CONNS:-1000}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
port=${PORT:-21400}
if [[ $# -eq 0 ]]; then
    echo "usage: bench/run-configs.sh LABEL:FLAGS..." >&2
    exit 2
fi
for config in "$@"; do
    if [[ $config != *:* ]]; then
        echo "bench/run-configs.sh: \`$config\` is not LABEL:FLAGS" >&2
        exit 2
    fi
done
if [[ -n ${BIN_DIR:-} ]]; then
    BINS=$BIN_DIR
else
    cargo build --release -q -p herald-ws --bin herald -p herald-bench --bin herald-loadgen
    BINS=${CARGO_TARGET_DIR:-target}/release
fi

run() {
    local label=$1 flags=$2 pid line
    port=$((port + 2))
    # shellcheck disable=SC2086 # FLAGS are words for herald serve
    "$BINS/herald" serve --listen "127.0.0.1:$port" --rate "$RATE" $flags >/dev/null 2>&1 &
    pid=$!
    sleep 1
    line=$("$BINS/herald-loadgen" --url "ws://127.0.0.1:$port/ws/events" --conns "$CONNS" \
        --secs "$SECS" --warmup-secs "$WARMUP" --rate "$RATE" 2>/dev/null | tail -1) || true
    if ! kill "$pid" 2>/dev/null; then
        echo "bench/run-configs.sh: herald serve $flags exited early (run it by hand to see why)" >&2
        exit 1
    fi
    wait "$pid" 2>/dev/null || true
    echo "$label $(echo "$line" | grep -oE '(events_per_s|lagged_notices|missed|gaps|dups|p50_us|p99_us|p999_us)=[0-9]+' | tr '\n' ' ')"
}

for round in $(seq 1 "$ROUNDS"); do
    for config in "$@"; do
        run "round=$round config=${config%%:*}" "${config#*:}"
    done
done
