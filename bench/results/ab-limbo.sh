#!/usr/bin/env bash
# Interleaved A/B of the per-thread limbo (dc948f8) against the commit before it (e2c7a42):
# two criterion bench binaries built from each, run alternately on the same machine.
#   A=path/to/ring-bench-before B=path/to/ring-bench-limbo ROUNDS=3 bench/results/ab-limbo.sh
set -euo pipefail
ROUNDS=${ROUNDS:-3}
FILTER=${FILTER:-'^(publish/(herald|tokio)/(0|1|16|1024)|fanout/(herald|herald_each|tokio)/(16|64)|spsc/.*|mpsc/.*)$'}
date -u
for round in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        bin=${!side}
        echo "== round $round $side $(basename "$bin")"
        "$bin" --bench "$FILTER" --warm-up-time 1 --measurement-time 3 2>&1 | grep -E '^[a-z_]+/.* +time:|^ +time:|^[a-z_]+/[^ ]+$' || true
    done
done
date -u
