//! check_host() (RFC 7208 §4 to §7) over our one DNS seam: every query
//! goes through `Dns` (the shared resolver, its cache and timeouts).
//!
//! Everything a hostile record or client can make us do is bounded: 10
//! DNS-querying terms and 2 void lookups per evaluation (§4.6.4, which also
//! bounds include and redirect depth), 10 MX and 10 PTR names per term,
//! domain names cut to 253 octets (§7.3) while they are expanded, and
//! explanations to `MAX_EXPLANATION` octets. `%{p}`, which §4.6.4 does not
//! count, costs one PTR and at most 10 address queries per evaluation
//! however many times a record and its explanation use it.

use super::record::{
    Context, DualCidr, Letter, MacroString, Mechanism, Qualifier, Record, Segment, is_spf_record,
    parse_macro_string, parse_record,
};
use crate::auth_results::Status;
use crate::dns::{Dns, DnsError, name_from_labels};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// §4.6.4: DNS-querying terms per evaluation.
const MAX_DNS_TERMS: u32 = 10;
/// §4.6.4: lookups answered with no records (NODATA or NXDOMAIN).
const MAX_VOID_LOOKUPS: u32 = 2;
/// §4.6.4: MX names an `mx` may look up; more is a permerror.
const MAX_MX_NAMES: usize = 10;
/// §4.6.4: PTR names a `ptr` or `%{p}` looks at; the rest are ignored.
const MAX_PTR_NAMES: usize = 10;
/// §7.3: longest domain name built by macro expansion.
const MAX_DOMAIN: usize = 253;
/// Longest expanded explanation kept (only its start is ever shown).
pub const MAX_EXPLANATION: usize = 1000;

/// The inputs of check_host() (§4.1) and the receiver (`%{r}`).
pub struct Params<'a> {
    /// Already canonical: an IPv4-mapped IPv6 address is IPv4.
    pub ip: IpAddr,
    /// The <sender>'s local part ("postmaster" when it had none, §4.3).
    pub local: &'a str,
    /// The <sender>'s domain.
    pub sender_domain: &'a str,
    pub helo: &'a str,
    pub receiver: &'a str,
}

/// How an evaluation ended, when it did not end in an error.
#[derive(Debug)]
pub struct Finished {
    pub result: Status,
    /// The mechanism that matched, "default" when none did (§9.1).
    pub mechanism: Option<String>,
    pub explanation: Option<String>,
}

/// §2.6.6, §2.6.7: why an evaluation ended in an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    Temporary(String),
    Permanent(String),
}

type Evaluated = Result<Finished, Failed>;

struct Evaluation<'a> {
    dns: &'a Dns,
    params: &'a Params<'a>,
    dns_terms: u32,
    voids: u32,
    /// The client's validated names for `%{p}`, looked up once per
    /// evaluation: a record or explanation may hold any number of `%{p}`
    /// macros, and each would otherwise cost a PTR and up to 10 address
    /// queries that no limit of §4.6.4 counts.
    p_names: tokio::sync::OnceCell<Vec<String>>,
}

/// An owned domain name as the RFC builds it: text, no trailing dot.
fn without_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// A name from a DNS reply as text (labels joined by dots, no escapes);
/// `None` for the root (a null MX, RFC 7505) and for labels that hold a
/// dot or anything but printable ASCII, which no SPF comparison could match.
fn reply_name(name: &Name) -> Option<String> {
    let mut text = String::new();
    for label in name.iter() {
        // A host name is printable ASCII; a label with a dot, a control
        // character or 8-bit octets in it names nothing we could look up
        // or compare.
        if label.contains(&b'.') || !label.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        let label = std::str::from_utf8(label).ok()?;
        if !text.is_empty() {
            text.push('.');
        }
        text.push_str(label);
    }
    (!text.is_empty()).then_some(text)
}

/// §4.3: a domain that check_host() can evaluate: a multi-label name of
/// 1-63-octet labels, at most 253 octets, letters, digits, `-` and `_`,
/// whose top label is not all digits. Anything else is `none` at once.
pub fn is_checkable_domain(domain: &str) -> bool {
    let domain = without_dot(domain);
    let labels: Vec<&str> = domain.split('.').collect();
    domain.len() <= MAX_DOMAIN
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && labels
            .last()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
}

/// The address as `%{i}` writes it (§7.3): dotted quad, or 32 dotted
/// nibbles.
fn ip_macro(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .flat_map(|b| [b >> 4, b & 0x0f])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// §7.3: URL-escape everything outside the unreserved set.
fn url_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// §7.3 transformers: split at the delimiters, maybe reverse, keep the
/// right-hand parts, join with dots.
fn transform(value: &str, keep: Option<u32>, reverse: bool, delimiters: &str) -> String {
    let delimiters = if delimiters.is_empty() {
        "."
    } else {
        delimiters
    };
    let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
    if reverse {
        parts.reverse();
    }
    let keep = keep.map_or(parts.len(), |k| usize::try_from(k).unwrap_or(usize::MAX));
    let skip = parts.len().saturating_sub(keep);
    parts[skip..].join(".")
}

/// §7.3: a name over 253 octets loses labels on its left until it fits.
fn truncate_left(name: &str) -> &str {
    let mut name = name;
    while name.len() > MAX_DOMAIN {
        match name.split_once('.') {
            Some((_, rest)) => name = rest,
            None => return "",
        }
    }
    name
}

/// Compared as octets: names from DNS answers are not trusted to split on
/// character boundaries where `domain` would have them.
fn is_subdomain_or_equal(name: &str, domain: &str) -> bool {
    let (name, domain) = (without_dot(name).as_bytes(), without_dot(domain).as_bytes());
    match name.len().checked_sub(domain.len()) {
        Some(0) => name.eq_ignore_ascii_case(domain),
        Some(extra) => name[extra - 1] == b'.' && name[extra..].eq_ignore_ascii_case(domain),
        None => false,
    }
}

impl<'a> Evaluation<'a> {
    /// Records of a type at a name built by SPF. A name that cannot be a
    /// DNS name (empty label, label over 63 octets) does not exist: the
    /// RFC leaves that case open between "no match" and permerror (§4.8
    /// with §4.3 and §5); we take "no match", as for a name that exists
    /// nowhere, and never temperror.
    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, DnsError> {
        let Some(query) = name_from_labels(name) else {
            return Err(DnsError::NotFound);
        };
        self.dns.kept_records_of_type(name, query, rtype).await
    }

    /// Addresses of the client's family at `name` (§5: A for IPv4, AAAA
    /// for IPv6).
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let rtype = match self.params.ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::AAAA,
        };
        let found = self.query(name, rtype).await?;
        Ok(found
            .iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }

    /// Counts one DNS-querying term (§4.6.4).
    fn count_term(&mut self) -> Result<(), Failed> {
        self.dns_terms += 1;
        if self.dns_terms > MAX_DNS_TERMS {
            return Err(Failed::Permanent(format!(
                "more than {MAX_DNS_TERMS} DNS-querying terms"
            )));
        }
        Ok(())
    }

    /// Counts a void lookup (§4.6.4).
    fn count_void(&mut self) -> Result<(), Failed> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Failed::Permanent(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups"
            )));
        }
        Ok(())
    }

    /// §5: a DNS error (not "no such name") ends the evaluation.
    fn dns_failed(name: &str, e: String) -> Failed {
        Failed::Temporary(format!("DNS lookup of {name} failed: {e}"))
    }

    /// The validated names of the client (§5.5): PTR names (the first 10,
    /// §4.6.4) whose addresses include the client, those `wanted` accepts
    /// only. A failed lookup validates nothing and is no error (§5.5).
    async fn validated_names(&self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let Ok(found) = self
            .dns
            .records_of_type(Name::from(self.params.ip), RecordType::PTR)
            .await
        else {
            return Vec::new();
        };
        let names: Vec<String> = found
            .iter()
            .filter_map(|d| match d {
                RData::PTR(p) => reply_name(&p.0),
                _ => None,
            })
            .take(MAX_PTR_NAMES)
            .collect();
        let mut validated = Vec::new();
        for name in names.into_iter().filter(|n| wanted(n)) {
            if let Ok(addresses) = self.addresses(&name).await
                && addresses.contains(&self.params.ip)
            {
                validated.push(name);
            }
        }
        validated
    }

    /// `%{p}` (§7.3): the domain itself if validated, else a validated
    /// subdomain of it, else any validated name, else "unknown".
    async fn p_macro(&self, domain: &str) -> String {
        let names = self
            .p_names
            .get_or_init(|| self.validated_names(|_| true))
            .await;
        names
            .iter()
            .find(|n| without_dot(n).eq_ignore_ascii_case(without_dot(domain)))
            .or_else(|| names.iter().find(|n| is_subdomain_or_equal(n, domain)))
            .or_else(|| names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The value of one macro letter (§7.2, §7.3).
    async fn letter(&self, letter: Letter, domain: &str) -> String {
        let p = self.params;
        match letter {
            Letter::Sender => format!("{}@{}", p.local, p.sender_domain),
            Letter::Local => p.local.to_string(),
            Letter::SenderDomain => p.sender_domain.to_string(),
            Letter::Domain => domain.to_string(),
            Letter::Ip => ip_macro(p.ip),
            Letter::Validated => self.p_macro(domain).await,
            Letter::IpVersion => match p.ip {
                IpAddr::V4(_) => "in-addr".to_string(),
                IpAddr::V6(_) => "ip6".to_string(),
            },
            Letter::Helo => {
                if p.helo.is_empty() {
                    "unknown".to_string()
                } else {
                    p.helo.to_string()
                }
            }
            Letter::ClientIp => p.ip.to_string(),
            Letter::Receiver => p.receiver.to_string(),
            Letter::Timestamp => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
        }
    }

    async fn segment(&self, segment: &Segment, domain: &str) -> String {
        match segment {
            Segment::Literal(text) => text.clone(),
            Segment::Macro {
                letter,
                escape,
                keep,
                reverse,
                delimiters,
            } => {
                let value = self.letter(*letter, domain).await;
                let value = transform(&value, *keep, *reverse, delimiters);
                if *escape { url_escape(&value) } else { value }
            }
        }
    }

    /// Expands a domain-spec into a target name (§4.8, §7.3). Built from
    /// the right, so a hostile spec of thousands of macros stops being
    /// expanded once the name is longer than a DNS name can be; the left
    /// side is then cut at label boundaries.
    async fn target(&self, spec: &MacroString, domain: &str) -> String {
        let mut pieces: Vec<String> = Vec::new();
        let mut len = 0;
        for segment in spec.0.iter().rev() {
            let piece = self.segment(segment, domain).await;
            len += piece.len();
            pieces.push(piece);
            if len > MAX_DOMAIN + 1 {
                break;
            }
        }
        pieces.reverse();
        let name = pieces.concat();
        let name = without_dot(&name);
        truncate_left(name).to_string()
    }

    /// An explanation string expanded (§6.2), at most `MAX_EXPLANATION`
    /// octets.
    async fn explain(&self, text: &MacroString, domain: &str) -> String {
        let mut out = String::new();
        for segment in &text.0 {
            out.push_str(&self.segment(segment, domain).await);
            if out.len() >= MAX_EXPLANATION {
                let mut end = MAX_EXPLANATION;
                while !out.is_char_boundary(end) {
                    end -= 1;
                }
                out.truncate(end);
                break;
            }
        }
        out
    }

    /// §6.2: the explanation of a `fail`, or None when there is any
    /// problem with it (DNS, not exactly one TXT record, bad syntax, not
    /// ASCII). Its lookup counts toward no limit.
    async fn explanation(&self, spec: &MacroString, domain: &str) -> Option<String> {
        let name = self.target(spec, domain).await;
        let found = self.query(&name, RecordType::TXT).await.ok()?;
        let texts: Vec<String> = found
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
            .collect();
        let [text] = texts.as_slice() else {
            return None;
        };
        let parsed = parse_macro_string(text, Context::Explanation).ok()?;
        Some(self.explain(&parsed, domain).await)
    }

    /// §4.4, §4.5: the one SPF record of `domain`; Ok(None) for none.
    async fn record(&self, domain: &str) -> Result<Option<Record>, Failed> {
        let found = match self.query(domain, RecordType::TXT).await {
            Ok(found) => found,
            Err(DnsError::NotFound) => return Ok(None),
            Err(DnsError::Temporary(e)) => return Err(Self::dns_failed(domain, e)),
        };
        let spf: Vec<String> = found
            .iter()
            .filter_map(|d| match d {
                RData::TXT(t) => {
                    // §3.3: the strings of a record are joined as they are.
                    let bytes: Vec<u8> =
                        t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                    // Selection looks at the version only; bytes after it
                    // that are not ASCII make the record invalid below.
                    is_spf_record(&String::from_utf8_lossy(&bytes[..bytes.len().min(7)]))
                        .then(|| String::from_utf8_lossy(&bytes).into_owned())
                }
                _ => None,
            })
            .collect();
        let text = match spf.as_slice() {
            [] => return Ok(None),
            [text] => text,
            _ => {
                return Err(Failed::Permanent(format!(
                    "more than one SPF record at {domain}"
                )));
            }
        };
        parse_record(text)
            .map(Some)
            .map_err(|e| Failed::Permanent(format!("invalid SPF record at {domain}: {e}")))
    }

    /// Whether one mechanism matches (§5); errors end the evaluation.
    async fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Result<bool, Failed> {
        if mechanism.queries_dns() {
            self.count_term()?;
        }
        let ip = self.params.ip;
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(in_network(ip, IpAddr::V4(*net), *len)),
            Mechanism::Ip6(net, len) => Ok(in_network(ip, IpAddr::V6(*net), *len)),
            Mechanism::Include(spec) => {
                let target = self.target(spec, domain).await;
                // §5.2: the included evaluation's own explanation is never
                // used.
                match self.check_host(target.clone(), false).await? {
                    Finished {
                        result: Status::Pass,
                        ..
                    } => Ok(true),
                    Finished {
                        result: Status::Fail | Status::Softfail | Status::Neutral,
                        ..
                    } => Ok(false),
                    _ => Err(Failed::Permanent(format!(
                        "no SPF record at included domain {target}"
                    ))),
                }
            }
            Mechanism::A(spec, lengths) => {
                let target = match spec {
                    Some(spec) => self.target(spec, domain).await,
                    None => domain.to_string(),
                };
                self.any_address_matches(&target, *lengths, true).await
            }
            Mechanism::Mx(spec, lengths) => {
                let target = match spec {
                    Some(spec) => self.target(spec, domain).await,
                    None => domain.to_string(),
                };
                let found = match self.query(&target, RecordType::MX).await {
                    Ok(found) => found,
                    Err(DnsError::NotFound) => {
                        self.count_void()?;
                        return Ok(false);
                    }
                    Err(DnsError::Temporary(e)) => return Err(Self::dns_failed(&target, e)),
                };
                let mut exchanges: Vec<(u16, Option<String>)> = found
                    .iter()
                    .filter_map(|d| match d {
                        RData::MX(m) => Some((m.preference, reply_name(&m.exchange))),
                        _ => None,
                    })
                    .collect();
                if exchanges.is_empty() {
                    self.count_void()?;
                    return Ok(false);
                }
                // §4.6.4: looking up more than 10 exchangers is a
                // permerror, before any of them is asked for.
                if exchanges.len() > MAX_MX_NAMES {
                    return Err(Failed::Permanent(format!(
                        "more than {MAX_MX_NAMES} MX names at {target}"
                    )));
                }
                exchanges.sort_by_key(|(preference, _)| *preference);
                // A null MX (RFC 7505) names no host: nothing to match.
                for (_, name) in exchanges {
                    if let Some(name) = name
                        && self.any_address_matches(&name, *lengths, false).await?
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let target = match spec {
                    Some(spec) => self.target(spec, domain).await,
                    None => domain.to_string(),
                };
                // §5.5: only names in the target domain can match, so only
                // those are validated. A PTR answer that is missing is not
                // counted as void: the client's reverse zone is not the
                // domain owner's to fix.
                let validated = self
                    .validated_names(|n| is_subdomain_or_equal(n, &target))
                    .await;
                Ok(!validated.is_empty())
            }
            Mechanism::Exists(spec) => {
                let target = self.target(spec, domain).await;
                // §5.7: always an A query, whatever the client's family.
                match self.query(&target, RecordType::A).await {
                    Ok(found) if found.iter().any(|d| matches!(d, RData::A(_))) => Ok(true),
                    Ok(_) | Err(DnsError::NotFound) => {
                        self.count_void()?;
                        Ok(false)
                    }
                    Err(DnsError::Temporary(e)) => Err(Self::dns_failed(&target, e)),
                }
            }
        }
    }

    /// §5.3, §5.4: whether an address of `name` holds the client. For `a`
    /// (`counts_void`) an empty answer is a void lookup; for an exchanger
    /// of `mx` the MX query was the term's lookup.
    async fn any_address_matches(
        &mut self,
        name: &str,
        lengths: DualCidr,
        counts_void: bool,
    ) -> Result<bool, Failed> {
        let ip = self.params.ip;
        match self.addresses(name).await {
            Ok(found) if !found.is_empty() => Ok(found.iter().any(|a| {
                let len = match a {
                    IpAddr::V4(_) => lengths.v4,
                    IpAddr::V6(_) => lengths.v6,
                };
                in_network(ip, *a, len)
            })),
            Ok(_) | Err(DnsError::NotFound) => {
                if counts_void {
                    self.count_void()?;
                }
                Ok(false)
            }
            Err(DnsError::Temporary(e)) => Err(Self::dns_failed(name, e)),
        }
    }

    /// check_host() for `domain` (§4). `explain`: whether a `fail` gets
    /// its `exp=` explanation (not inside an include, §5.2).
    fn check_host(
        &mut self,
        domain: String,
        explain: bool,
    ) -> Pin<Box<dyn Future<Output = Evaluated> + Send + '_>> {
        Box::pin(async move {
            let Some(record) = self.record(&domain).await? else {
                return Ok(Finished {
                    result: Status::None,
                    mechanism: None,
                    explanation: None,
                });
            };
            for directive in &record.directives {
                if self.matches(&directive.mechanism, &domain).await? {
                    let result = match directive.qualifier {
                        Qualifier::Pass => Status::Pass,
                        Qualifier::Fail => Status::Fail,
                        Qualifier::Softfail => Status::Softfail,
                        Qualifier::Neutral => Status::Neutral,
                    };
                    let explanation = match (&record.explanation, result, explain) {
                        (Some(spec), Status::Fail, true) => self.explanation(spec, &domain).await,
                        _ => None,
                    };
                    return Ok(Finished {
                        result,
                        mechanism: Some(directive.text.clone()),
                        explanation,
                    });
                }
            }
            // §6.1: redirect applies only when no mechanism matched; its
            // record's own exp= then applies, not this one's (§6.2).
            if let Some(spec) = &record.redirect {
                self.count_term()?;
                let target = self.target(spec, &domain).await;
                let finished = self.check_host(target.clone(), explain).await?;
                if finished.result == Status::None {
                    return Err(Failed::Permanent(format!(
                        "redirect target {target} has no SPF record"
                    )));
                }
                return Ok(finished);
            }
            // §4.7: no match, no redirect.
            Ok(Finished {
                result: Status::Neutral,
                mechanism: Some("default".to_string()),
                explanation: None,
            })
        })
    }
}

/// §5.6: the first `len` bits equal, same family only.
fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Evaluates the record of `domain` for `params` (§4); `domain` must be
/// checkable (`is_checkable_domain`).
pub async fn check_host(dns: &Dns, params: &Params<'_>, domain: &str) -> Evaluated {
    let mut evaluation = Evaluation {
        dns,
        params,
        dns_terms: 0,
        voids: 0,
        p_names: tokio::sync::OnceCell::new(),
    };
    evaluation
        .check_host(without_dot(domain).to_string(), true)
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn subdomains_compare_as_octets_whatever_the_reply_holds() {
        use super::is_subdomain_or_equal as sub;
        assert!(sub("mail.x.test.", "x.test"));
        assert!(sub("X.TEST", "x.test."));
        assert!(!sub("mailx.test", "x.test"));
        assert!(!sub("test", "x.test"));
        assert!(!sub("x.test", ""));
        // 8-bit octets where the split would fall inside a character.
        assert!(!sub("\u{e9}abcde", "x.test"));
        assert!(!sub("\u{e9}.x.tes", "x.test"));
        assert!(sub("\u{e9}.x.test", "x.test"));
    }

    use super::*;

    #[test]
    fn section_5_6_prefixes_of_every_length() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(in_network(ip, "198.51.100.1".parse().unwrap(), 0));
        assert!(in_network(ip, "192.0.2.200".parse().unwrap(), 24));
        assert!(!in_network(ip, "192.0.2.200".parse().unwrap(), 32));
        assert!(in_network(ip, "192.0.2.1".parse().unwrap(), 32));
        let ip6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(in_network(ip6, "::".parse().unwrap(), 0));
        assert!(!in_network(ip6, "2001:db8::2".parse().unwrap(), 128));
        assert!(
            !in_network(ip, "::".parse().unwrap(), 0),
            "no cross-family match"
        );
    }

    #[test]
    fn section_7_3_transformers() {
        assert_eq!(transform("a.b.c", None, false, ""), "a.b.c");
        assert_eq!(transform("a.b.c", Some(2), false, ""), "b.c");
        assert_eq!(transform("192.0.2.1", Some(2), true, ""), "0.192");
        assert_eq!(transform("a-b+c", None, true, "+-"), "c.b.a");
        assert_eq!(transform("a.b", Some(99), false, ""), "a.b");
        assert_eq!(url_escape("~a&b=c d"), "~a%26b%3Dc%20d");
        assert_eq!(
            ip_macro("2001:db8::cb01".parse().unwrap()),
            "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1"
        );
    }

    #[test]
    fn section_7_3_long_names_lose_labels_on_the_left() {
        let long = format!("{}.x.test", "abcdefghi.".repeat(30));
        let cut = truncate_left(long.trim_end_matches('.'));
        assert!(cut.len() <= 253 && cut.ends_with(".x.test"), "{cut}");
        assert!(!cut.starts_with('.'));
    }

    #[test]
    fn section_4_3_checkable_domains() {
        for good in ["x.test", "X.Test.", "_spf.x.test", "a-b.x.test"] {
            assert!(is_checkable_domain(good), "{good}");
        }
        for bad in [
            "",
            "localhost",
            "a..x.test",
            "[192.0.2.1]",
            "192.0.2.1",
            "x.test:25",
            "caf\u{e9}.test",
        ] {
            assert!(!is_checkable_domain(bad), "{bad}");
        }
        assert!(!is_checkable_domain(&format!("{}.test", "a".repeat(64))));
    }

    #[test]
    fn subdomains_are_by_labels() {
        assert!(is_subdomain_or_equal("mail.x.test", "x.test"));
        assert!(is_subdomain_or_equal("X.TEST.", "x.test"));
        assert!(!is_subdomain_or_equal("mailx.test", "x.test"));
        assert!(!is_subdomain_or_equal("test", "x.test"));
    }
}
