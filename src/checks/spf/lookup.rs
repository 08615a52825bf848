//! viaspf's `Lookup` over our one DNS seam: every SPF query goes through
//! the shared resolver, its cache and its timeouts (`Dns`), and nothing
//! else here knows a resolver.
//!
//! Names arrive as viaspf builds them from a record (length-checked, any
//! visible character in a label, RFC 7208 §4.6.1) and are turned into query
//! names label by label, so `a:foo:bar/baz.example.com` asks for exactly
//! that name. Answers go back the same way: an MX or PTR target is handed
//! on as its labels, not as escaped presentation text.

use crate::dns::{Dns, DnsError, name_from_labels};
use async_trait::async_trait;
use hickory_resolver::proto::rr::{Name as DnsName, RData, RecordType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use viaspf::lookup::{Lookup, LookupError, LookupResult, Name};

pub struct SpfLookup<'d> {
    pub dns: &'d Dns,
}

/// "No such record" is an answer (a void lookup, RFC 7208 §4.6.4); any
/// other failure is a DNS error, which viaspf turns into `temperror`
/// (§2.6.6, §5: "If a DNS error occurs ... temperror").
fn lookup_error(e: DnsError) -> LookupError {
    match e {
        DnsError::NotFound => LookupError::NoRecords,
        DnsError::Temporary(reason) => LookupError::Dns(Some(reason.into())),
    }
}

/// A name from a reply in the form viaspf takes (labels joined by dots,
/// no escapes). `None` for the root (a null MX, RFC 7505, names no host)
/// and for names whose labels hold a dot or are not UTF-8, which no SPF
/// comparison could match.
fn spf_name(name: &DnsName) -> Option<Name> {
    let mut text = String::new();
    for label in name.iter() {
        let label = std::str::from_utf8(label).ok()?;
        if label.contains('.') {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.push_str(label);
    }
    if text.is_empty() {
        return None;
    }
    Name::new(&text).ok()
}

impl SpfLookup<'_> {
    async fn records(&self, name: &Name, rtype: RecordType) -> LookupResult<Vec<RData>> {
        // viaspf has checked the lengths already; a name that still cannot
        // be a DNS name (an empty label) does not exist.
        let Some(query) = name_from_labels(name.as_str()) else {
            return Err(LookupError::NoRecords);
        };
        self.dns
            .records_of_type(query, rtype)
            .await
            .map_err(lookup_error)
    }
}

#[async_trait]
impl Lookup for SpfLookup<'_> {
    async fn lookup_a<'lookup, 'a>(&'lookup self, name: &'a Name) -> LookupResult<Vec<Ipv4Addr>> {
        let found = self.records(name, RecordType::A).await?;
        Ok(found
            .iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    async fn lookup_aaaa<'lookup, 'a>(
        &'lookup self,
        name: &'a Name,
    ) -> LookupResult<Vec<Ipv6Addr>> {
        let found = self.records(name, RecordType::AAAA).await?;
        Ok(found
            .iter()
            .filter_map(|d| match d {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// Exchanges in preference order (RFC 7208 §5.4 does not require an
    /// order, but the first ten are the ones looked at, §4.6.4).
    async fn lookup_mx<'lookup, 'a>(&'lookup self, name: &'a Name) -> LookupResult<Vec<Name>> {
        let found = self.records(name, RecordType::MX).await?;
        let mut mx: Vec<(u16, &DnsName)> = found
            .iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some((m.preference, &m.exchange)),
                _ => None,
            })
            .collect();
        mx.sort_by_key(|(preference, _)| *preference);
        Ok(mx.into_iter().filter_map(|(_, n)| spf_name(n)).collect())
    }

    /// Each record's strings joined without a separator (RFC 7208 §3.3);
    /// bytes that are not UTF-8 become U+FFFD, which no SPF record or
    /// explanation may hold (§4.5, §6.2), so such a record stays invalid.
    async fn lookup_txt<'lookup, 'a>(&'lookup self, name: &'a Name) -> LookupResult<Vec<String>> {
        let found = self.records(name, RecordType::TXT).await?;
        Ok(found
            .iter()
            .filter_map(|d| match d {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    async fn lookup_ptr<'lookup>(&'lookup self, ip: IpAddr) -> LookupResult<Vec<Name>> {
        let found = self
            .dns
            .records_of_type(DnsName::from(ip), RecordType::PTR)
            .await
            .map_err(lookup_error)?;
        Ok(found
            .iter()
            .filter_map(|d| match d {
                RData::PTR(p) => spf_name(&p.0),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_names_keep_their_labels_and_lose_the_root() {
        let name = DnsName::from_labels(["foo:bar/baz".as_bytes(), b"example", b"com"]).unwrap();
        assert_eq!(
            spf_name(&name).map(|n| n.as_str().to_string()).as_deref(),
            Some("foo:bar/baz.example.com.")
        );
        assert!(spf_name(&DnsName::root()).is_none(), "null MX");
        let dotted = DnsName::from_labels([b"a.b".as_slice(), b"example"]).unwrap();
        assert!(spf_name(&dotted).is_none());
    }

    #[test]
    fn query_names_are_built_label_by_label() {
        let n = name_from_labels("foo:bar/baz.example.com.").unwrap();
        assert_eq!(n.num_labels(), 3);
        assert!(n.is_fqdn());
        assert!(name_from_labels("a..example.com").is_none());
        assert!(name_from_labels(&format!("{}.com", "a".repeat(64))).is_none());
        assert!(name_from_labels("").is_none());
    }
}
