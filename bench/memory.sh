#!/usr/bin/env bash
# Memory of the release daemon, read from /proc/PID/status (VmRSS, and VmHWM
# for the peak since the daemon started), over loopback only:
#
#   1. concurrency: 1,000 connections with messages in flight (as
#      bench/concurrency.sh), peak RSS;
#   2. idle connections: RSS before and after N connections that negotiated
#      and sent CONNECT and HELO and then sit idle; (after - before) / N,
#      from RssAnon (VmRSS also counts the binary's pages); then the same
#      again, IDLE_ROUNDS times in all, to see the memory reused;
#   3. two 50 MiB messages: with the empty policy (the body is only
#      counted), with a `dkim` check (the body is kept up to max_body_size,
#      default 10M), the same with oversize_action = "tempfail", signed by
#      `dkim_sign` with the default limit and with max_body_size = "64M" (the
#      whole body kept and signed), and with both;
#   4. leak: LEAK_MESSAGES small messages through bench/shipped-mx.toml (no
#      DNS checks), RSS after 10,000 and after every LEAK_STEP messages.
#
# Run from the repository root after `cargo build --release`. Every figure
# comes from a fresh daemon, so VmHWM is the peak of that part alone.
# Parameters (environment): BIN, LOAD, PARTS ("concurrency idle big leak"),
# IDLE_CONNECTIONS ("1000 5000"), IDLE_HOLD, IDLE_ROUNDS, BIG_SIZE, LEAK_MESSAGES,
# LEAK_STEP, LEAK_CONNECTIONS. A quick run:
#   LEAK_MESSAGES=100000 LEAK_STEP=30000 bash bench/memory.sh
set -euo pipefail

bin=${BIN:-target/release/dispatch-milter}
load=${LOAD:-target/release/dispatch-milter-load}
parts=${PARTS:-concurrency idle big leak}
idle_connections=${IDLE_CONNECTIONS:-1000 5000}
idle_hold=${IDLE_HOLD:-15s}
idle_rounds=${IDLE_ROUNDS:-3}
big_size=${BIG_SIZE:-50M}
leak_messages=${LEAK_MESSAGES:-1000000}
leak_step=${LEAK_STEP:-100000}
leak_connections=${LEAK_CONNECTIONS:-10}
# Separate ports from the other benchmarks (7401, 7402), so a daemon left
# running from them is not measured by mistake.
port=7411
metrics_port=9411

# One descriptor per connection on both sides: 5,000 idle connections need
# more than the usual 1,024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 1; }
[ -x "$load" ] || { echo "no $load: run cargo build --release first" >&2; exit 1; }
tmp=$(mktemp -d)
pid=""
load_pid=""
cleanup() {
    # Only the processes this script started, by their id.
    [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

kb() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$pid/status"; }
rss() { kb VmRSS; }
hwm() { kb VmHWM; }
# The heap and stacks alone: VmRSS also counts the binary's pages, which
# the kernel may drop and read again when other processes need memory.
anon() { kb RssAnon; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# A config for this script: the listener on $port, metrics on
# $metrics_port, room for 6,000 connections, then the policy given.
config() {
    local file=$tmp/$1.toml
    cat > "$file" <<EOF
[server]
log_level = "warn"
max_connections = 6000
metrics_listen = "127.0.0.1:$metrics_port"
[[server.listen]]
address = "inet:127.0.0.1:$port"

$2
EOF
    echo "$file"
}

metric() {
    curl -sf "http://127.0.0.1:$metrics_port/metrics" |
        awk -v m="dispatch_milter_$1" '$1 == m {print $2; found = 1} END {if (!found) print 0}'
}

start() {
    "$bin" serve -c "$1" 2>>"$tmp/daemon.log" &
    pid=$!
    for _ in $(seq 100); do
        if curl -sf "http://127.0.0.1:$metrics_port/metrics" >/dev/null 2>&1; then
            return
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "the daemon did not start:" >&2
    cat "$tmp/daemon.log" >&2
    exit 1
}

stop() {
    kill "$pid"
    wait "$pid" || true
    pid=""
}

# load ARGS...: run the load generator against the daemon, JSON to stdout;
# any error is fatal (the figures would mean nothing).
load() {
    local out
    out=$("$load" --connect "inet:127.0.0.1:$port" --json "$@") || {
        echo "load $* failed: $out" >&2
        exit 1
    }
    echo "$out"
}

# A few messages so the runtime's worker threads and the allocator's
# arenas exist before the baseline is read.
warm_up() { load -n 4 -m 25 --corpus small >/dev/null; }

summary=()
note() {
    echo "$1"
    summary+=("$1")
}

empty_policy='[pipelines.empty]
auth_results = false'

if [[ " $parts " == *" concurrency "* ]]; then
    echo "== 1,000 concurrent connections, 10 typical messages each"
    start "$(config concurrency "$empty_policy")"
    idle=$(rss)
    r=$(load -n 1000 -m 10 --corpus typical)
    note "concurrency: $(jq -r '"\(.messages_completed) messages, \(.connections) connections, \(.messages_per_second | floor) msg/s, message p50/p99/max \(.latency_ms.message.p50 | floor)/\(.latency_ms.message.p99 | floor)/\(.latency_ms.message.max | floor) ms, errors \(.errors | length), refusals \(.replies | length)"' <<<"$r"); RSS idle $(mb "$idle") MB, peak $(mb "$(hwm)") MB"
    stop
fi

if [[ " $parts " == *" idle "* ]]; then
    for n in $idle_connections; do
        echo "== $n idle connections (negotiated, CONNECT, HELO)"
        start "$(config idle "$empty_policy")"
        warm_up
        before=$(rss)
        before_anon=$(anon)
        # Later rounds show whether the memory of the first is reused.
        for round in $(seq "$idle_rounds"); do
            "$load" --connect "inet:127.0.0.1:$port" -n "$n" -m 0 --hold "$idle_hold" \
                --json >"$tmp/idle.json" &
            load_pid=$!
            # The daemon counts a connection open once CONNECT is through;
            # HELO is the next round trip, so a second more and all are idle.
            for _ in $(seq 300); do
                [ "$(metric connections_open)" -ge "$n" ] && break
                sleep 0.1
            done
            open=$(metric connections_open)
            sleep 1
            after=$(rss)
            after_anon=$(anon)
            wait "$load_pid" || { echo "idle load failed: $(cat "$tmp/idle.json")" >&2; exit 1; }
            load_pid=""
            helos=$(jq '.latency_ms.helo.count' "$tmp/idle.json")
            errors=$(jq '.errors | length' "$tmp/idle.json")
            sleep 1
            closed=$(rss)
            closed_anon=$(anon)
            if [ "$round" = 1 ]; then
                note "idle: $n connections ($open open at the sample, $helos HELOs answered, errors $errors): RSS $(mb "$before") -> $(mb "$after") MB, anonymous $(mb "$before_anon") -> $(mb "$after_anon") MB: $(awk -v a="$after_anon" -v b="$before_anon" -v n="$n" 'BEGIN {printf "%.1f", (a - b) / n}') kB per idle connection; after they closed: RSS $(mb "$closed") MB, anonymous $(mb "$closed_anon") MB"
            elif [ "$round" = "$idle_rounds" ]; then
                note "idle: $n connections, round $round ($open open, errors $errors): RSS $(mb "$after") MB, anonymous $(mb "$after_anon") MB; after they closed: RSS $(mb "$closed") MB, anonymous $(mb "$closed_anon") MB; peak $(mb "$(hwm)") MB"
            fi
        done
        stop
    done
fi

# big NAME POLICY [LOAD ARGS...]: one fresh daemon, a warm-up, then two
# messages of $big_size one after the other (the second shows whether the
# memory of the first is reused).
big() {
    local name=$1 policy=$2
    shift 2
    start "$(config "$name" "$policy")"
    warm_up
    local base first second after r
    base=$(rss)
    r=$(load -n 1 -m 1 --message-size "$big_size" "$@")
    first=$(hwm)
    load -n 1 -m 1 --message-size "$big_size" "$@" >/dev/null
    second=$(hwm)
    after=$(rss)
    local outcome
    outcome=$(jq -r 'if (.replies | length) == 0 then "accepted" else (.replies | keys | join(", ")) end' <<<"$r")
    note "big $big_size, $name: $outcome in $(jq -r '.latency_ms.message.max | floor' <<<"$r") ms; RSS before $(mb "$base") MB, peak $(mb "$first") MB (+$(mb $((first - base))) MB), peak after a second one $(mb "$second") MB, RSS after $(mb "$after") MB"
    stop
}

if [[ " $parts " == *" big "* ]]; then
    echo "== one $big_size message"
    # The dkim_sign key must be private to its owner, or the loader refuses it.
    cp tests/keys/ed25519.pem "$tmp/ed25519.pem"
    chmod 600 "$tmp/ed25519.pem"
    big "empty policy (body counted, not kept)" "$empty_policy"
    big "dkim check, max_body_size 10M, truncate" '[checks.dkim]
kind = "dkim"
[pipelines.verify]
auth_results = false
checks = ["dkim"]'
    big "dkim check, max_body_size 10M, tempfail" '[checks.dkim]
kind = "dkim"
[pipelines.verify]
auth_results = false
oversize_action = "tempfail"
checks = ["dkim"]'
    big "dkim_sign, max_body_size 10M (truncate)" "[modifiers.sign]
kind = \"dkim_sign\"
keys = [{ domain = \"example.org\", selector = \"ed\", key = \"$tmp/ed25519.pem\" }]
[pipelines.out]
auth_results = false
modify = [\"sign\"]" --from alice@example.org
    big "dkim_sign, max_body_size 64M" "[modifiers.sign]
kind = \"dkim_sign\"
keys = [{ domain = \"example.org\", selector = \"ed\", key = \"$tmp/ed25519.pem\" }]
[pipelines.out]
auth_results = false
max_body_size = \"64M\"
modify = [\"sign\"]" --from alice@example.org
    big "dkim check and dkim_sign, max_body_size 64M" "[checks.dkim]
kind = \"dkim\"
[modifiers.sign]
kind = \"dkim_sign\"
keys = [{ domain = \"example.org\", selector = \"ed\", key = \"$tmp/ed25519.pem\" }]
[pipelines.out]
auth_results = false
max_body_size = \"64M\"
checks = [\"dkim\"]
modify = [\"sign\"]" --from alice@example.org
fi

if [[ " $parts " == *" leak "* ]]; then
    echo "== leak: $leak_messages small messages through the shipped MX config (no DNS checks)"
    # The shipped config with this script's ports, and its tables found from
    # here rather than from the config file's directory.
    leak_cfg=$tmp/leak.toml
    sed -e "s|inet:127.0.0.1:7402|inet:127.0.0.1:$port|" \
        -e "s|\"\.\./contrib/|\"$PWD/contrib/|" \
        -e "s|^log_level = \"warn\"|log_level = \"warn\"\nmetrics_listen = \"127.0.0.1:$metrics_port\"|" \
        bench/shipped-mx.toml >"$leak_cfg"
    start "$leak_cfg"
    done_messages=0
    first_rss=""
    first_anon=""
    target=10000
    started=$(date +%s)
    while [ "$done_messages" -lt "$leak_messages" ]; do
        [ "$target" -gt "$leak_messages" ] && target=$leak_messages
        per=$(((target - done_messages) / leak_connections))
        [ "$per" -lt 1 ] && per=1
        r=$(load -n "$leak_connections" -m "$per" --corpus small)
        completed=$(jq '.messages_completed' <<<"$r")
        [ "$completed" -eq $((per * leak_connections)) ] || {
            echo "only $completed of $((per * leak_connections)) messages completed: $r" >&2
            exit 1
        }
        done_messages=$((done_messages + completed))
        now=$(rss)
        now_anon=$(anon)
        [ -z "$first_rss" ] && first_rss=$now && first_anon=$now_anon
        echo "  $done_messages messages: RSS $(mb "$now") MB (anonymous $(mb "$now_anon") MB), peak $(mb "$(hwm)") MB, $(jq -r '.messages_per_second | floor' <<<"$r") msg/s, refusals: $(jq -c '.replies' <<<"$r")"
        target=$(((done_messages / leak_step + 1) * leak_step))
    done
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
    note "leak: RSS after 10000 messages $(mb "$first_rss") MB, after $done_messages $(mb "$now") MB (ratio $(ratio "$now" "$first_rss")); anonymous $(mb "$first_anon") -> $(mb "$now_anon") MB (ratio $(ratio "$now_anon" "$first_anon")); peak $(mb "$(hwm)") MB, $(($(date +%s) - started)) s"
    stop
fi

echo
echo "== summary ($(nproc) cores, $(uname -r))"
printf '%s\n' "${summary[@]}"
