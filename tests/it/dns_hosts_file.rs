//! DNS checks ask DNS only: a name or address that only `/etc/hosts` knows
//! is not seen through the daemon's resolver, also when `[dns] nameservers`
//! points at a server. Every check's lookups go through `dns::Dns`, so the
//! seam is what is tested, against a loopback DNS server that serves none
//! of the host's entries.
//!
//! hickory answers `localhost` and 127.0.0.0/8 by RFC 6761 whatever the
//! hosts file says (and so would any DNS server), so those pairs prove
//! nothing here; the test uses the file's other entries. Debian's default
//! file has `ip6-localhost`, `ip6-allnodes` and the host's own name.

use crate::common;

use common::dns_server::DnsServer;
use dispatch_milter::dns::{Dns, DnsError, DnsSettings};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// (address, name) pairs of /etc/hosts, names lowercased without a final dot.
fn hosts_entries() -> Vec<(IpAddr, String)> {
    let text = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in fields {
            out.push((ip, name.trim_end_matches('.').to_ascii_lowercase()));
        }
    }
    out
}

/// Names that RFC 6761 (or hickory's special-use table) answers without
/// DNS or the hosts file.
fn special_name(name: &str) -> bool {
    ["localhost", "local", "invalid", "onion"]
        .iter()
        .any(|zone| name == *zone || name.ends_with(&format!(".{zone}")))
}

/// Addresses whose PTR hickory answers itself (`localhost`).
fn special_address(ip: IpAddr) -> bool {
    ip.is_loopback()
}

#[tokio::test]
async fn names_and_addresses_only_in_etc_hosts_are_not_seen() {
    let server = DnsServer::start().await;
    server.add_a("mail.example.org", Ipv4Addr::new(192, 0, 2, 25));
    let dns = Dns::new(&DnsSettings {
        nameservers: Some(vec![server.addr()]),
        timeout: Duration::from_secs(2),
        attempts: 1,
        ..DnsSettings::default()
    })
    .expect("resolver");

    // The resolver does ask the server.
    assert_eq!(
        dns.ipv4("mail.example.org").await,
        Ok(vec![Ipv4Addr::new(192, 0, 2, 25)])
    );

    let entries = hosts_entries();
    let forward: Vec<&(IpAddr, String)> = entries
        .iter()
        .filter(|(_, name)| !special_name(name))
        .collect();
    assert!(
        !forward.is_empty(),
        "/etc/hosts names nothing but localhost, so this host cannot show the difference: {entries:?}"
    );
    for (ip, name) in &forward {
        // The server has no such name: NXDOMAIN, whatever the file says.
        let answer = match ip {
            IpAddr::V4(_) => dns
                .ipv4(name)
                .await
                .map(|v| v.into_iter().map(IpAddr::V4).collect::<Vec<_>>()),
            IpAddr::V6(_) => dns
                .ipv6(name)
                .await
                .map(|v| v.into_iter().map(IpAddr::V6).collect()),
        };
        assert_eq!(
            answer,
            Err(DnsError::NotFound),
            "{name} is in /etc/hosts as {ip}, not in DNS"
        );
    }

    // Reverse: the PTR answer never names a host that only the file pairs
    // with the address. For loopback addresses the answer is `localhost`,
    // from RFC 6761, and nothing else (iprev of a client on 127.0.0.1).
    for (ip, name) in &entries {
        let answer = dns.ptr(*ip).await;
        if special_address(*ip) {
            assert_eq!(answer, Ok(vec!["localhost".to_string()]), "PTR of {ip}");
        } else {
            assert_eq!(answer, Err(DnsError::NotFound), "PTR of {ip} ({name})");
        }
    }
}
