#!/bin/bash
# A/B: old (1db1320) vs new (HEAD) herald binary, same loadgen, interleaved.
cd "$(dirname "$0")/../.."
ulimit -n $(ulimit -Hn)
# OLD: herald built from 1db1320 in a worktree:
#   git worktree add /tmp/exp/wt 1db1320 && (cd /tmp/exp/wt && CARGO_TARGET_DIR=/tmp/exp/wt-target cargo build --release -p herald-ws --bin herald)
OLD=/tmp/exp/wt-target/release/herald
NEW=target/release/herald
port=21500
for round in 1 2 3; do
  for v in old new; do
    bin=$OLD; [ $v = new ] && bin=$NEW
    port=$((port+1))
    $bin serve --listen 127.0.0.1:$port --rate ${RATE:-max} >/dev/null 2>&1 &
    hp=$!
    for i in $(seq 1 50); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
    line=$(target/release/herald-loadgen --url ws://127.0.0.1:$port/ws/events --conns ${CONNS:-1000} --secs 10 --warmup-secs 2)
    kill $hp; wait $hp 2>/dev/null
    echo "$v round=$round $(echo "$line" | grep -o 'events_per_s=[0-9]*\|upgrade_p99_us=[0-9]*\|gaps=[0-9]*\|dups=[0-9]*' | tr '\n' ' ')"
  done
done
