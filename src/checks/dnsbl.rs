//! The `dnsbl` check: looks the client address, the HELO name, the envelope
//! sender's domain or the `From:` domain up in DNS block lists (RFC 5782),
//! every list at once.
//!
//! Options: `lists`, an array of tables (inline or `[[checks.NAME.lists]]`),
//! each with:
//!
//! - `zone` (required): the list's DNS zone, such as "zen.spamhaus.org".
//! - `type` (required): what is looked up. "ip": the client address, IPv4 as
//!   reversed octets, IPv6 as 32 reversed nibbles (RFC 5782 §2.1, §2.4); an
//!   IPv4-mapped IPv6 client is looked up as IPv4. "helo": the HELO/EHLO
//!   name, when it is a domain of two labels or more (not an address
//!   literal). "sender": the envelope sender's domain (nothing for `<>`).
//!   "from": every domain in the `From:` header(s), at most
//!   [`MAX_FROM_DOMAINS`]. The domain lists follow RFC 5782 §2.3.
//! - `score` (optional number, may be negative for allow lists): added to the
//!   check's score when this list lists the target, for `on_fail = "score"`.
//! - `codes` (optional): the answers that count as a listing, as IPv4
//!   addresses ("127.0.0.2"), ranges ("127.0.0.4-127.0.0.7") or prefixes
//!   ("127.0.0.0/24"), all inside 127.0.0.0/8. By default any 127.0.0.0/8
//!   answer counts except 127.255.255.0/24, which Spamhaus-style lists use
//!   to report errors (such as queries through a public resolver). Answers
//!   outside 127.0.0.0/8 never count: a list that answers them is broken or
//!   gone.
//! - `name` (optional): a label for the list in reasons; the zone by default.
//!
//! The check starts at the latest stage one of its lists needs ("ip" at
//! connect, "helo" at HELO, "sender" at MAIL, "from" at end of message), so
//! put client lists in a check of their own to have them looked up while the
//! SMTP dialogue goes on. It decides at MAIL at the earliest, so the client
//! sees a refusal at MAIL FROM (`decide_at = "connect"` refuses earlier).
//!
//! Results: fail when any list lists a target (reason such as `listed in
//! zen.spamhaus.org (127.0.0.2) for 192.0.2.10`, score the sum of the listing
//! lists' scores); temperror when none lists and a lookup failed or a list
//! answered with an error code; pass when the lists were asked and none lists;
//! none when there was nothing to look up (no client address, `<>`, ...).

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::address::normalize_domain;
use crate::config::error::did_you_mean;
use crate::dns::{Dns, DnsError};
use crate::stage::Stage;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use toml::Value;

/// The most `From:` domains looked up per list; a message rarely has more
/// than one author and each further domain costs a query per list.
pub const MAX_FROM_DOMAINS: usize = 5;

/// The longest zone: the IPv6 nibble form takes 64 of a name's 253 octets.
const MAX_ZONE_LEN: usize = 253 - 64;

/// The keys of one list table, for the unknown-key hint.
const LIST_KEYS: [&str; 5] = ["zone", "type", "score", "codes", "name"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListType {
    Ip,
    Helo,
    Sender,
    From,
}

impl ListType {
    const ALL: [ListType; 4] = [
        ListType::Ip,
        ListType::Helo,
        ListType::Sender,
        ListType::From,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ListType::Ip => "ip",
            ListType::Helo => "helo",
            ListType::Sender => "sender",
            ListType::From => "from",
        }
    }

    fn parse(s: &str) -> Option<ListType> {
        ListType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The stage at which what this list looks up is known.
    fn stage(self) -> Stage {
        match self {
            ListType::Ip => Stage::Connect,
            ListType::Helo => Stage::Helo,
            ListType::Sender => Stage::Mail,
            ListType::From => Stage::Eom,
        }
    }
}

/// An inclusive range of IPv4 answers, as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CodeRange {
    first: u32,
    last: u32,
}

impl CodeRange {
    fn contains(&self, a: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(a))
    }
}

/// 127.255.255.0/24: Spamhaus-style error answers, never a listing.
fn is_error_code(a: Ipv4Addr) -> bool {
    let [x, y, z, _] = a.octets();
    (x, y, z) == (127, 255, 255)
}

/// What a Spamhaus-style error code means, when it is a known one.
fn error_code_meaning(a: Ipv4Addr) -> Option<&'static str> {
    match a.octets()[3] {
        252 => Some("the query name is malformed"),
        254 => Some("the list refuses queries through this public or open resolver"),
        255 => Some("too many queries from this resolver"),
        _ => None,
    }
}

/// Why an entry of `codes` is refused; each carries the entry (or the
/// part of it at fault) as written, trimmed.
#[derive(Debug, thiserror::Error)]
enum CodeError {
    #[error("\"{0}\" is not an IPv4 address")]
    NotAddress(String),
    #[error("the range \"{0}\" ends before it starts")]
    Backwards(String),
    #[error("\"{0}\" is not an IPv4 prefix such as \"127.0.0.0/24\"")]
    NotPrefix(String),
    #[error("\"{0}\" is outside 127.0.0.0/8, where list answers are (RFC 5782 §2.1)")]
    OutsideLoopback(String),
    #[error(
        "\"{0}\" overlaps 127.255.255.0/24, which lists use for error answers, never for listings"
    )]
    ErrorAnswers(String),
}

/// Parse one entry of `codes`: an address, `first-last`, or a prefix.
fn parse_code(s: &str) -> Result<CodeRange, CodeError> {
    let s = s.trim();
    let addr = |t: &str| -> Result<Ipv4Addr, CodeError> {
        let t = t.trim();
        t.parse::<Ipv4Addr>()
            .map_err(|_| CodeError::NotAddress(t.to_string()))
    };
    let range = if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (addr(a)?, addr(b)?);
        if a > b {
            return Err(CodeError::Backwards(s.to_string()));
        }
        CodeRange {
            first: a.into(),
            last: b.into(),
        }
    } else if s.contains('/') {
        let net: ipnet::Ipv4Net = s.parse().map_err(|_| CodeError::NotPrefix(s.to_string()))?;
        CodeRange {
            first: net.network().into(),
            last: net.broadcast().into(),
        }
    } else {
        let a = addr(s)?;
        CodeRange {
            first: a.into(),
            last: a.into(),
        }
    };
    let (first, last) = (Ipv4Addr::from(range.first), Ipv4Addr::from(range.last));
    if first.octets()[0] != 127 || last.octets()[0] != 127 {
        return Err(CodeError::OutsideLoopback(s.to_string()));
    }
    let errors = CodeRange {
        first: Ipv4Addr::new(127, 255, 255, 0).into(),
        last: Ipv4Addr::new(127, 255, 255, 255).into(),
    };
    if range.first <= errors.last && errors.first <= range.last {
        return Err(CodeError::ErrorAnswers(s.to_string()));
    }
    Ok(range)
}

/// IPv4 in DNSBL form: `192.0.2.10` becomes `10.2.0.192`.
fn reverse_ipv4(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}")
}

/// IPv6 in nibble form (RFC 5782 §2.4): 32 hex digits, least significant
/// first, separated by dots.
fn reverse_ipv6(ip: Ipv6Addr) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(63);
    for byte in ip.octets().iter().rev() {
        for nibble in [byte & 0x0f, byte >> 4] {
            if !out.is_empty() {
                out.push('.');
            }
            out.push(char::from(HEX[usize::from(nibble)]));
        }
    }
    out
}

/// Whether a name fits DNS limits: at most 253 octets, labels of 1 to 63.
fn fits_dns(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// A domain worth looking up in a domain list: valid, not an address or an
/// address literal, with at least two labels.
fn lookup_domain(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('[') || raw.parse::<IpAddr>().is_ok() {
        return None;
    }
    let d = normalize_domain(raw).ok()?;
    (d.contains('.') && !d.starts_with('[') && fits_dns(&d)).then_some(d)
}

/// The domains of the addresses in a `From:` value (RFC 5322 §3.6.2,
/// read by `message::address_list`) worth looking up; members that cannot
/// be read are skipped, the others are still looked up.
pub(crate) fn from_header_domains(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    for mailbox in crate::message::address_list::address_list(value)
        .into_iter()
        .flatten()
    {
        if let Some(d) = lookup_domain(mailbox.domain())
            && !out.contains(&d)
        {
            out.push(d);
        }
    }
    out
}

/// What one list looks up for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Ip(IpAddr),
    Helo(String),
    Sender(String),
    From(String),
}

impl Target {
    /// The name to ask for in `zone`, or `None` when it would not fit DNS.
    fn query_name(&self, zone: &str) -> Option<String> {
        let prefix = match self {
            Target::Ip(IpAddr::V4(v4)) => reverse_ipv4(*v4),
            Target::Ip(IpAddr::V6(v6)) => reverse_ipv6(*v6),
            Target::Helo(d) | Target::Sender(d) | Target::From(d) => d.clone(),
        };
        let name = format!("{prefix}.{zone}");
        fits_dns(&name).then_some(name)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::Helo(d) => write!(f, "HELO {d}"),
            Target::Sender(d) => write!(f, "sender domain {d}"),
            Target::From(d) => write!(f, "From domain {d}"),
        }
    }
}

/// What a list type finds in the input, or why there is nothing.
fn targets(kind: ListType, input: &CheckInput) -> Result<Vec<Target>, &'static str> {
    match kind {
        ListType::Ip => input
            .connection
            .client_ip
            .map(|ip| vec![Target::Ip(crate::ip::canonical(ip))])
            .ok_or("no client address"),
        ListType::Helo => input
            .connection
            .helo
            .as_deref()
            .and_then(lookup_domain)
            .map(|d| vec![Target::Helo(d)])
            .ok_or("no HELO domain"),
        ListType::Sender => input
            .envelope
            .as_ref()
            .and_then(|e| e.sender.domain())
            .and_then(lookup_domain)
            .map(|d| vec![Target::Sender(d)])
            .ok_or("no sender domain"),
        ListType::From => {
            let mut domains: Vec<String> = Vec::new();
            if let Some(message) = &input.message {
                for value in message.header_values("From") {
                    for d in from_header_domains(value) {
                        if !domains.contains(&d) {
                            domains.push(d);
                        }
                    }
                }
            }
            domains.truncate(MAX_FROM_DOMAINS);
            if domains.is_empty() {
                Err("no From domain")
            } else {
                Ok(domains.into_iter().map(Target::From).collect())
            }
        }
    }
}

/// One configured list.
#[derive(Debug)]
struct List {
    zone: String,
    kind: ListType,
    score: Option<f64>,
    /// `None`: the default, any 127.0.0.0/8 answer but the error codes.
    codes: Option<Vec<CodeRange>>,
    /// The name in reasons: `name`, or the zone.
    label: String,
}

/// What one lookup in one list found.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    /// The answers that count as a listing.
    Listed(Vec<Ipv4Addr>),
    NotListed,
    /// A DNS failure or an error code: nothing is known.
    Error(String),
}

impl List {
    fn accepts(&self, a: Ipv4Addr) -> bool {
        if is_error_code(a) || a.octets()[0] != 127 {
            return false;
        }
        match &self.codes {
            None => true,
            Some(ranges) => ranges.iter().any(|r| r.contains(a)),
        }
    }

    /// Classify the A records a lookup returned: a listing code wins over an
    /// error code; anything else is no listing.
    fn classify(&self, answer: Result<Vec<Ipv4Addr>, DnsError>) -> Answer {
        let addrs = match answer {
            Ok(a) => a,
            Err(DnsError::NotFound) => return Answer::NotListed,
            Err(e @ DnsError::Temporary(_)) => {
                return Answer::Error(format!("{}: {e}", self.label));
            }
        };
        let mut listed: Vec<Ipv4Addr> =
            addrs.iter().copied().filter(|a| self.accepts(*a)).collect();
        if !listed.is_empty() {
            listed.sort();
            listed.dedup();
            return Answer::Listed(listed);
        }
        if let Some(code) = addrs.iter().copied().find(|a| is_error_code(*a)) {
            let meaning = error_code_meaning(code).unwrap_or("an error answer");
            return Answer::Error(format!("{} answered {code} ({meaning})", self.label));
        }
        if addrs.iter().any(|a| a.octets()[0] != 127) {
            tracing::debug!(list = %self.label, answers = ?addrs, "DNSBL answer outside 127.0.0.0/8 ignored");
        }
        Answer::NotListed
    }
}

pub struct DnsblCheck {
    lists: Vec<List>,
    dns: Arc<Dns>,
    inputs: Stage,
}

/// An error about one list entry, with an optional hint.
struct EntryError(String, Option<String>);

/// Parse one table of `lists`. `n` is its 1-based position.
fn parse_list(value: &Value, n: usize, what: &str) -> Result<List, Vec<EntryError>> {
    let Value::Table(table) = value else {
        return Err(vec![EntryError(
            format!(
                "list {n} of `lists` in {what} must be a table such as {{ zone = \"zen.spamhaus.org\", type = \"ip\" }}, found a {}",
                value.type_str()
            ),
            None,
        )]);
    };
    let mut errors = Vec::new();
    let zone_text = table.get("zone").and_then(Value::as_str);
    let whose = match zone_text {
        Some(z) => format!("list {n} (\"{}\") of `lists` in {what}", z.escape_debug()),
        None => format!("list {n} of `lists` in {what}"),
    };
    for key in table.keys() {
        if !LIST_KEYS.contains(&key.as_str()) {
            let hint = match did_you_mean(key, LIST_KEYS) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known keys here: {}", LIST_KEYS.join(", ")),
            };
            errors.push(EntryError(
                format!("unknown key `{}` in {whose}", key.escape_debug()),
                Some(hint),
            ));
        }
    }
    let mut err = |msg: String| errors.push(EntryError(msg, None));

    let zone = match table.get("zone") {
        None => {
            err(format!(
                "{whose} needs `zone`, such as \"zen.spamhaus.org\""
            ));
            None
        }
        Some(Value::String(z)) => {
            let normalized = normalize_domain(z).ok().filter(|d| !d.starts_with('['));
            match normalized {
                _ if z.trim().parse::<IpAddr>().is_ok() => {
                    err(format!(
                        "`zone` in {whose} must be a DNS zone, not an address"
                    ));
                    None
                }
                Some(d) if d.len() <= MAX_ZONE_LEN && fits_dns(&d) => Some(d),
                Some(_) => {
                    err(format!(
                        "`zone` in {whose} is too long: at most {MAX_ZONE_LEN} characters and 63 per label"
                    ));
                    None
                }
                None => {
                    err(format!(
                        "`zone` in {whose} is not a valid domain: \"{}\"",
                        z.escape_debug()
                    ));
                    None
                }
            }
        }
        Some(other) => {
            err(format!(
                "`zone` in {whose} must be a string, found {}",
                other.type_str()
            ));
            None
        }
    };

    let allowed_types = ListType::ALL
        .iter()
        .map(|t| format!("\"{}\"", t.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let kind = match table.get("type") {
        None => {
            err(format!(
                "{whose} needs `type`: one of {allowed_types} (what is looked up)"
            ));
            None
        }
        Some(v) => match v.as_str().and_then(ListType::parse) {
            Some(t) => Some(t),
            None => {
                let found = match v.as_str() {
                    Some(s) => format!("\"{}\"", s.escape_debug()),
                    None => format!("a {}", v.type_str()),
                };
                err(format!(
                    "`type` in {whose} must be one of {allowed_types}, found {found}"
                ));
                None
            }
        },
    };

    let score = match table.get("score") {
        None => Some(None),
        Some(Value::Integer(i)) => Some(Some(*i as f64)),
        Some(Value::Float(f)) if f.is_finite() => Some(Some(*f)),
        Some(other) => {
            err(format!(
                "`score` in {whose} must be a number, found {}",
                match other {
                    Value::Float(f) => f.to_string(),
                    v => format!("a {}", v.type_str()),
                }
            ));
            None
        }
    };

    let codes = match table.get("codes") {
        None => Some(None),
        Some(v) => {
            let items: Option<Vec<&str>> = match v {
                Value::String(s) => Some(vec![s.as_str()]),
                Value::Array(a) => a.iter().map(Value::as_str).collect(),
                _ => None,
            };
            match items {
                None => {
                    err(format!(
                        "`codes` in {whose} must be a list of strings such as [\"127.0.0.2\", \"127.0.0.4-127.0.0.7\"]"
                    ));
                    None
                }
                Some(items) if items.is_empty() => {
                    err(format!(
                        "`codes` in {whose} is empty, so nothing could count as a listing; remove it to accept any 127.0.0.0/8 answer"
                    ));
                    None
                }
                Some(items) => {
                    let mut ranges = Vec::new();
                    let mut good = true;
                    for item in items {
                        match parse_code(item) {
                            Ok(r) => ranges.push(r),
                            Err(e) => {
                                err(format!("`codes` in {whose}: {e}"));
                                good = false;
                            }
                        }
                    }
                    good.then_some(Some(ranges))
                }
            }
        }
    };

    let label = match table.get("name") {
        None => Some(None),
        Some(Value::String(s)) if !s.trim().is_empty() && !s.contains(|c: char| c.is_control()) => {
            Some(Some(s.trim().to_string()))
        }
        Some(_) => {
            err(format!(
                "`name` in {whose} must be non-empty text on one line"
            ));
            None
        }
    };

    match (zone, kind, score, codes, label) {
        (Some(zone), Some(kind), Some(score), Some(codes), Some(label)) if errors.is_empty() => {
            Ok(List {
                label: label.unwrap_or_else(|| zone.clone()),
                zone,
                kind,
                score,
                codes,
            })
        }
        _ => Err(errors),
    }
}

impl DnsblCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let what = ctx.options.what().to_string();
        let example = "lists = [{ zone = \"zen.spamhaus.org\", type = \"ip\" }]";
        let lists = match ctx.options.value("lists") {
            None => {
                let span = ctx.options.span();
                ctx.options
                    .error(span, format!("{what} needs `lists`, such as {example}"));
                None
            }
            Some(raw) => {
                let span = raw.span();
                match raw.get_ref() {
                    Value::Array(items) if !items.is_empty() => {
                        let mut lists: Vec<List> = Vec::new();
                        let mut ok = true;
                        for (i, item) in items.iter().enumerate() {
                            match parse_list(item, i + 1, &what) {
                                Ok(list) => {
                                    if let Some(first) = lists
                                        .iter()
                                        .position(|l| l.zone == list.zone && l.kind == list.kind)
                                    {
                                        ctx.options.error(
                                            span.clone(),
                                            format!(
                                                "list {} of `lists` in {what} repeats list {} (zone \"{}\", type \"{}\")",
                                                i + 1,
                                                first + 1,
                                                list.zone,
                                                list.kind.as_str()
                                            ),
                                        );
                                        ok = false;
                                    }
                                    lists.push(list);
                                }
                                Err(errors) => {
                                    ok = false;
                                    for EntryError(message, hint) in errors {
                                        ctx.options.diag().push(Some(span.clone()), message, hint);
                                    }
                                }
                            }
                        }
                        ok.then_some(lists)
                    }
                    Value::Array(_) => {
                        ctx.options.error(
                            span,
                            format!("`lists` in {what} is empty: name at least one list, such as {example}"),
                        );
                        None
                    }
                    other => {
                        ctx.options.error(
                            span,
                            format!(
                                "`lists` in {what} must be an array of tables, such as {example}; found a {}",
                                other.type_str()
                            ),
                        );
                        None
                    }
                }
            }
        };
        let dns = match ctx.dns.get() {
            Ok(dns) => Some(dns),
            Err(e) => {
                let span = ctx.options.span();
                ctx.options.error(span, format!("{what}: {e}"));
                None
            }
        };
        let (lists, dns) = (lists?, dns?);
        let inputs = lists
            .iter()
            .map(|l| l.kind.stage())
            .max()
            .unwrap_or(Stage::Connect);
        Some(Arc::new(DnsblCheck { lists, dns, inputs }))
    }

    async fn evaluate(&self, input: &CheckInput) -> CheckResult {
        // Polled together in this task, not a task spawned per question:
        // nearly every answer comes from the cache, and a task (allocation,
        // scheduler, often a wakeup of the other worker thread) cost more
        // than the answer. Dropping the set cancels what is still running.
        let mut lookups = FuturesUnordered::new();
        let mut nothing: Vec<&'static str> = Vec::new();
        for (i, list) in self.lists.iter().enumerate() {
            let found = match targets(list.kind, input) {
                Ok(t) => t,
                Err(why) => {
                    if !nothing.contains(&why) {
                        nothing.push(why);
                    }
                    continue;
                }
            };
            for (j, target) in found.into_iter().enumerate() {
                let Some(name) = target.query_name(&list.zone) else {
                    if !nothing.contains(&"a name too long for DNS") {
                        nothing.push("a name too long for DNS");
                    }
                    continue;
                };
                let dns = &self.dns;
                lookups.push(async move {
                    let answer = list.classify(dns.ipv4(&name).await);
                    (i, j, target, answer)
                });
            }
        }
        if lookups.is_empty() {
            return CheckResult::with_reason(
                Status::None,
                format!("nothing to look up: {}", nothing.join(", ")),
            );
        }
        let mut outcomes = Vec::with_capacity(lookups.len());
        while let Some(outcome) = lookups.next().await {
            outcomes.push(outcome);
        }
        outcomes.sort_by_key(|(i, j, _, _)| (*i, *j));
        self.combine(&outcomes)
    }

    /// Combine the lookups, in list order, into one result.
    fn combine(&self, outcomes: &[(usize, usize, Target, Answer)]) -> CheckResult {
        let mut listings = Vec::new();
        let mut listing_lists: Vec<usize> = Vec::new();
        let mut errors = Vec::new();
        for (i, _, target, answer) in outcomes {
            let list = &self.lists[*i];
            match answer {
                Answer::Listed(codes) => {
                    let codes = codes
                        .iter()
                        .map(Ipv4Addr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    listings.push(format!("listed in {} ({codes}) for {target}", list.label));
                    if !listing_lists.contains(i) {
                        listing_lists.push(*i);
                    }
                }
                Answer::Error(e) => errors.push(e.clone()),
                Answer::NotListed => {}
            }
        }
        if !listings.is_empty() {
            let mut result = CheckResult::fail(listings.join("; "));
            result.score = listing_lists
                .iter()
                .filter_map(|&i| self.lists[i].score)
                .reduce(|a, b| a + b);
            return result;
        }
        if !errors.is_empty() {
            for e in &errors {
                tracing::warn!(error = %e, "DNSBL lookup gave no answer");
            }
            return CheckResult::temperror(errors.join("; "));
        }
        CheckResult::with_reason(Status::Pass, "not listed")
    }
}

impl Check for DnsblCheck {
    /// The latest stage one of the lists needs.
    fn inputs(&self) -> Stage {
        self.inputs
    }

    /// Refusing at MAIL at the earliest lets the client see why.
    fn decides(&self) -> Stage {
        self.inputs.max(Stage::Mail)
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.evaluate(&input).await })
    }
}

#[cfg(test)]
mod tests;
