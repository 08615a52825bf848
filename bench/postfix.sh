#!/usr/bin/env bash
# Throughput behind Postfix: smtp-source through a throwaway Postfix with no
# milter, dispatch-milter (empty policy, MX checks over TCP and over a unix
# socket, submission signing) and the peers (rspamd's proxy milter over TCP
# and over a unix socket, OpenDKIM + OpenDMARC with Postfix's own RBL check,
# OpenDKIM signing), side by side. The benchmark itself is the ignored test
# tests/bench/postfix.rs: it needs the loopback DNS server of the test
# suite (tests/common/dns_server.rs) for the checks and the Postfix
# harness of the end-to-end tests (tests/common/postfix.rs), which tear
# everything down even when a run fails. This script only checks what the
# test needs and runs it in release mode. Run from the repository root, as
# root (Postfix's master must start as root; the DNS server listens on port
# 53 of a loopback address; the peers run in mount namespaces of their own).
#
# A peer that is not installed is skipped, and the run says so;
# `bash bench/install-peers.sh` installs them all.
#
# Environment: PFBENCH_SESSIONS (20), PFBENCH_MESSAGES (5000), PFBENCH_WARMUP
# (200), PFBENCH_ROUNDS (3), PFBENCH_ONLY (e.g. "none,mx,rspamd-tcp"),
# PFBENCH_CUSTOM (policy files, comma-separated), PFBENCH_QUEUE_BASE
# (/dev/shm); see the test and docs/benchmarks.md section 3.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/postfix.sh: run as root (Postfix's master must start as root)" >&2
    exit 1
fi
missing=()
for tool in /usr/sbin/postfix /usr/sbin/smtp-source /usr/bin/swaks /usr/bin/unshare; do
    [[ -x $tool ]] || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "bench/postfix.sh: missing ${missing[*]}" >&2
    echo "  bash bench/install-peers.sh (Postfix, swaks and the peers), or at least:" >&2
    echo "  apt-get install postfix swaks util-linux" >&2
    exit 1
fi
for peer in /usr/bin/rspamd /usr/sbin/opendkim /usr/sbin/opendmarc; do
    [[ -x $peer ]] || echo "bench/postfix.sh: $peer is not installed: its configurations are skipped (bash bench/install-peers.sh)" >&2
done

exec cargo test --release --test bench postfix:: -- --nocapture
