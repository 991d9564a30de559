#!/usr/bin/env bash
# What would a publish cost without parts of its work? Four builds of the same bench,
# back to back: main; main with entries recycled through an unbounded thread-local free
# list instead of mimalloc (an upper bound for any entry pool: free, always hot); the
# loom mutant `eager_free` (the entry taken out of a slot is released at once instead of
# after the epoch grace period: unsound with readers, harmless here because the idle
# subscribers never read); and both. The pool sketch is publish-counterfactuals-pool.diff.
set -euo pipefail
cd "$(dirname "$0")/../.."
POOL=bench/results/publish-counterfactuals-pool.diff
run() {
    echo "== $1"
    for round in 1 2; do
        cargo bench -q -p herald-bench --bench ring -- '^publish/herald/(0|1024)$' 2>&1 | grep -E '^publish'
    done
}
date -u; git rev-parse --short HEAD
run main
git apply "$POOL"; trap 'git apply -R "$POOL"' EXIT
run "thread-local pool"
git apply -R "$POOL"; trap - EXIT
export CARGO_TARGET_DIR=target/eager RUSTFLAGS='--cfg herald_mutant="eager_free"'
run "eager free"
git apply "$POOL"; trap 'git apply -R "$POOL"' EXIT
run "eager free + thread-local pool"
date -u
