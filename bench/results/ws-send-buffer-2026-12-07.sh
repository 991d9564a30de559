#!/usr/bin/env bash
# herald serve at 2000/s x 1000 connections (default capacity 4096): --max-behind 128 with
# and without --send-buffer, and each alone. Five rounds, the configurations back to back.
# (Run at 23:14 UTC as an equivalent inline loop; bench/run-configs.sh is that loop.)
exec "$(dirname "$0")/../run-configs.sh" \
    "default:" \
    "max_behind_128:--max-behind 128" \
    "max_behind_128+send_buffer_64k:--max-behind 128 --send-buffer 65536" \
    "send_buffer_64k:--send-buffer 65536"
