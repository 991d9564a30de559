#!/usr/bin/env bash
# Runs every loom model of herald-core (loom-tests/tests/*.rs) against the ring's real code:
# `--cfg herald_loom` makes herald-core take its atomics, Arc, threads, UnsafeCell and
# reclamation from loom (core/src/sync.rs). Extra arguments go to `cargo test`, e.g.
# `bash loom-tests/run.sh --test m4_wakeup -- --nocapture`.
#
# Own target dir (target/loom), so the normal build is not invalidated. Preemption bound 3
# unless LOOM_MAX_PREEMPTIONS is set (README, "Loom model checks", says why).
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUSTC_WORKSPACE_WRAPPER
export RUSTFLAGS="--cfg herald_loom"
export CARGO_TARGET_DIR="${HERALD_LOOM_TARGET_DIR:-target/loom}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# Line tables are enough for loom's backtraces and build a third faster than full debuginfo.
export CARGO_PROFILE_TEST_DEBUG=line-tables-only
exec cargo test -p herald-loom-tests "$@"
