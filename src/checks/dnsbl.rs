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
use crate::config::options::OneOrMany;
use crate::dns::{Dns, DnsError};
use crate::stage::Stage;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The most `From:` domains looked up per list; a message rarely has more
/// than one author and each further domain costs a query per list.
pub const MAX_FROM_DOMAINS: usize = 5;

/// The longest zone: the IPv6 nibble form takes 64 of a name's 253 octets.
const MAX_ZONE_LEN: usize = 253 - 64;

/// An example of `lists`, for the messages that say what it should be.
const LISTS_EXAMPLE: &str = "[{ zone = \"zen.spamhaus.org\", type = \"ip\" }]";

/// `[checks.NAME]` with `kind = "dnsbl"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsblOptions {
    lists: Lists,
}

/// `lists`: the list tables, in order. Its own type so that a value that is
/// not a list is told what a list looks like.
struct Lists(Vec<ListOptions>);

impl<'de> Deserialize<'de> for Lists {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lists;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of tables such as {LISTS_EXAMPLE}")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Lists, A::Error> {
                let mut lists = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(list) = seq.next_element::<ListOptions>()? {
                    lists.push(list);
                }
                Ok(Lists(lists))
            }
        }
        d.deserialize_any(V)
    }
}

/// One table of `lists`, as written. `zone` and `type` are required, but
/// read as options so that a missing one is named with what it may be, for
/// every list in one run; the rest is checked in [`DnsblCheck::list`].
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { zone = \"zen.spamhaus.org\", type = \"ip\" }"
)]
struct ListOptions {
    zone: Option<String>,
    #[serde(rename = "type")]
    kind: Option<ListType>,
    score: Option<f64>,
    codes: Option<OneOrMany>,
    name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    rename_all = "snake_case",
    expecting = "\"ip\", \"helo\", \"sender\" or \"from\""
)]
enum ListType {
    Ip,
    Helo,
    Sender,
    From,
}

impl ListType {
    fn as_str(self) -> &'static str {
        match self {
            ListType::Ip => "ip",
            ListType::Helo => "helo",
            ListType::Sender => "sender",
            ListType::From => "from",
        }
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
fn push_reverse_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().iter().rev().enumerate() {
        if i > 0 {
            out.push('.');
        }
        let (hundreds, tens, ones) = (octet / 100, octet / 10 % 10, octet % 10);
        if hundreds > 0 {
            out.push(char::from(b'0' + hundreds));
        }
        if hundreds > 0 || tens > 0 {
            out.push(char::from(b'0' + tens));
        }
        out.push(char::from(b'0' + ones));
    }
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
    /// Written into one string: `format!` of the reversed address and
    /// then of the name cost about 3k instructions per list and message.
    fn query_name(&self, zone: &str) -> Option<String> {
        let mut name = String::with_capacity(64 + zone.len());
        match self {
            Target::Ip(IpAddr::V4(v4)) => push_reverse_ipv4(&mut name, *v4),
            Target::Ip(IpAddr::V6(v6)) => name.push_str(&reverse_ipv6(*v6)),
            Target::Helo(d) | Target::Sender(d) | Target::From(d) => name.push_str(d),
        }
        name.push('.');
        name.push_str(zone);
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

/// The `dnsbl` check: the DNS block lists to query and what is looked up in
/// them.
pub struct DnsblCheck {
    lists: Vec<List>,
    dns: Arc<Dns>,
    inputs: Stage,
}

/// Check one table of `lists` (`i` is its index, as in `lists[1].zone`);
/// every problem is reported at `lists`, and `None` returned when there
/// was one.
fn check_list(
    ctx: &mut CheckBuildContext<'_, '_, '_>,
    i: usize,
    list: ListOptions,
) -> Option<List> {
    let what = ctx.options.what().to_string();
    let span = ctx
        .options
        .span_of("lists")
        .unwrap_or_else(|| ctx.options.span());
    let mut errors = Vec::new();
    // `at` is the path below the list (".zone"); `problem` starts with its
    // own separator, a space or the colon before a code's error.
    let mut err = |at: &str, problem: String| {
        errors.push(format!("`lists[{i}]{at}` in {what}{problem}"));
    };

    let zone = match &list.zone {
        None => {
            err(
                "",
                " needs `zone`, such as \"zen.spamhaus.org\"".to_string(),
            );
            None
        }
        Some(z) if z.trim().parse::<IpAddr>().is_ok() => {
            err(
                ".zone",
                format!(
                    " must be a DNS zone, not an address, found \"{}\"",
                    z.escape_debug()
                ),
            );
            None
        }
        Some(z) => match normalize_domain(z).ok().filter(|d| !d.starts_with('[')) {
            Some(d) if d.len() <= MAX_ZONE_LEN && fits_dns(&d) => Some(d),
            Some(_) => {
                err(
                    ".zone",
                    format!(" is too long: at most {MAX_ZONE_LEN} characters and 63 per label"),
                );
                None
            }
            None => {
                err(
                    ".zone",
                    format!(" is not a valid domain: \"{}\"", z.escape_debug()),
                );
                None
            }
        },
    };

    if list.kind.is_none() {
        err(
            "",
            " needs `type`: \"ip\", \"helo\", \"sender\" or \"from\" (what is looked up)"
                .to_string(),
        );
    }

    if let Some(score) = list.score
        && !score.is_finite()
    {
        err(".score", format!(" must be a finite number, found {score}"));
    }

    let codes = match list.codes {
        None => None,
        Some(OneOrMany(items)) if items.is_empty() => {
            err(
                ".codes",
                " is empty, so nothing could count as a listing; remove it to accept any 127.0.0.0/8 answer"
                    .to_string(),
            );
            None
        }
        Some(OneOrMany(items)) => {
            let mut ranges = Vec::new();
            for item in &items {
                match parse_code(item) {
                    Ok(r) => ranges.push(r),
                    Err(e) => err(".codes", format!(": {e}")),
                }
            }
            Some(ranges)
        }
    };

    if let Some(name) = &list.name
        && (name.trim().is_empty() || name.contains(|c: char| c.is_control()))
    {
        err(".name", " must be non-empty text on one line".to_string());
    }

    if !errors.is_empty() {
        for message in errors {
            ctx.options.error(span.clone(), message);
        }
        return None;
    }
    let zone = zone?;
    Some(List {
        label: list
            .name
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| zone.clone()),
        zone,
        kind: list.kind?,
        score: list.score,
        codes,
    })
}

impl DnsblCheck {
    /// Build it from its options and the shared resolver; `None` after
    /// reporting what is wrong, a broken resolver configuration included.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let what = ctx.options.what().to_string();
        let options: Option<DnsblOptions> = ctx.options.required("lists", LISTS_EXAMPLE).parse();
        // The resolver is asked for even when the lists are wrong, so that
        // a broken resolver configuration is named in the same run.
        let dns = ctx.resolver();
        let Lists(raw) = options?.lists;
        if raw.is_empty() {
            ctx.options.invalid(
                "lists",
                format!("is empty: name at least one list, such as {LISTS_EXAMPLE}"),
            );
            return None;
        }
        // Each good list with its index in `lists`, which a repeat names
        // even when a list between the two was wrong.
        let mut lists: Vec<(usize, List)> = Vec::new();
        let mut ok = true;
        for (i, list) in raw.into_iter().enumerate() {
            let Some(list) = check_list(ctx, i, list) else {
                ok = false;
                continue;
            };
            if let Some((first, _)) = lists
                .iter()
                .find(|(_, l)| l.zone == list.zone && l.kind == list.kind)
            {
                let span = ctx
                    .options
                    .span_of("lists")
                    .unwrap_or_else(|| ctx.options.span());
                ctx.options.error(
                    span,
                    format!(
                        "`lists[{i}]` in {what} repeats `lists[{first}]` (zone \"{}\", type \"{}\")",
                        list.zone,
                        list.kind.as_str()
                    ),
                );
                ok = false;
            }
            lists.push((i, list));
        }
        let (true, Some(dns)) = (ok, dns) else {
            return None;
        };
        let lists: Vec<List> = lists.into_iter().map(|(_, l)| l).collect();
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
