#!/bin/bash
# Third device run: final code (C); rates above what 1000 connections can be offered at 2000/s,
# and the server held to 2 cores with the load generator on 8 others.
set -u
cd "$(dirname "$0")/.."
ulimit -Hn 1048576 2>/dev/null; ulimit -n "$(ulimit -Hn)" 2>/dev/null
date -u >"$OUT/ws3.txt"
SERVER_CPUS=0-7 LOADGEN_CPUS=8-15 BIN_DIR=.devbin/C RATES="5000 10000" CONNS=1000 SECS=5 WARMUP=2 \
  CSV=$OUT/ws3.csv timeout 70 bash bench/run-ws.sh >>"$OUT/ws3.txt" 2>&1; echo "rc=$?" >>"$OUT/ws3.txt"
echo "== server on 2 cores" >>"$OUT/ws3.txt"
SERVER_CPUS=0-1 LOADGEN_CPUS=8-15 BIN_DIR=.devbin/C RATES="2000 max" CONNS=1000 SECS=5 WARMUP=2 \
  CSV=$OUT/ws3-2core.csv timeout 70 bash bench/run-ws.sh >>"$OUT/ws3.txt" 2>&1; echo "rc=$?" >>"$OUT/ws3.txt"
date -u >>"$OUT/ws3.txt"
grep -E "^== |^rc|^(herald|baseline) |^(max|2000|5000|10000) " "$OUT/ws3.txt" | cut -c1-330
