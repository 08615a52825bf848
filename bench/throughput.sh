#!/usr/bin/env bash
# Milter-only throughput (docs/benchmarks.md section 1), as separate
# processes: the release daemon with the empty policy (bench/empty.toml,
# port 7401) and with the MX checks (bench/mx-checks.toml, port 7403, DNS
# from the test zones on a loopback server), and the load generator,
# alternating ROUNDS times so both policies see the same machine.
#
# For each run it prints messages per second and the daemon's own CPU time
# per message (user + system, from /proc/PID/stat). On this shared 2-core
# machine the wall-clock figure moves with the neighbours; the CPU time per
# message, and the ratio MX / empty within one round, move much less.
#
# Run from the repository root after
#   cargo build --release --bins --test bench
# Parameters (environment): TARGET (target), ROUNDS (3), CONNECTIONS (10),
# MESSAGES (1000 per connection), CORPUS (typical), LOAD (the load
# generator binary; default: dispatch-milter-load of TARGET).
set -euo pipefail

target=${TARGET:-target}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-10}
messages=${MESSAGES:-1000}
corpus=${CORPUS:-typical}
source "$(dirname "$0")/lib.sh"
# The load generator is $load (lib.sh): set LOAD to use another build of
# it, the same generator against two daemons.

declare -A pid_of port_of
port_of[empty]=7401
port_of[mx]=7403
"$bin" serve -c bench/empty.toml 2>"$tmp/empty.log" &
pid_of[empty]=$!
pids+=($!)
"$bin" serve -c bench/mx-checks.toml --nameserver "$dns" 2>"$tmp/mx.log" &
pid_of[mx]=$!
pids+=($!)

load_args=(-n "$connections" --corpus "$corpus" --tls
    --from alice@example.org --to bob@example.net
    --client-ip 192.0.2.22 --helo mail2.example.org)
for policy in empty mx; do
    wait_for_milter "$load" "${port_of[$policy]}"
    # Warm up: DNS cache, allocator, connections' first messages.
    "$load" --connect "inet:127.0.0.1:${port_of[$policy]}" "${load_args[@]}" -m 50 >/dev/null
done

# utime + stime of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
total=$((connections * messages))

printf '%-6s %-6s %12s %18s %s\n' round policy "msg/s" "daemon us/msg" "replies+errors"
for round in $(seq "$rounds"); do
    for policy in empty mx; do
        pid=${pid_of[$policy]}
        before=$(ticks "$pid")
        "$load" --connect "inet:127.0.0.1:${port_of[$policy]}" "${load_args[@]}" -m "$messages" --json \
            >"$tmp/run.json"
        after=$(ticks "$pid")
        rate=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["messages_per_second"]))' "$tmp/run.json")
        replies=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(r["replies"].values()) + sum(r["errors"].values()))' "$tmp/run.json")
        us=$(( (after - before) * 1000000 / hz / total ))
        printf '%-6s %-6s %12s %18s %s\n' "$round" "$policy" "$rate" "$us" "$replies"
    done
done
