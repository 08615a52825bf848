#!/usr/bin/env bash
# Instructions per message in the daemon, counted by callgrind (section 5 of
# docs/benchmarks.md). Wall-clock figures on this shared machine vary by a
# third within the hour; instruction counts repeat to a few per cent, so
# this is the figure to compare before and after a change.
#
# Builds nothing: run it after
#   CARGO_TARGET_DIR=/work/target-prof CARGO_PROFILE_RELEASE_DEBUG=true \
#     cargo build --release --bins --test bench
# For each policy (empty, MX checks against the test zones on a loopback DNS
# server) it starts the daemon under callgrind, warms it up, counts 2,000
# typical messages over 10 connections, and prints Ir per message, the
# load generator's own figures, and the 25 costliest functions (inclusive).
# The load generator runs uninstrumented. Also prints the load generator's
# instructions per message (it shares the machine's two cores with the
# daemon in the throughput runs).
#
# Parameters (environment): TARGET (/work/target-prof), POLICIES
# ("empty mx"), MESSAGES (200 per connection), CONNECTIONS (10; with
# MESSAGES=1, one message per connection as behind Postfix), OUT (a directory to keep the
# callgrind files in; a temporary one otherwise), MESSAGE (a message file
# to send instead of the typical corpus message, e.g. one DKIM-signed with
# tests/keys/rsa2048-pkcs1.pem as in2026._domainkey.example.org, a key the
# benchmark DNS serves).
set -euo pipefail

target=${TARGET:-/work/target-prof}
policies=${POLICIES:-empty mx}
messages=${MESSAGES:-200}
connections=${CONNECTIONS:-10}
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
source "$(dirname "$0")/lib.sh"
out=${OUT:-$tmp}
mkdir -p "$out"

# The instruction total of a callgrind file (read whole: an early exit would
# break the pipe, and pipefail would end the script).
program_total() {
    callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n {gsub(",", "", $1); print $1; n = 1}'
}

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
    valgrind --tool=callgrind --dump-instr=no --separate-threads=no \
        --callgrind-out-file="$out/callgrind.$policy" \
        "$bin" serve -c "$config" --nameserver "$dns" 2>"$tmp/valgrind.$policy" &
    vpid=$!
    pids+=($vpid)
    wait_for_milter "$load" "$port"
    "$load" --connect "inet:127.0.0.1:$port" -n 10 -m 20 "${load_args[@]}" >/dev/null
    callgrind_control -z "$vpid" >/dev/null 2>&1
    "$load" --connect "inet:127.0.0.1:$port" -n "$connections" -m "$messages" "${load_args[@]}" \
        >"$tmp/load.$policy"
    callgrind_control -d "$vpid" >/dev/null 2>&1
    kill "$vpid"
    wait "$vpid" 2>/dev/null || true
    total=$((connections * messages))
    # The dump asked for above is numbered .1; the file without a number is
    # what the daemon did after it (shutting down).
    dump=$out/callgrind.$policy.1
    ir=$(program_total "$dump")
    echo "== $policy: $((ir / total)) Ir per message in the daemon ($total messages)"
    grep -E "messages/s|errors|replies" "$tmp/load.$policy" || true
    callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '/file:function/,$p' | sed -n 2,26p || true
    # The load generator itself, uninstrumented daemon: what it costs per message.
    "$bin" serve -c "$config" --nameserver "$dns" 2>/dev/null &
    dpid=$!
    pids+=($dpid)
    wait_for_milter "$load" "$port"
    valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out/callgrind.load.$policy" \
        "$load" --connect "inet:127.0.0.1:$port" -n "$connections" -m "$messages" "${load_args[@]}" \
        >/dev/null 2>&1
    kill "$dpid"
    wait "$dpid" 2>/dev/null || true
    lir=$(program_total "$out/callgrind.load.$policy")
    echo "   load generator: $((lir / total)) Ir per message (corpus building included)"
done
