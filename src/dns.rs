//! The one DNS seam: a single hickory resolver (the one inside mail-auth's
//! authenticator, so mail-auth's DKIM and ARC lookups and our own, SPF and
//! DMARC included, share one cache),
//! configured from `[dns]` or overridden with `--nameserver`. Every lookup
//! the checks make goes through here, and every failure is classified once:
//! "no such record" is an answer, anything else is a temporary error.
//! `/etc/hosts` is never read: DNS checks see what DNS answers.
//!
//! Identical questions in flight share one query (hickory's name-server
//! pool joins them), and answers are kept for their TTL; "no such record"
//! for the negative TTL of the zone's SOA (RFC 2308 §5), and not at all
//! when the answer has no SOA, as that section asks. tests/it/dns_queries.rs
//! holds all three.

use crate::ttl_cache::TtlCache;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use mail_auth::MessageAuthenticator;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why each default is what it is.
pub mod defaults {
    use std::time::Duration;

    /// Per query, per try. Two tries (8 s) stay inside a check's default
    /// timeout (10 s) and the stage deadline (20 s) even when the first
    /// server does not answer.
    pub const TIMEOUT: Duration = Duration::from_secs(4);
    /// Tries in all, the first included.
    pub(crate) const ATTEMPTS: usize = 2;
    /// Answers kept in the shared cache; DNSBL and SPF lookups repeat a lot.
    pub const CACHE_SIZE: u64 = 10_000;
}

/// Parsed records (and "no such record") shared by every message until
/// their DNS TTL runs out, keyed by name as mail-auth spells it.
pub(crate) type SharedTxt = crate::ttl_cache::TtlCache<mail_auth::Txt>;

/// The compiled `[dns]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// `None`: the system's /etc/resolv.conf.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Per query, per try.
    pub timeout: Duration,
    /// Tries in all, the first included.
    pub attempts: usize,
    /// Answers kept in each cache.
    pub cache_size: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: None,
            timeout: defaults::TIMEOUT,
            attempts: defaults::ATTEMPTS,
            cache_size: defaults::CACHE_SIZE,
        }
    }
}

/// A lookup that did not produce records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN or no record of that type: a definite answer.
    NotFound,
    /// Timeout, SERVFAIL, REFUSED, a malformed answer, no server reachable:
    /// the answer is unknown, so the check says temperror.
    Temporary(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NotFound => f.write_str("no such record"),
            DnsError::Temporary(e) => write!(f, "DNS failure: {e}"),
        }
    }
}

fn classify(e: NetError) -> DnsError {
    if e.is_no_records_found() {
        DnsError::NotFound
    } else {
        DnsError::Temporary(e.to_string())
    }
}

/// Until when a lookup's outcome may be kept: its records' TTL, or for "no
/// such record" the negative TTL of the zone's SOA (RFC 2308). `None` for
/// failures, and negative answers without an SOA.
fn valid_until(
    lookup: &Result<hickory_resolver::lookup::Lookup, NetError>,
) -> Option<std::time::Instant> {
    match lookup {
        Ok(found) => Some(found.valid_until()),
        Err(e) => negative_until(e),
    }
}

/// Until when "no such record" holds: the negative TTL from the zone's SOA
/// (RFC 2308 §5). `None` for other errors and answers without an SOA.
fn negative_until(error: &NetError) -> Option<std::time::Instant> {
    match error {
        NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(none)) => none
            .negative_ttl
            .map(|ttl| std::time::Instant::now() + Duration::from_secs(u64::from(ttl))),
        _ => None,
    }
}

/// Keep an answer or "no such record" until `valid_until`; never a failure.
fn keep<T: Clone + Send + Sync + 'static>(
    table: &TtlCache<Result<Vec<T>, DnsError>>,
    key: &str,
    answer: &Result<Vec<T>, DnsError>,
    valid_until: Option<std::time::Instant>,
) {
    if let Some(until) = valid_until
        && matches!(answer, Ok(_) | Err(DnsError::NotFound))
    {
        table.put(key, answer.clone(), until);
    }
}

/// A TXT lookup's outcome with its lifetime (see [`Dns::txt_answer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxtAnswer {
    /// The records' strings, each record's strings joined.
    pub records: Result<Vec<Vec<u8>>, DnsError>,
    /// The records' TTL, or for "no such record" the negative TTL of the
    /// zone's SOA (RFC 2308 §5); `None` for failures and for negative
    /// answers without an SOA, which must not be kept.
    pub valid_until: Option<std::time::Instant>,
}

/// Why the resolver could not be set up.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DnsSetupError {
    /// No `[dns] nameservers`, and the system's resolver configuration
    /// cannot be read.
    #[error("cannot read /etc/resolv.conf: {0}; set [dns] nameservers")]
    SystemConfig(#[source] NetError),
    /// hickory refused the configuration.
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(#[source] NetError),
}

/// Builds the resolver the first time a check asks for it, so a policy
/// without DNS checks never needs /etc/resolv.conf.
pub struct DnsProvider {
    settings: DnsSettings,
    built: std::sync::OnceLock<Result<std::sync::Arc<Dns>, DnsSetupError>>,
}

impl DnsProvider {
    /// A provider that builds its resolver from `settings` when first asked.
    pub(crate) fn new(settings: DnsSettings) -> DnsProvider {
        DnsProvider {
            settings,
            built: std::sync::OnceLock::new(),
        }
    }

    /// The settings of the resolver, if a check has asked for it.
    pub(crate) fn settings_in_use(&self) -> Option<DnsSettings> {
        match self.built.get() {
            Some(Ok(dns)) => Some(dns.settings().clone()),
            _ => None,
        }
    }

    /// The shared resolver, built on first use; a failure is kept too, so
    /// every check that asks reports the same error.
    pub fn get(&self) -> Result<std::sync::Arc<Dns>, DnsSetupError> {
        self.built
            .get_or_init(|| Dns::new(&self.settings).map(std::sync::Arc::new))
            .clone()
    }
}

/// The shared resolver and the caches in front of it.
pub struct Dns {
    auth: MessageAuthenticator,
    settings: DnsSettings,
    /// DKIM keys as parsed, shared by every message for as long as their
    /// TTL allows (the resolver's cache keeps the answer, this keeps the
    /// parsing: an RSA key is parsed once per TTL, not once per message).
    parsed: SharedTxt,
    /// A answers (and "no such record") for their TTL; see `ipv4`.
    a_answers: TtlCache<Result<Vec<Ipv4Addr>, DnsError>>,
    /// PTR answers by address, the same way.
    ptr_answers: TtlCache<Result<Vec<String>, DnsError>>,
    /// TXT answers as text (DMARC's records), the same way: each message
    /// asks for `_dmarc` of its author domain and the levels above, and
    /// the resolver's own cache costs a name parse, a hash and a clone of
    /// the records per question (about 11k instructions, twice per message).
    txt_answers: TtlCache<Result<Vec<String>, DnsError>>,
    /// What SPF asks for (TXT at the sender's domain, then A, AAAA, MX of
    /// its mechanisms), by type and name, the same way.
    spf_answers: TtlCache<Result<Vec<RData>, DnsError>>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Dns {
    /// A resolver with these settings, its caches empty.
    pub fn new(settings: &DnsSettings) -> Result<Dns, DnsSetupError> {
        let mut opts = ResolverOpts::default();
        let config = match &settings.nameservers {
            Some(servers) => {
                let mut config = ResolverConfig::from_name_servers(Vec::new());
                for s in servers {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    config.add_name_server(ns);
                }
                config
            }
            None => {
                let (config, system_opts) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(DnsSetupError::SystemConfig)?;
                opts = system_opts;
                config
            }
        };
        opts.timeout = settings.timeout;
        // hickory counts retries after the first try; ours counts tries.
        opts.attempts = settings.attempts.saturating_sub(1);
        opts.cache_size = settings.cache_size;
        // Names we look up are absolute (DNSBL zones, sender domains): never
        // try them against the host's search list.
        opts.ndots = 0;
        // DNS checks ask DNS only. SPF, DKIM, DMARC, DNSBL and iprev are
        // defined by what DNS answers (RFC 7208 §5, RFC 8601 §2.7.3); an
        // /etc/hosts line would make them see records the rest of the world
        // does not, and hickory reads the file by default, also when
        // nameservers are given. (Its RFC 6761 answers for `localhost` and
        // 127.0.0.0/8 stay: no DNS server may answer those differently.)
        opts.use_hosts_file = ResolveHosts::Never;
        let auth = MessageAuthenticator::new(config, opts).map_err(DnsSetupError::Resolver)?;
        Ok(Dns {
            auth,
            settings: settings.clone(),
            parsed: SharedTxt::new(settings.cache_size),
            a_answers: TtlCache::new(settings.cache_size),
            ptr_answers: TtlCache::new(settings.cache_size),
            txt_answers: TtlCache::new(settings.cache_size),
            spf_answers: TtlCache::new(settings.cache_size),
        })
    }

    /// The settings the resolver was built with.
    pub(crate) fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// How many answers are kept in front of the resolver (see `ipv4`,
    /// `ptr`, `txt` and `kept_records_of_type`).
    pub fn kept_answers(&self) -> usize {
        self.a_answers.len()
            + self.ptr_answers.len()
            + self.txt_answers.len()
            + self.spf_answers.len()
    }

    /// Parsed TXT records shared between messages.
    pub fn parsed_txt(&self) -> &SharedTxt {
        &self.parsed
    }

    /// For what mail-auth still does: DKIM and ARC keys and signatures.
    pub(crate) fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    fn fqdn(name: &str) -> Result<Name, DnsError> {
        let absolute = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        // A name no server could hold (a label over 63 octets, an empty
        // label) has no records: asking would give NXDOMAIN, and calling it
        // temporary would let a hostile signature's key name turn a
        // DKIM or DMARC failure into a tempfail.
        Name::from_ascii(&absolute).map_err(|_| DnsError::NotFound)
    }

    /// The records of one lookup that `pick` understands; none is NotFound.
    fn records<T>(
        lookup: Result<hickory_resolver::lookup::Lookup, NetError>,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Result<Vec<T>, DnsError> {
        let lookup = lookup.map_err(classify)?;
        let found: Vec<T> = lookup
            .answers()
            .iter()
            .filter_map(|r| pick(&r.data))
            .collect();
        if found.is_empty() {
            Err(DnsError::NotFound)
        } else {
            Ok(found)
        }
    }

    /// A records. Answers and "no such record" are kept for their TTL in
    /// front of the resolver: DNSBL and iprev ask for the same names on
    /// every connection from a client.
    pub async fn ipv4(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        if let Some(answer) = self.a_answers.get(name) {
            return answer;
        }
        let lookup = self.auth.resolver().ipv4_lookup(Self::fqdn(name)?).await;
        let valid_until = valid_until(&lookup);
        let answer = Self::records(lookup, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        });
        keep(&self.a_answers, name, &answer, valid_until);
        answer
    }

    /// AAAA records, as [`Dns::ipv4`] does A records but without the
    /// cache in front.
    pub async fn ipv6(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        let lookup = self.auth.resolver().ipv6_lookup(Self::fqdn(name)?).await;
        Self::records(lookup, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
    }

    /// A and AAAA together, looked up in parallel.
    pub(crate) async fn ips(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let (v4, v6) = tokio::join!(self.ipv4(name), self.ipv6(name));
        let mut out: Vec<IpAddr> = Vec::new();
        let mut temporary = None;
        for r in [
            v4.map(|v| v.into_iter().map(IpAddr::V4).collect::<Vec<_>>()),
            v6.map(|v| v.into_iter().map(IpAddr::V6).collect()),
        ] {
            match r {
                Ok(list) => out.extend(list),
                Err(DnsError::NotFound) => {}
                Err(e) => temporary = Some(e),
            }
        }
        match (out.is_empty(), temporary) {
            (false, _) => Ok(out),
            (true, Some(e)) => Err(e),
            (true, None) => Err(DnsError::NotFound),
        }
    }

    /// MX records as (preference, exchange without the trailing dot),
    /// lowest preference first.
    pub(crate) async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let lookup = self.auth.resolver().mx_lookup(Self::fqdn(name)?).await;
        let mut mx = Self::records(lookup, |d| match d {
            RData::MX(m) => Some((
                m.preference,
                m.exchange.to_ascii().trim_end_matches('.').to_string(),
            )),
            _ => None,
        })?;
        mx.sort();
        Ok(mx)
    }

    /// One TXT question: the records as bytes (each with its strings
    /// joined, nothing decoded: the parsers judge what a zone sent) and
    /// until when the answer may be kept. One query answers both, so a
    /// caller that keeps "no such record" for the zone's negative TTL does
    /// not have to ask again to learn it (which, for an answer without an
    /// SOA that the resolver does not keep, sent the same question twice).
    pub async fn txt_answer(&self, name: &str) -> TxtAnswer {
        let lookup = match Self::fqdn(name) {
            Ok(fqdn) => self.auth.resolver().txt_lookup(fqdn).await,
            Err(e) => {
                return TxtAnswer {
                    records: Err(e),
                    valid_until: None,
                };
            }
        };
        let valid_until = valid_until(&lookup);
        let records = Self::records(lookup, |d| match d {
            RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
            _ => None,
        });
        TxtAnswer {
            records,
            valid_until,
        }
    }

    /// TXT records, each with its strings joined. Answers and "no such
    /// record" are kept for their TTL in front of the resolver, as A
    /// answers are.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        if let Some(answer) = self.txt_answers.get(name) {
            return answer;
        }
        let lookup = self.auth.resolver().txt_lookup(Self::fqdn(name)?).await;
        let valid_until = valid_until(&lookup);
        let answer = Self::records(lookup, |d| match d {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        });
        keep(&self.txt_answers, name, &answer, valid_until);
        answer
    }

    /// Whether `name` exists, for DMARC's `np=` (RFC 9989 §3.2.13, RFC
    /// 8020): A, AAAA and MX are asked for at once (RFC 9091 §2.7 named
    /// those three); NXDOMAIN to any of them means the name and everything
    /// below it do not exist. Any other answer, records or none (NODATA),
    /// means it exists; only when no query completes is the answer
    /// unknown.
    pub(crate) async fn exists(&self, name: &str) -> Result<bool, DnsError> {
        use hickory_resolver::proto::rr::RecordType;
        let fqdn = Self::fqdn(name)?;
        let resolver = self.auth.resolver();
        let (a, aaaa, mx) = tokio::join!(
            resolver.lookup(fqdn.clone(), RecordType::A),
            resolver.lookup(fqdn.clone(), RecordType::AAAA),
            resolver.lookup(fqdn, RecordType::MX),
        );
        let answers = [a, aaaa, mx];
        if answers
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| e.is_nx_domain()))
        {
            return Ok(false);
        }
        let mut failure = None;
        for answer in answers {
            match answer {
                Ok(_) => return Ok(true),
                Err(e) if e.is_no_records_found() => return Ok(true),
                Err(e) => failure = Some(DnsError::Temporary(e.to_string())),
            }
        }
        Err(failure.unwrap_or(DnsError::NotFound))
    }

    /// PTR names of an address, without trailing dots. Kept for their TTL
    /// like A answers: iprev asks on every connection.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let key = ip.to_string();
        if let Some(answer) = self.ptr_answers.get(&key) {
            return answer;
        }
        let lookup = self.auth.resolver().reverse_lookup(Name::from(ip)).await;
        let valid_until = valid_until(&lookup);
        let answer = Self::records(lookup, |d| match d {
            RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_string()),
            _ => None,
        });
        keep(&self.ptr_answers, &key, &answer, valid_until);
        answer
    }
}

// ----- For SPF (checks::spf): names as RFC 7208 forms them -----
//
// A domain-spec may hold any visible character (RFC 7208 §4.6.1, §7.1:
// `a:foo:bar/baz.example.com` names a host whose first label is
// `foo:bar/baz`), which `Name::from_ascii` refuses as a host name. SPF
// builds its query names label by label instead, and asks through the same
// resolver, cache and timeouts as every other lookup.

/// A query name from dot-separated labels of any octets but the dot, made
/// fully qualified. `None` when it cannot be a DNS name (RFC 1035 §2.3.4):
/// an empty label, a label over 63 octets, over 255 octets in all.
pub(crate) fn name_from_labels(name: &str) -> Option<Name> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    let mut parsed = Name::from_labels(name.split('.').map(str::as_bytes)).ok()?;
    parsed.set_fqdn(true);
    Some(parsed)
}

/// Whether `name` could be a DNS name at all (labels of 1-63 octets, 255
/// octets in all); one that cannot has no records.
pub(crate) fn can_exist(name: &str) -> bool {
    Dns::fqdn(name).is_ok()
}

impl Dns {
    /// The records of type `rtype` at `name` (CNAMEs followed by the
    /// resolver); none is NotFound.
    pub(crate) async fn records_of_type(
        &self,
        name: Name,
        rtype: hickory_resolver::proto::rr::RecordType,
    ) -> Result<Vec<RData>, DnsError> {
        let lookup = self.auth.resolver().lookup(name, rtype).await;
        Self::records(lookup, |d| (d.record_type() == rtype).then(|| d.clone()))
    }

    /// As [`Dns::records_of_type`], with answers and "no such record" kept
    /// for their TTL in front of the resolver (keyed by type and `spelled`,
    /// the name as the caller wrote it): SPF asks for the same names for
    /// every message from a domain, and each cache hit in the resolver
    /// cost about 11k instructions.
    pub(crate) async fn kept_records_of_type(
        &self,
        spelled: &str,
        name: Name,
        rtype: hickory_resolver::proto::rr::RecordType,
    ) -> Result<Vec<RData>, DnsError> {
        let kind: &'static str = rtype.into();
        let mut key = String::with_capacity(kind.len() + 1 + spelled.len());
        key.push_str(kind);
        key.push(' ');
        key.push_str(spelled);
        if let Some(answer) = self.spf_answers.get(&key) {
            return answer;
        }
        let lookup = self.auth.resolver().lookup(name, rtype).await;
        let valid_until = valid_until(&lookup);
        let answer = Self::records(lookup, |d| (d.record_type() == rtype).then(|| d.clone()));
        keep(&self.spf_answers, &key, &answer, valid_until);
        answer
    }
}

/// For unit tests: a resolver whose only server is a closed port on
/// 127.0.0.1 (discard), with a short timeout. Lookups fail quickly as
/// temporary errors and never leave the machine.
#[cfg(test)]
pub(crate) fn unreachable_for_tests() -> std::sync::Arc<Dns> {
    let settings = DnsSettings {
        nameservers: Some(vec![SocketAddr::from(([127, 0, 0, 1], 9))]),
        timeout: Duration::from_millis(200),
        attempts: 1,
        ..DnsSettings::default()
    };
    match Dns::new(&settings) {
        Ok(dns) => std::sync::Arc::new(dns),
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn kept_a_answers_are_used_before_the_resolver_and_failures_are_not_kept() {
        // Nothing listens at this resolver's server: any real query fails.
        let dns = unreachable_for_tests();
        let later = Instant::now() + Duration::from_secs(60);
        let listed = "2.0.0.127.bl.example.";
        dns.a_answers
            .put(listed, Ok(vec![Ipv4Addr::new(127, 0, 0, 2)]), later);
        assert_eq!(
            dns.ipv4(listed).await,
            Ok(vec![Ipv4Addr::new(127, 0, 0, 2)])
        );
        let absent = "3.0.0.127.bl.example.";
        dns.a_answers.put(absent, Err(DnsError::NotFound), later);
        assert_eq!(dns.ipv4(absent).await, Err(DnsError::NotFound));

        // A timeout is asked again next time, never kept.
        let other = "4.0.0.127.bl.example.";
        assert!(matches!(dns.ipv4(other).await, Err(DnsError::Temporary(_))));
        assert_eq!(dns.a_answers.get(other), None);
        assert_eq!(dns.a_answers.len(), 2);
    }
}
