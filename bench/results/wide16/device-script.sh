#!/bin/bash
# One prepared device run: ring fan-out scaling, spsc/mpsc, then the WebSocket bench pinned.
set -u
cd "$(dirname "$0")/.."
ulimit -Hn 1048576 2>/dev/null; ulimit -n "$(ulimit -Hn)" 2>/dev/null
{ date -u; uname -a; nproc; lscpu 2>/dev/null | head -25; free -g; head -3 /etc/os-release;
  echo "nofile=$(ulimit -n)"; command -v curl taskset; } >"$OUT/machine.txt" 2>&1
export RING_BENCH=.devbin/ring
t0=$(date +%s)
WORKERS="2 4 8 16" SUBS=16,64,256 CSV=$OUT/scaling.csv LOG=$OUT/scaling.log \
    timeout 230 bash bench/run-scaling.sh >"$OUT/scaling.txt" 2>&1
echo "scaling rc=$? $(( $(date +%s) - t0 )) s" >>"$OUT/machine.txt"
t0=$(date +%s)
timeout 60 .devbin/ring --bench --noplot '^(spsc|mpsc)/' >"$OUT/mpsc.log" 2>&1
echo "mpsc rc=$? $(( $(date +%s) - t0 )) s" >>"$OUT/machine.txt"
t0=$(date +%s)
pin=()
if command -v taskset >/dev/null; then pin=(SERVER_CPUS=0-7 LOADGEN_CPUS=8-15); fi
env "${pin[@]}" BIN_DIR=.devbin RATES="max 2000" CONNS="1000 5000" SECS=5 WARMUP=2 \
    CSV=$OUT/ws16.csv timeout 150 bash bench/run-ws.sh >"$OUT/ws16.txt" 2>&1
echo "ws rc=$? $(( $(date +%s) - t0 )) s" >>"$OUT/machine.txt"
cat "$OUT/machine.txt" "$OUT/scaling.txt" "$OUT/ws16.txt"; grep -E "^(spsc|mpsc)/|thrpt|time:" "$OUT/mpsc.log" | head -40
