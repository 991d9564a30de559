#!/usr/bin/env bash
# herald serve at 2000/s x 1000 connections (default capacity 4096): --max-behind 128 with
# and without --send-buffer, and each alone. Five rounds, the configurations back to back.
set -u
cd "$(dirname "$0")/../.."
port=21700
run() {
  label=$1; shift
  port=$((port+2))
  target/release/herald serve --listen 127.0.0.1:$port --rate 2000 "$@" >/dev/null 2>&1 &
  pid=$!
  sleep 1
  line=$(target/release/herald-loadgen --url ws://127.0.0.1:$port/ws/events --conns 1000 --secs 10 --warmup-secs 2 --rate 2000 2>/dev/null | tail -1)
  kill $pid; wait $pid 2>/dev/null
  echo "$label $(echo "$line" | grep -oE '(events_per_s|lagged_notices|missed|gaps|dups|p50_us|p99_us|p999_us)=[0-9]+' | tr '\n' ' ')"
}
for round in 1 2 3 4 5; do
  run "round=$round config=default"
  run "round=$round config=max_behind_128" --max-behind 128
  run "round=$round config=max_behind_128+send_buffer_64k" --max-behind 128 --send-buffer 65536
  run "round=$round config=send_buffer_64k" --send-buffer 65536
done
