#!/usr/bin/env bash
# Installs what bench/postfix.sh needs, the peers included, from Debian's
# packages: Postfix (its load generator smtp-source comes with it), swaks,
# OpenDKIM (signing, and verifying in the opendkim+opendmarc peer),
# OpenDMARC and rspamd. The benchmark runs every peer from a throwaway
# configuration of its own and never uses the packaged services; Postfix is
# preseeded so that no system instance is configured. Run as root.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/install-peers.sh: run as root (apt-get install)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update
apt-get install -y --no-install-recommends \
    postfix swaks opendkim opendkim-tools opendmarc rspamd
# The packaged services are not what the benchmark measures, and a system
# Postfix must not run beside its instances. Where the package scripts did
# start them (a machine with an init system), they are stopped again.
/usr/sbin/postfix stop >/dev/null 2>&1 || true
for service in rspamd opendkim opendmarc; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    fi
done
