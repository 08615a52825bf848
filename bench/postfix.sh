#!/usr/bin/env bash
# Throughput behind Postfix: smtp-source through a throwaway Postfix with no
# milter, dispatch-milter (empty policy, MX checks, submission signing) and
# OpenDKIM signing, side by side. The benchmark itself is the ignored test
# tests/bench/postfix.rs: it needs the loopback DNS server of the test
# suite (tests/common/dns_server.rs) for the MX checks and the Postfix
# harness of the end-to-end tests (tests/common/postfix.rs), which tear
# everything down even when a run fails. This script only checks what the
# test needs and runs it in release mode. Run from the repository root, as
# root (Postfix's master must start as root).
#
# Environment: PFBENCH_SESSIONS (20), PFBENCH_MESSAGES (5000), PFBENCH_WARMUP
# (200), PFBENCH_ROUNDS (3), PFBENCH_ONLY (e.g. "none,empty"), PFBENCH_CUSTOM
# (policy files, comma-separated), PFBENCH_QUEUE_BASE (/dev/shm); see the test.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/postfix.sh: run as root (Postfix's master must start as root)" >&2
    exit 1
fi
missing=()
for tool in /usr/sbin/postfix /usr/sbin/smtp-source /usr/sbin/opendkim /usr/bin/swaks; do
    [[ -x $tool ]] || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "bench/postfix.sh: missing ${missing[*]}" >&2
    echo "  apt-get install postfix swaks opendkim opendkim-tools" >&2
    exit 1
fi

exec cargo test --release --test bench postfix:: -- --nocapture
