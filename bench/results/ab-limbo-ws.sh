#!/usr/bin/env bash
# WebSocket A/B of the per-thread limbo: bench/run-ws.sh with prebuilt binaries from before
# (e2c7a42) and after (5eace5f), alternately. BEFORE and AFTER are folders holding herald,
# herald-baseline and herald-loadgen (the same baseline and load generator in both).
#   BEFORE=/path/before AFTER=/path/after ROUNDS=2 bench/results/ab-limbo-ws.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-2}
date -u
for round in $(seq 1 "$ROUNDS"); do
    for side in BEFORE AFTER; do
        echo "== round $round $side"
        BIN_DIR=${!side} RATES=${RATES:-"2000 max"} CONNS=1000 SECS=10 WARMUP=2 \
            CSV=/tmp/ab-limbo-ws-$side-$round.csv bash bench/run-ws.sh 2>&1 | grep -E '^(herald|baseline|ratio|rate)|loadgen' | cut -c1-400
    done
done
date -u
