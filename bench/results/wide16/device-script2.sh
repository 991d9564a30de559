#!/bin/bash
# Second device run: A = lag headroom only, B = lag headroom + yield before park.
set -u
cd "$(dirname "$0")/.."
ulimit -Hn 1048576 2>/dev/null; ulimit -n "$(ulimit -Hn)" 2>/dev/null
{ date -u; uname -r; nproc; awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo; } >"$OUT/machine2.txt"
t0=$(date +%s)
# Fan-out, A and B interleaved per runtime size (same minute, same machine).
for w in 2 4 8 16; do
  for b in A B; do
    ids="herald_each"; [[ $b == B ]] && ids="herald|herald_each|tokio"
    WORKERS=$w SUBS=16,64,256 IDS="$ids" RING_BENCH=.devbin/$b/ring CSV=$OUT/sc-$b-$w.csv LOG=/tmp/sc-$b-$w.log \
      timeout 80 bash bench/run-scaling.sh >/dev/null 2>&1
    cat /tmp/sc-$b-$w.log >>"$OUT/scaling2.log"
  done
done
echo "scaling $(( $(date +%s) - t0 )) s" >>"$OUT/machine2.txt"
{ echo "build,workers,impl,subs,melem_per_s"; for f in "$OUT"/sc-*.csv; do b=$(basename "$f" | cut -d- -f2); tail -n +2 "$f" | sed "s/^/$b,/"; done; } >"$OUT/scaling2.csv"
rm -f "$OUT"/sc-*.csv
t0=$(date +%s)
for b in B A; do
  echo "== build $b" >>"$OUT/ws2.txt"
  SERVER_CPUS=0-7 LOADGEN_CPUS=8-15 BIN_DIR=.devbin/$b RATES="max 2000" CONNS="1000 5000" SECS=5 WARMUP=2 \
    CSV=$OUT/ws2-$b.csv timeout 120 bash bench/run-ws.sh >>"$OUT/ws2.txt" 2>&1
  echo "ws $b rc=$? $(( $(date +%s) - t0 )) s" >>"$OUT/machine2.txt"
done
cat "$OUT/machine2.txt"; sort -t, -k3,3 -k4,4n -k2,2n "$OUT/scaling2.csv"; grep -E "^== |^(herald|baseline) |^(max|2000) " "$OUT/ws2.txt" | cut -c1-400
