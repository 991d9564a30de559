#!/usr/bin/env bash
# A=bin B=bin ROUNDS=n FILTER=re
ROUNDS=${ROUNDS:-4}
FILTER=${FILTER:-'^publish/herald/(0|1|16|1024)$'}
for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    bin=${!side}
    "$bin" --bench "$FILTER" --warm-up-time 1 --measurement-time ${MT:-2} 2>&1 | grep -E 'time:' | grep -v '%' | sed "s/^/$side /"
  done
done
