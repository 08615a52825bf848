//! The `spf` check: is the client allowed to send for the domain it claims
//! (RFC 7208)? Verified with mail-auth through the shared resolver.
//!
//! Options:
//! - `identity`: which identity to check.
//!   - `"mail_from"` (default): the MAIL FROM domain; when the sender is `<>`
//!     the HELO identity instead (RFC 7208 §2.4).
//!   - `"helo"`: the HELO/EHLO name only (RFC 7208 §2.3).
//!   - `"both"`: HELO first; a HELO `fail` is final, otherwise the MAIL FROM
//!     result decides. Both results go into Authentication-Results.
//! - `received_spf` (bool, default false): add a `Received-SPF` trace header
//!   (RFC 7208 §9.1) for the result that decided.
//!
//! Results map one to one: pass, fail, softfail, neutral, none, temperror,
//! permerror; the usual `on_<result>` keys choose the actions (by default a
//! `fail` rejects, temperror/permerror take the pipeline's `error_action`,
//! the rest are ignored). Without a client address (a local submission) the
//! result is `none`.
//!
//! The check starts at MAIL FROM, so its DNS lookups overlap the rest of the
//! dialogue, and is decided at end of message (`decide_at` moves that). Its
//! outcome is memoised for the message, so the `dmarc` check reuses it
//! instead of asking the DNS again (and computes it itself when no `spf`
//! check is configured).

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::address::Address;
use crate::dns::Dns;
use crate::stage::Stage;
use crate::ttl_cache::TtlCache;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{Parameters, ResolverCache, SpfOutput, SpfResult, Txt};
use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The `%{r}` macro (RFC 7208 §7.3): the checking host's name is not known
/// to a check, and "unknown" is what the RFC suggests then.
const HOST_DOMAIN: &str = "unknown";

/// Longest SPF explanation (`exp=`) quoted in a reason.
const MAX_EXPLANATION: usize = 200;

/// What the `identity` option selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    MailFrom,
    Helo,
    Both,
}

const IDENTITIES: [(&str, Identity); 3] = [
    ("mail_from", Identity::MailFrom),
    ("helo", Identity::Helo),
    ("both", Identity::Both),
];

/// Which identity one evaluation was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    Helo,
    MailFrom,
}

/// One SPF evaluation, owned so it can be memoised and shared with DMARC.
#[derive(Clone, Debug)]
pub struct SpfOutcome {
    pub checked: Checked,
    /// The domain whose record was evaluated (empty when none could be).
    pub domain: String,
    pub output: SpfOutput,
    pub ip: Option<IpAddr>,
    /// The HELO name as the client sent it ("" when it sent none).
    pub helo: String,
    /// The envelope sender as checked ("" for `<>`).
    pub sender: String,
    /// Why nothing could be evaluated, when that is the case.
    pub note: Option<&'static str>,
}

impl SpfOutcome {
    pub fn result(&self) -> SpfResult {
        self.output.result()
    }

    pub fn status(&self) -> Status {
        status_of(self.output.result())
    }
}

/// The memoised HELO evaluation of a message.
pub struct HeloSpf(pub SpfOutcome);

/// The memoised MAIL FROM evaluation of a message: for `<>` this is the HELO
/// evaluation (RFC 7208 §2.4), which is also the identity DMARC aligns
/// (RFC 7489 §3.1.2).
pub struct MailFromSpf(pub SpfOutcome);

/// mail-auth's result in the check vocabulary, spelled out so a new variant
/// upstream is a compile error rather than a silent mapping.
pub fn status_of(result: SpfResult) -> Status {
    match result {
        SpfResult::Pass => Status::Pass,
        SpfResult::Fail => Status::Fail,
        SpfResult::SoftFail => Status::Softfail,
        SpfResult::Neutral => Status::Neutral,
        SpfResult::None => Status::None,
        SpfResult::TempError => Status::Temperror,
        SpfResult::PermError => Status::Permerror,
    }
}

/// The HELO name for SPF: trimmed, without a trailing dot.
fn helo_name(input: &CheckInput) -> String {
    input
        .connection
        .helo
        .as_deref()
        .map(|h| h.trim().trim_end_matches('.').to_string())
        .unwrap_or_default()
}

fn not_evaluated(
    checked: Checked,
    domain: String,
    input: &CheckInput,
    note: &'static str,
) -> SpfOutcome {
    SpfOutcome {
        checked,
        output: SpfOutput::new(domain.clone()).with_result(SpfResult::None),
        domain,
        ip: input.connection.client_ip,
        helo: helo_name(input),
        sender: String::new(),
        note: Some(note),
    }
}

/// SPF records as mail-auth parsed them, shared between messages until
/// their TTL runs out (`Dns::spf_records`): the resolver's cache keeps the
/// answer, this keeps the parsing, as for DKIM keys and DMARC records.
///
/// Only SPF records go in and come out. mail-auth passes the same cache
/// for the `exp=` explanation (a macro string) and stores "no SPF record
/// here" errors in it too; if those were kept, a sender's `exp=` naming
/// another domain would leave that domain's name holding an explanation,
/// and every later SPF check of that domain would fail to read its record.
/// The one difference from no cache: an `exp=` that names a domain whose
/// SPF record is kept gets no explanation, where it would have read that
/// record's text as one.
pub struct SpfRecords<'c>(pub &'c TtlCache<Txt>);

impl ResolverCache<Box<str>, Txt> for SpfRecords<'_> {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0
            .get_borrowed(name)
            .filter(|txt| matches!(txt, Txt::Spf(_)))
    }

    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        if matches!(value, Txt::Spf(_)) {
            self.0.put(&key, value, valid_until);
        }
    }
}

async fn evaluate_helo(dns: &Dns, input: &CheckInput) -> SpfOutcome {
    let helo = helo_name(input);
    let Some(ip) = input.connection.client_ip else {
        return not_evaluated(Checked::Helo, helo, input, "no client IP address");
    };
    if helo.is_empty() {
        return not_evaluated(Checked::Helo, helo, input, "no HELO name");
    }
    let output = dns
        .authenticator()
        .verify_spf(
            Parameters::new(SpfParameters::verify_ehlo(ip, &helo, HOST_DOMAIN))
                .with_txt_cache(&SpfRecords(dns.spf_records())),
        )
        .await;
    SpfOutcome {
        checked: Checked::Helo,
        domain: output.domain().to_string(),
        output,
        ip: Some(ip),
        helo,
        sender: String::new(),
        note: None,
    }
}

/// The envelope sender as SPF wants it: the local part as spelled, the
/// domain normalised to its A-label form (mail-auth looks up ASCII names).
fn spf_sender(sender: &Address) -> String {
    match (sender.original_local(), sender.domain()) {
        (Some(local), Some(domain)) => format!("{local}@{domain}"),
        _ => sender.original().to_string(),
    }
}

async fn evaluate_mail_from(dns: &Dns, input: &CheckInput, sender: &Address) -> SpfOutcome {
    let helo = helo_name(input);
    let sender = spf_sender(sender);
    let Some(ip) = input.connection.client_ip else {
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        let mut o = not_evaluated(Checked::MailFrom, domain, input, "no client IP address");
        o.sender = sender;
        return o;
    };
    let output = dns
        .authenticator()
        .verify_spf(
            Parameters::new(SpfParameters::verify_mail_from(
                ip,
                &helo,
                HOST_DOMAIN,
                &sender,
            ))
            .with_txt_cache(&SpfRecords(dns.spf_records())),
        )
        .await;
    SpfOutcome {
        checked: Checked::MailFrom,
        domain: output.domain().to_string(),
        output,
        ip: Some(ip),
        helo,
        sender,
        note: None,
    }
}

/// The HELO evaluation of this message, computed once.
pub async fn helo_outcome(dns: &Dns, input: &CheckInput) -> Option<Arc<HeloSpf>> {
    input
        .memo
        .get_or_init(|| async { HeloSpf(evaluate_helo(dns, input).await) })
        .await
}

/// The MAIL FROM evaluation of this message (the HELO one for `<>`),
/// computed once, whichever of `spf` and `dmarc` asks first.
pub async fn mail_from_outcome(dns: &Dns, input: &CheckInput) -> Option<Arc<MailFromSpf>> {
    input
        .memo
        .get_or_init(|| async {
            let sender = input.envelope.as_ref().map(|e| &e.sender);
            match sender {
                Some(sender) if !sender.is_null() => {
                    MailFromSpf(evaluate_mail_from(dns, input, sender).await)
                }
                _ => match helo_outcome(dns, input).await {
                    Some(helo) => MailFromSpf(helo.0.clone()),
                    None => MailFromSpf(not_evaluated(
                        Checked::Helo,
                        String::new(),
                        input,
                        "internal error: SPF memo",
                    )),
                },
            }
        })
        .await
}

/// A `value` of RFC 8601 §2.2 (RFC 2045 token or quoted-string).
pub fn pvalue(s: &str) -> String {
    const TSPECIALS: &str = "()<>@,;:\\\"/[]?=";
    let token = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !TSPECIALS.contains(c));
    if token { s.to_string() } else { quoted(s) }
}

/// An RFC 5322 quoted-string; control characters are dropped.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// An RFC 5322 dot-atom when `s` is one, else a quoted-string.
fn dot_atom_or_quoted(s: &str) -> String {
    const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    let atom = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c))
    };
    if s.split('.').all(atom) {
        s.to_string()
    } else {
        quoted(s)
    }
}

/// Text safe inside an RFC 5322 comment: parentheses and backslashes are
/// escaped, control characters dropped.
fn comment_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Printable, bounded text from a sender-controlled string (the `exp=`
/// explanation), so it can go into a reason and an SMTP reply.
fn printable(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| c.is_ascii())
        .take(max)
        .collect();
    clean.trim().to_string()
}

/// The identity property of an Authentication-Results fragment.
fn property(o: &SpfOutcome) -> Option<String> {
    match o.checked {
        Checked::Helo if !o.helo.is_empty() => Some(format!("smtp.helo={}", pvalue(&o.helo))),
        Checked::MailFrom if !o.domain.is_empty() => {
            Some(format!("smtp.mailfrom={}", pvalue(&o.domain)))
        }
        _ => None,
    }
}

/// `spf=pass smtp.mailfrom=example.org`.
pub fn fragment(o: &SpfOutcome) -> String {
    match property(o) {
        Some(p) => format!("spf={} {p}", o.status()),
        None => format!("spf={}", o.status()),
    }
}

/// `SPF fail for example.org from 192.0.2.99`, or why nothing was checked.
pub fn reason(o: &SpfOutcome) -> String {
    let status = o.status();
    if let Some(note) = o.note {
        return format!("SPF {status}: {note}");
    }
    let domain = if o.domain.is_empty() {
        "(no domain)"
    } else {
        &o.domain
    };
    let mut r = match o.ip {
        Some(ip) => format!("SPF {status} for {domain} from {ip}"),
        None => format!("SPF {status} for {domain}"),
    };
    if o.result() == SpfResult::Fail
        && let Some(exp) = o.output.explanation()
    {
        let exp = printable(exp, MAX_EXPLANATION);
        if !exp.is_empty() {
            r.push_str(": ");
            r.push_str(&exp);
        }
    }
    r
}

/// The `Received-SPF` value (RFC 7208 §9.1): result, comment, key-value pairs.
pub fn received_spf(o: &SpfOutcome) -> String {
    let envelope_from = match o.checked {
        Checked::MailFrom if !o.sender.is_empty() => o.sender.clone(),
        _ if !o.helo.is_empty() => format!("postmaster@{}", o.helo),
        _ => String::new(),
    };
    let who = comment_text(if envelope_from.is_empty() {
        &o.domain
    } else {
        &envelope_from
    });
    let ip = o.ip.map(|ip| ip.to_string()).unwrap_or_default();
    let comment = match o.result() {
        _ if o.note.is_some() => o.note.unwrap_or_default().to_string(),
        SpfResult::Pass => format!("domain of {who} designates {ip} as permitted sender"),
        SpfResult::Fail => {
            format!("domain of {who} does not designate {ip} as permitted sender")
        }
        SpfResult::SoftFail => {
            format!("domain of transitioning {who} does not designate {ip} as permitted sender")
        }
        SpfResult::Neutral => {
            format!("{ip} is neither permitted nor denied by domain of {who}")
        }
        SpfResult::None => format!("domain of {who} does not designate permitted sender hosts"),
        SpfResult::TempError => format!("error in processing during lookup of {who}"),
        SpfResult::PermError => format!("permanent error in processing domain of {who}"),
    };
    let mut pairs = Vec::new();
    if let Some(ip) = o.ip {
        pairs.push(format!("client-ip={}", dot_atom_or_quoted(&ip.to_string())));
    }
    pairs.push(format!("envelope-from={}", quoted(&envelope_from)));
    if !o.helo.is_empty() {
        pairs.push(format!("helo={}", dot_atom_or_quoted(&o.helo)));
    }
    pairs.push(
        match o.checked {
            Checked::Helo => "identity=helo",
            Checked::MailFrom => "identity=mailfrom",
        }
        .to_string(),
    );
    format!("{} ({}) {};", o.status(), comment, pairs.join("; "))
}

pub struct SpfCheck {
    dns: Arc<Dns>,
    identity: Identity,
    received_spf: bool,
}

impl SpfCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let mut ok = true;
        let identity = match ctx.options.value("identity") {
            None => Identity::MailFrom,
            Some(raw) => match IDENTITIES
                .iter()
                .find(|(name, _)| Some(*name) == raw.get_ref().as_str())
            {
                Some(&(_, identity)) => identity,
                None => {
                    let found = match raw.get_ref().as_str() {
                        Some(s) => format!("\"{s}\""),
                        None => format!("a {}", raw.get_ref().type_str()),
                    };
                    let msg = format!(
                        "`identity` in {} must be one of \"mail_from\", \"helo\", \"both\", found {found}",
                        ctx.options.what()
                    );
                    ctx.options.error(raw.span(), msg);
                    ok = false;
                    Identity::MailFrom
                }
            },
        };
        let received_present = ctx.options.value("received_spf").is_some();
        let received_spf = ctx.options.bool("received_spf");
        ok &= !received_present || received_spf.is_some();
        let dns = match ctx.dns.get() {
            Ok(dns) => dns,
            Err(e) => {
                let span = ctx.options.span();
                ctx.options.error(span, e);
                return None;
            }
        };
        ok.then(|| {
            Arc::new(SpfCheck {
                dns,
                identity,
                received_spf: received_spf.unwrap_or(false),
            }) as Arc<dyn Check>
        })
    }

    async fn evaluate(&self, input: &CheckInput) -> CheckResult {
        let internal = || CheckResult::temperror("internal error: SPF memo");
        // The memoised outcomes this identity looks at: HELO's, MAIL FROM's.
        let (helo, mail) = match self.identity {
            Identity::MailFrom => match mail_from_outcome(&self.dns, input).await {
                Some(o) => (None, Some(o)),
                None => return internal(),
            },
            Identity::Helo => match helo_outcome(&self.dns, input).await {
                Some(o) => (Some(o), None),
                None => return internal(),
            },
            Identity::Both => {
                let Some(helo) = helo_outcome(&self.dns, input).await else {
                    return internal();
                };
                let null_sender = input.envelope.as_ref().is_none_or(|e| e.sender.is_null());
                if helo.0.result() == SpfResult::Fail || null_sender {
                    (Some(helo), None)
                } else {
                    let Some(mail) = mail_from_outcome(&self.dns, input).await else {
                        return internal();
                    };
                    (Some(helo), Some(mail))
                }
            }
        };
        // Shown in Authentication-Results: each one looked at; deciding:
        // MAIL FROM's when it was looked at.
        let shown: Vec<&SpfOutcome> = helo
            .iter()
            .map(|h| &h.0)
            .chain(mail.iter().map(|m| &m.0))
            .collect();
        let Some(deciding) = mail.as_ref().map(|m| &m.0).or(helo.as_ref().map(|h| &h.0)) else {
            return internal();
        };
        let mut result = CheckResult::with_reason(deciding.status(), reason(deciding));
        result.auth_results = Some(
            shown
                .iter()
                .map(|o| fragment(o))
                .collect::<Vec<_>>()
                .join("; "),
        );
        if self.received_spf {
            result
                .add_headers
                .push(("Received-SPF".to_string(), received_spf(deciding)));
        }
        result
    }
}

impl Check for SpfCheck {
    fn auth_method(&self) -> Option<&'static str> {
        Some("spf")
    }

    /// The MAIL FROM identity exists at MAIL FROM.
    fn inputs(&self) -> Stage {
        Stage::Mail
    }

    /// Decided at end of message, so a fail can still be weighed with DMARC
    /// (and the dispatch branch chooses the action); `decide_at` moves it.
    fn decides(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.evaluate(&input).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::require_tls::tests::{build_err, input, run, try_build};
    use crate::message::Envelope;
    use crate::tables::TableSet;

    #[test]
    fn only_spf_records_are_kept_and_answered() {
        use mail_auth::common::parse::TxtRecordParser;
        use std::time::Duration;
        let store = TtlCache::new(16);
        let cache = SpfRecords(&store);
        let later = Instant::now() + Duration::from_secs(60);
        let record = mail_auth::spf::Spf::parse(b"v=spf1 ip4:192.0.2.10 -all").unwrap();
        let explanation = mail_auth::spf::Macro::parse(b"go away").unwrap();

        cache.insert("spf.test.".into(), Txt::Spf(Arc::new(record)), later);
        cache.insert(
            "exp.test.".into(),
            Txt::SpfMacro(Arc::new(explanation)),
            later,
        );
        cache.insert(
            "none.test.".into(),
            Txt::Error(mail_auth::Error::Dns(
                mail_auth::DnsError::InvalidRecordType,
            )),
            later,
        );
        assert!(matches!(cache.get("spf.test."), Some(Txt::Spf(_))));
        assert!(cache.get("exp.test.").is_none());
        assert!(cache.get("none.test.").is_none());
        assert_eq!(store.len(), 1, "only the SPF record is kept");

        // Whatever else the store holds under a name, it is no SPF answer.
        let other = mail_auth::spf::Macro::parse(b"text").unwrap();
        store.put("shared.test.", Txt::SpfMacro(Arc::new(other)), later);
        assert!(cache.get("shared.test.").is_none());
        assert!(cache.remove("spf.test.").is_none());
    }

    /// A resolver that can only reach the loopback discard port: unit tests
    /// never send DNS traffic anywhere else.
    fn loopback_dns() -> Arc<Dns> {
        crate::dns::unreachable_for_tests()
    }

    fn outcome(checked: Checked, result: SpfResult) -> SpfOutcome {
        SpfOutcome {
            checked,
            domain: "example.org".into(),
            output: SpfOutput::new("example.org".into()).with_result(result),
            ip: Some("192.0.2.99".parse().unwrap()),
            helo: "mx.example.net".into(),
            sender: "alice@example.org".into(),
            note: None,
        }
    }

    #[test]
    fn every_result_maps_to_its_status() {
        let cases = [
            (SpfResult::Pass, Status::Pass),
            (SpfResult::Fail, Status::Fail),
            (SpfResult::SoftFail, Status::Softfail),
            (SpfResult::Neutral, Status::Neutral),
            (SpfResult::None, Status::None),
            (SpfResult::TempError, Status::Temperror),
            (SpfResult::PermError, Status::Permerror),
        ];
        for (r, s) in cases {
            assert_eq!(status_of(r), s, "{r}");
        }
    }

    #[test]
    fn reasons_and_fragments_name_the_identity() {
        let o = outcome(Checked::MailFrom, SpfResult::Fail);
        assert_eq!(reason(&o), "SPF fail for example.org from 192.0.2.99");
        assert_eq!(fragment(&o), "spf=fail smtp.mailfrom=example.org");
        let o = outcome(Checked::Helo, SpfResult::Pass);
        assert_eq!(fragment(&o), "spf=pass smtp.helo=mx.example.net");
        let mut o = outcome(Checked::Helo, SpfResult::None);
        o.helo = "[192.0.2.1]".into();
        assert_eq!(fragment(&o), "spf=none smtp.helo=\"[192.0.2.1]\"");
    }

    #[test]
    fn an_explanation_is_quoted_printable_and_bounded() {
        let o = outcome(Checked::MailFrom, SpfResult::Fail);
        let o = SpfOutcome {
            output: o
                .output
                .clone()
                .with_explanation(format!("go away\r\n{}", "x".repeat(500))),
            ..o
        };
        let r = reason(&o);
        assert!(
            r.starts_with("SPF fail for example.org from 192.0.2.99: go away"),
            "{r}"
        );
        assert!(!r.contains(['\r', '\n']));
        assert!(r.len() < 260, "{}", r.len());
    }

    #[test]
    fn received_spf_follows_rfc_7208_section_9_1() {
        let o = outcome(Checked::MailFrom, SpfResult::Pass);
        assert_eq!(
            received_spf(&o),
            "pass (domain of alice@example.org designates 192.0.2.99 as permitted sender) \
             client-ip=192.0.2.99; envelope-from=\"alice@example.org\"; helo=mx.example.net; \
             identity=mailfrom;"
        );
        let mut o = outcome(Checked::Helo, SpfResult::SoftFail);
        o.ip = Some("2001:db8::1".parse().unwrap());
        o.sender = String::new();
        let v = received_spf(&o);
        assert!(
            v.starts_with("softfail (domain of transitioning postmaster@mx.example.net"),
            "{v}"
        );
        assert!(v.contains("client-ip=\"2001:db8::1\";"), "{v}");
        assert!(
            v.contains("envelope-from=\"postmaster@mx.example.net\""),
            "{v}"
        );
        assert!(v.ends_with("identity=helo;"), "{v}");
        // A sender with parentheses cannot close the comment early.
        let mut o = outcome(Checked::MailFrom, SpfResult::Fail);
        o.sender = "a)b\"@example.org".into();
        let v = received_spf(&o);
        assert!(v.contains("a\\)b\"@example.org does not"), "{v}");
        assert!(v.contains("envelope-from=\"a)b\\\"@example.org\""), "{v}");
    }

    #[test]
    fn pvalues_are_tokens_or_quoted() {
        assert_eq!(pvalue("example.org"), "example.org");
        assert_eq!(pvalue("a b"), "\"a b\"");
        assert_eq!(pvalue("x@y"), "\"x@y\"");
        assert_eq!(pvalue(""), "\"\"");
    }

    #[test]
    fn options_are_validated() {
        let e = build_err(SpfCheck::build, "identity = \"envelope\"");
        assert!(e.contains("\"mail_from\", \"helo\", \"both\""), "{e}");
        assert!(e.contains("\"envelope\""), "{e}");
        let e = build_err(SpfCheck::build, "identity = 1");
        assert!(
            e.contains("found a integer") || e.contains("integer"),
            "{e}"
        );
        let e = build_err(SpfCheck::build, "received_spf = \"yes\"");
        assert!(e.contains("received_spf"), "{e}");
        let e = build_err(SpfCheck::build, "identiy = \"helo\"");
        assert!(e.contains("unknown key `identiy`"), "{e}");
        for ok in [
            "",
            "identity = \"helo\"",
            "identity = \"both\"\nreceived_spf = true",
        ] {
            let built = try_build(SpfCheck::build, ok, &TableSet::new());
            assert!(built.is_ok(), "{ok}: {:?}", built.err());
        }
        let check = try_build(SpfCheck::build, "", &TableSet::new()).unwrap();
        assert_eq!(check.inputs(), Stage::Mail);
        assert_eq!(check.decides(), Stage::Eom);
    }

    fn check(identity: Identity) -> Arc<dyn Check> {
        Arc::new(SpfCheck {
            dns: loopback_dns(),
            identity,
            received_spf: true,
        })
    }

    #[tokio::test]
    async fn without_a_client_address_the_result_is_none() {
        for identity in [Identity::MailFrom, Identity::Helo, Identity::Both] {
            let mut i = input(Stage::Mail);
            Arc::make_mut(&mut i.connection).helo = Some("mx.example.net".into());
            i.envelope = Some(Envelope {
                rewritten_sender: None,
                sender: Address::parse("<alice@example.org>").unwrap(),
                mail_args: vec![],
                recipients: vec![],
            });
            let r = run(&check(identity), i).await;
            assert_eq!(r.status, Status::None, "{identity:?}");
            assert_eq!(
                r.reason.as_deref(),
                Some("SPF none: no client IP address"),
                "{identity:?}"
            );
            assert_eq!(r.add_headers.len(), 1);
        }
    }

    #[tokio::test]
    async fn the_null_sender_without_helo_is_none_without_dns() {
        let mut i = input(Stage::Mail);
        Arc::make_mut(&mut i.connection).client_ip = Some("192.0.2.1".parse().unwrap());
        i.envelope = Some(Envelope {
            rewritten_sender: None,
            sender: Address::Null,
            mail_args: vec![],
            recipients: vec![],
        });
        let r = run(&check(Identity::MailFrom), i).await;
        assert_eq!(r.status, Status::None);
        assert_eq!(r.reason.as_deref(), Some("SPF none: no HELO name"));
        assert_eq!(r.auth_results.as_deref(), Some("spf=none"));
    }

    #[tokio::test]
    async fn the_mail_from_outcome_is_computed_once_per_message() {
        let mut i = input(Stage::Mail);
        i.envelope = Some(Envelope {
            rewritten_sender: None,
            sender: Address::parse("<alice@Example.ORG>").unwrap(),
            mail_args: vec![],
            recipients: vec![],
        });
        let dns = loopback_dns();
        let a = mail_from_outcome(&dns, &i).await.unwrap();
        let b = mail_from_outcome(&dns, &i).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.0.domain, "example.org");
        assert_eq!(a.0.sender, "alice@example.org");
    }
}
