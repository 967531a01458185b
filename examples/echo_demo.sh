#!/usr/bin/env bash
# `make demo`, second half: the C echo server (examples/echo_server.c, 2 workers) under a
# bounded loopback load from the bench's load generator (benches/io/loadgen.c: 50
# connections, 64-byte requests, every echoed byte checked, 3 s), then a clean stop.
#   echo_demo.sh SERVER LOADGEN
set -euo pipefail
server=$1 loadgen=$2
out=$(mktemp)
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
"$server" --port 0 --workers 2 --seconds 60 >"$out" 2>&1 &
pid=$!
port=""
for _ in $(seq 100); do
    port=$(sed -n 's/^echo_server: listening on port \([0-9]*\).*/\1/p' "$out")
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { cat "$out"; echo "echo demo: the server did not start" >&2; exit 1; }
echo "echo demo: echo_server on 127.0.0.1:$port, 2 workers; loadgen: 50 connections, 64-byte requests, 3 s"
result=$("$loadgen" --port "$port" --conns 50 --depth 1 --size 64 --warmup-ms 500 --duration-ms 3000 | tail -n 1)
kill -TERM "$pid"
wait "$pid"
cat "$out"
rps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$result")
p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$result")
p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$result")
echo "echo demo: ${rps} requests/s, p50 ${p50} us, p99 ${p99} us (every response verified)"
