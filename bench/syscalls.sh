#!/usr/bin/env bash
# System calls per message in the daemon, counted by `strace -c -f`
# attached after a warm-up, for the empty policy and the MX checks (section
# 5 of docs/benchmarks.md). strace slows the daemon down several times: the
# counts are the figure, not the rate.
#
# Builds nothing: run it after `cargo build --release --bins --test bench`
# (or the profiling build of bench/profile.sh, with TARGET set to it).
# Parameters (environment): TARGET (target), BIN (the daemon binary to
# count; default TARGET's, e.g. an older build to compare), POLICIES
# ("empty mx"), MESSAGES (100 per connection), CONNECTIONS (10), MESSAGE
# (a message file instead of the typical corpus message).
set -euo pipefail

target=${TARGET:-target}
policies=${POLICIES:-empty mx}
messages=${MESSAGES:-100}
connections=${CONNECTIONS:-10}
command -v strace >/dev/null || { echo "strace is missing: apt-get install strace" >&2; exit 1; }
source "$(dirname "$0")/lib.sh"
bin=${BIN:-$bin}

load_args=(--corpus typical --tls --from alice@example.org --to bob@example.net
    --client-ip 192.0.2.22 --helo mail2.example.org)
if [ -n "${MESSAGE:-}" ]; then
    load_args+=(--message "$MESSAGE")
fi

for policy in $policies; do
    case $policy in
        empty) config=bench/empty.toml; port=7401 ;;
        mx) config=bench/mx-checks.toml; port=7403 ;;
        *) echo "unknown policy $policy (empty or mx)" >&2; exit 1 ;;
    esac
    "$bin" serve -c "$config" --nameserver "$dns" 2>"$tmp/daemon.$policy" &
    dpid=$!
    pids+=($dpid)
    wait_for_milter "$load" "$port"
    "$load" --connect "inet:127.0.0.1:$port" -n 10 -m 20 "${load_args[@]}" >/dev/null
    strace -c -f -o "$tmp/strace.$policy" -p "$dpid" 2>/dev/null &
    spid=$!
    sleep 1
    "$load" --connect "inet:127.0.0.1:$port" -n "$connections" -m "$messages" "${load_args[@]}" >/dev/null
    kill -INT "$spid"
    wait "$spid" 2>/dev/null || true
    kill "$dpid"
    wait "$dpid" 2>/dev/null || true
    total=$((connections * messages))
    echo "== $policy: system calls per message in the daemon ($total messages over $connections connections)"
    awk -v n="$total" '
        $1 ~ /^[0-9.]+$/ && NF >= 5 { if ($NF == "total") t = $4; else printf "   %-16s %8.2f\n", $NF, $4 / n }
        END { printf "   %-16s %8.2f\n", "all", t / n }' "$tmp/strace.$policy" | sort -k2 -n -r
done
