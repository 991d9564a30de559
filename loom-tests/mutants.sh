#!/usr/bin/env bash
# Shows that the loom models can fail. For each deliberate bug below, herald-core is built
# with `--cfg herald_mutant="<name>"` (a cfg no normal build sets; the bug sits behind it
# in core/src/ring.rs) and every model is run: at least one must fail. Prints one verdict
# line per mutant; exits 0 when every mutant is caught, 1 when one is not, 2 when the
# models fail without any mutant or a build fails.
#
# Uses the loom target dir of run.sh (target/loom); each mutant's herald-core and models
# are kept apart there (see mutant-rustc.sh), so dependencies are built once.
set -uo pipefail
cd "$(dirname "$0")/.."

# name: the bug, and the model expected to catch it.
MUTANTS=(
    # The slot swap that publishes an entry is Relaxed instead of SeqCst: a subscriber can
    # load the pointer without seeing the entry's contents (m1, m2, m6).
    relaxed_publish
    # Publishers ignore SEALED and put live events into the startup segment too, where
    # they stay for good (m3).
    seal_ignored
    # A parking subscriber does not look again after pushing its waker: a value published
    # in between never wakes it (m4, m5, m8).
    no_recheck
    # A publisher frees the entry it swapped out at once instead of retiring it: a reader
    # that loaded it just before uses freed memory (m6).
    eager_free
    # A subscriber that sees CLOSED returns Closed without draining what is left (m5).
    close_no_drain
    # A batched read (`try_recv_each`) that meets a lag moves on without reporting it: the
    # skipped values go missing without a `Lagged` (m1, batched model).
    fill_forgets_lag
    # Giving up an entry's count is Relaxed: the owner that frees it does not see the other
    # owners' reads of it happen first (m1, m2, m6: the payload's drop writes its body).
    relaxed_release
    # A subscriber dropped while parked sweeps the wait stack but frees the nodes without
    # waking them: a live subscriber whose node it took never hears of the next value
    # (m4, the sweep model).
    sweep_forgets_wake
    # Recycling checks an entry's count with a Relaxed load: the publisher can drop the old
    # value and write a new entry before a subscriber's last read of it (m7).
    relaxed_reclaim
)

unset RUSTC_WORKSPACE_WRAPPER
export RUSTFLAGS="--cfg herald_loom"
export CARGO_TARGET_DIR="${HERALD_LOOM_TARGET_DIR:-target/loom}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# Line tables are enough for loom's backtraces and build a third faster than full debuginfo.
export CARGO_PROFILE_TEST_DEBUG=line-tables-only
# Each run is bounded: a model that hangs instead of failing counts as not caught.
LIMIT_S="${HERALD_MUTANT_LIMIT_S:-300}"
mkdir -p "$CARGO_TARGET_DIR/mutants"
logs=$(cd "$CARGO_TARGET_DIR/mutants" && pwd)

# Without a mutant every model must pass, or a "caught" below would mean nothing.
if ! timeout "$LIMIT_S" cargo test -q -p herald-loom-tests >"$logs/baseline.log" 2>&1; then
    echo "baseline: the models fail without any mutant; see $logs/baseline.log"
    exit 2
fi
echo "baseline: every model passes without a mutant"

undetected=0
for m in "${MUTANTS[@]}"; do
    mkdir -p "$logs/$m"
    ln -sfn "$PWD/loom-tests/mutant-rustc.sh" "$logs/$m/rustc"
    log="$logs/$m/models.log"
    if ! RUSTC_WORKSPACE_WRAPPER="$logs/$m/rustc" \
        cargo test -q -p herald-loom-tests --no-run >"$logs/$m/build.log" 2>&1; then
        echo "mutant $m: BUILD FAILED, see $logs/$m/build.log"
        exit 2
    fi
    RUSTC_WORKSPACE_WRAPPER="$logs/$m/rustc" \
        timeout "$LIMIT_S" cargo test -p herald-loom-tests --no-fail-fast >"$log" 2>&1
    status=$?
    # Failing models, as BINARY::TEST: libtest's "test TEST ... FAILED" lines under cargo's
    # "Running tests/BINARY.rs" headers. A loom deadlock report can end in a second panic
    # that aborts the binary before libtest reports; its test is then the one named in the
    # "thread 'TEST' ... panicked" lines.
    failed=$(awk '
        /^ *Running tests\// { bin = $2; sub(/^tests\//, "", bin); sub(/\.rs$/, "", bin) }
        /^test [a-z0-9_]+ \.\.\. FAILED$/ { failed[bin] = failed[bin] " " bin "::" $2 }
        /^thread .[a-z0-9_]+. .*panicked/ {
            name = $2; gsub(/\047/, "", name)
            if (index(panicked[bin], bin "::" name " (aborted)") == 0)
                panicked[bin] = panicked[bin] " " bin "::" name " (aborted)"
        }
        /to rerun pass `-p herald-loom-tests --test / {
            b = $NF; gsub(/`/, "", b); order[++n] = b
        }
        END {
            for (i = 1; i <= n; i++) {
                b = order[i]
                print (failed[b] != "" ? failed[b] : (panicked[b] != "" ? panicked[b] : " " b))
            }
        }' "$log" | xargs | sed 's/ \([a-z0-9_]*::\)/, \1/g')
    if [ "$status" -eq 124 ]; then
        echo "mutant $m: NOT CAUGHT (models still running after ${LIMIT_S}s), see $log"
        undetected=$((undetected + 1))
    elif [ "$status" -ne 0 ] && [ -n "$failed" ]; then
        echo "mutant $m: CAUGHT by $failed"
    elif [ "$status" -ne 0 ]; then
        echo "mutant $m: NOT CAUGHT (cargo test failed but no model failed), see $log"
        undetected=$((undetected + 1))
    else
        echo "mutant $m: NOT CAUGHT (every model passed)"
        undetected=$((undetected + 1))
    fi
done

if [ "$undetected" -ne 0 ]; then
    echo "mutants: $undetected of ${#MUTANTS[@]} not caught"
    exit 1
fi
echo "mutants: all ${#MUTANTS[@]} caught"
