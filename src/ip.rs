//! IP addresses as the checks and the dispatch tree compare them.

use std::net::IpAddr;

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is the IPv4 client it
/// stands for: it matches IPv4 networks and is looked up as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;
    use std::net::IpAddr;

    #[test]
    fn mapped_addresses_are_ipv4_and_others_stay() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(canonical(ip("::ffff:192.0.2.10")), ip("192.0.2.10"));
        assert_eq!(canonical(ip("192.0.2.10")), ip("192.0.2.10"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
        // IPv4-compatible (deprecated) is not mapped.
        assert_eq!(canonical(ip("::192.0.2.10")), ip("::192.0.2.10"));
    }
}
