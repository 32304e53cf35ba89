#!/bin/bash
# Counts the FUSE requests the kernel sends, by opcode, while a command
# runs (kernel tracepoint fuse:fuse_request_send; needs root and perf).
# Every FUSE mount on the machine counts, so run it on a quiet machine.
#   scripts/fuse-requests.sh go run ./bench/cmd/bench --workloads read-all --runs 1 --warm
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
data=$(mktemp /tmp/fuse-requests.XXXXXX)
trap 'rm -f "$data"' EXIT
perf record -q -e fuse:fuse_request_send -a -o "$data" >/dev/null 2>&1 &
rec=$!
sleep 1 # perf attaches to the tracepoint
"$@" || status=$?
kill -INT "$rec"
wait "$rec" || true
perf script -i "$data" -F trace 2>/dev/null |
	sed -n 's/.*opcode [0-9]* (\([A-Z_]*\)).*/\1/p' | sort | uniq -c | sort -rn
exit "${status:-0}"
