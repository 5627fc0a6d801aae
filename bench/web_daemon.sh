#!/bin/bash
# The web benchmark through a real `flow webserver`, as a user's browser meets it.
#
#   bench/web_daemon.sh [target/release/flow] [flow bench web options...]
#
# Runs `flow bench web --keep` (the in-process server times, on a fresh database: it drops a
# PostgreSQL one given with --database-url!), then serves the same database with
# `flow webserver` on port 8099 and times the same pages with curl from this other process:
# median and max of 20 requests after one warm-up, with the page size.
set -euo pipefail
FLOW=${1:-target/release/flow}
shift || true
PORT=8099
OUT=$(mktemp)
"$FLOW" bench web --keep "$@" 2>/dev/null | tee "$OUT" | grep -v '^  /\|^kept\|^  FLOW_HOME\|^and log in'
HOME_DIR=$(grep -o 'FLOW_HOME=[^ ]*' "$OUT" | cut -d= -f2)
URL=$(grep -o 'FLOW__DATABASE__URL=[^ ]*' "$OUT" | cut -d= -f2-)
mapfile -t PAGES < <(sed -n '/^and log in/,$p' "$OUT" | tail -n +2 | sed 's/^  //')
FLOW_HOME=$HOME_DIR FLOW__DATABASE__URL=$URL FLOW__LOGGING__LEVEL=warn "$FLOW" webserver -p $PORT >"$HOME_DIR/webserver.log" 2>&1 &
WS=$!
trap 'kill $WS 2>/dev/null; rm -rf "$HOME_DIR" "$OUT"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$PORT/health && break; sleep 0.2; done
JAR=$HOME_DIR/cookies
TOKEN=$(curl -s -c "$JAR" -b "$JAR" http://127.0.0.1:$PORT/login | grep -o 'name="csrf_token" value="[^"]*"' | head -1 | sed 's/.*value="//;s/"//')
curl -s -c "$JAR" -b "$JAR" -o /dev/null -d "username=bench&password=bench-password&csrf_token=$TOKEN&next=/" http://127.0.0.1:$PORT/login
echo "through flow webserver (curl from another process, loopback):"
for path in "${PAGES[@]}"; do
  curl -s -b "$JAR" -o /dev/null "http://127.0.0.1:$PORT$path"
  times=$(for _ in $(seq 20); do curl -s -b "$JAR" -o "$HOME_DIR/page.html" -w '%{time_total}\n' "http://127.0.0.1:$PORT$path"; done | sort -n)
  size=$(stat -c %s "$HOME_DIR/page.html")
  awk -v p="$path" -v kib=$((size / 1024)) 'NR == 10 { med = $1 } { max = $1 } END { printf "  %s: %d KiB, median %.1f ms, max %.1f ms\n", p, kib, med * 1000, max * 1000 }' <<<"$times"
done
