#!/usr/bin/env bash
# herald serve at 2000/s x 1000 connections, default capacity 4096, with and without --max-behind.
# (Run at 21:02 UTC as an equivalent inline loop, rounds 3-5 of this; bench/run-configs.sh is
# that loop. The results file labels the configs "max_behind=... capacity=...".)
exec "$(dirname "$0")/../run-configs.sh" \
    "max_behind=none,capacity=4096:" \
    "max_behind=128,capacity=4096:--max-behind 128" \
    "max_behind=512,capacity=4096:--max-behind 512" \
    "max_behind=none,capacity=128:--capacity 128"
