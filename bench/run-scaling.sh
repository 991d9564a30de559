#!/usr/bin/env bash
# Fan-out scaling: herald's ring against tokio's broadcast at several runtime sizes, on
# whatever cores this machine has. Runs the criterion `fanout` group of benches/ring.rs once
# per worker-thread count and tabulates the median deliveries per second.
#
#   bench/run-scaling.sh                             # WORKERS "2 <nproc>", SUBS "16,64,256"
#   WORKERS="2 4 8 16" SUBS=16,64,256 bench/run-scaling.sh
#
# Knobs (environment): WORKERS (space-separated runtime worker counts), SUBS (comma-separated
# subscriber counts), IDS (criterion ids to run, a regex alternation; default
# "herald|herald_each|tokio"), RING_BENCH (a prebuilt criterion binary of benches/ring.rs,
# for a machine without a toolchain; default: cargo builds and runs it), CSV (output file,
# default bench/results/scaling.csv), LOG (criterion's full output, default next to CSV).
# The producer is the benchmark thread, outside the runtime, so a run uses WORKERS + 1
# threads. Exits non-zero if a benchmark fails (each asserts every subscriber got every
# event and nobody lagged).
set -euo pipefail
cd "$(dirname "$0")/.."

NPROC=$(nproc)
WORKERS=${WORKERS:-"2 $NPROC"}
SUBS=${SUBS:-16,64,256}
IDS=${IDS:-"herald|herald_each|tokio"}
CSV=${CSV:-bench/results/scaling.csv}
LOG=${LOG:-${CSV%.csv}.log}

mkdir -p "$(dirname "$CSV")"
: >"$LOG"
{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -srm), $NPROC CPUs:" \
        "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
} | tee -a "$LOG"
echo "workers,impl,subs,melem_per_s" >"$CSV"

for w in $WORKERS; do
    echo "## HERALD_BENCH_WORKERS=$w HERALD_BENCH_SUBS=$SUBS" | tee -a "$LOG"
    filter="^fanout/($IDS)/"
    if [[ -n ${RING_BENCH:-} ]]; then
        cmd=("$RING_BENCH" --bench --noplot "$filter")
    else
        cmd=(cargo bench -q -p herald-bench --bench ring -- --noplot "$filter")
    fi
    HERALD_BENCH_WORKERS=$w HERALD_BENCH_SUBS=$SUBS "${cmd[@]}" 2>&1 | tee -a "$LOG" |
        awk -v w="$w" '
            # "fanout/<impl>/<subs>" starts a result; its first "thrpt:" line holds
            # [low median high]; later thrpt lines (changes against a saved baseline) are skipped.
            /^fanout\// { split($1, p, "/"); impl = p[2]; subs = p[3]; want = 1 }
            want && /thrpt:/ {
                sub(/.*\[/, ""); v = $3; u = $4
                f = (u ~ /^K/) ? 0.001 : (u ~ /^G/) ? 1000 : (u ~ /^M/) ? 1 : 0.000001
                printf "%s,%s,%s,%.2f\n", w, impl, subs, v * f
                want = 0
            }' >>"$CSV"
done

echo
echo "median deliveries per second (Melem/s), ratio herald/tokio and herald_each/tokio"
printf '%-8s %-6s %12s %12s %12s %8s %8s\n' workers subs herald herald_each tokio h/t each/t
awk -F, 'NR > 1 { m[$1 "," $3 "," $2] = $4; k[$1 "," $3] = 1 }
    END {
        for (key in k) {
            h = m[key ",herald"]; e = m[key ",herald_each"]; t = m[key ",tokio"]
            split(key, ws, ",")
            printf "%-8s %-6s %12s %12s %12s %8.2f %8.2f\n", ws[1], ws[2], h, e, t,
                (t > 0 ? h / t : 0), (t > 0 ? e / t : 0)
        }
    }' "$CSV" | sort -k1,1n -k2,2n
echo "wrote $CSV and $LOG"
