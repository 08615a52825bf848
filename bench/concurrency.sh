#!/usr/bin/env bash
# 1,000 concurrent milter connections with messages in flight against the
# release daemon (empty policy), and the daemon's peak RSS. Run from the
# repository root after `cargo build --release`.
set -euo pipefail
ulimit -n 8192
bin=target/release/dispatch-milter
load=target/release/dispatch-milter-load
cfg=$(mktemp)
sed 's/^log_level = "warn"/log_level = "warn"\nmax_connections = 2000/' bench/empty.toml > "$cfg"
"$bin" serve -c "$cfg" 2>/tmp/concurrency-daemon.log &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$cfg"' EXIT
sleep 0.5
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %s kB  ", $1, $2}' /proc/$pid/status; echo; }
echo "idle daemon: $(rss)"
"$load" --connect inet:127.0.0.1:7401 -n "${CONNECTIONS:-1000}" -m "${MESSAGES:-10}" --corpus typical
echo "after load:  $(rss)"
