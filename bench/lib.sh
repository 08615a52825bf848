# Shared by bench/profile.sh and bench/throughput.sh (sourced, not run):
# the benchmark binaries, a temporary directory cleaned up on exit with the
# processes started, the loopback DNS server with the test zones, and
# waiting for a daemon to answer.
#
# Before sourcing, set `target` (a cargo target directory with a release
# build of the binaries and the bench test target).

bin=$target/release/dispatch-milter
[ -x "$bin" ] || { echo "no $bin: build the release binaries and tests first (see the top of the script)" >&2; exit 1; }
# The load generator (bench/load), built with the workspace.
load=${LOAD:-$target/release/dispatch-milter-load}
[ -x "$load" ] || { echo "no $load: build the release binaries first (see the top of the script)" >&2; exit 1; }
bench=$(ls -t "$target"/release/deps/bench-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -x "$bench" ] || { echo "no benchmark test binary under $target/release: build with --test bench" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    touch "$tmp/dns.stop"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# The test zones on a loopback DNS server (the ignored test
# serve_dns_for_profiling), its address in $dns.
DISPATCH_BENCH_DNS_ADDR=$tmp/dns.addr DISPATCH_BENCH_DNS_STOP=$tmp/dns.stop \
    "$bench" --ignored --exact daemon::serve_dns_for_profiling >"$tmp/dns.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/dns.addr" ] && break; sleep 0.1; done
dns=$(cat "$tmp/dns.addr")

# wait_for_milter LOAD_BIN PORT: until the daemon on 127.0.0.1:PORT takes a
# message (up to 60 s: a daemon under valgrind starts slowly).
wait_for_milter() {
    for _ in $(seq 300); do
        "$1" --connect "inet:127.0.0.1:$2" -n 1 -m 1 >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the daemon on port $2 did not answer" >&2
    return 1
}
