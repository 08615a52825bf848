//! SPF (RFC 7208): check_host() by our own evaluator. `spf/record.rs`
//! parses a record (a syntax error anywhere is `permerror`, §4.6),
//! `spf/eval.rs` walks it over the shared resolver (`Dns`), its cache and
//! timeouts. The `spf` check (crate::checks::spf) says why neither
//! mail-auth's nor viaspf's evaluator is used, and maps the outcome to a
//! check result; DMARC reads the same outcome from the message's
//! [`Evidence`](super::Evidence).

use crate::address::Address;
use crate::auth_results::Status;
use crate::dns::Dns;
use crate::message::ConnectionFacts;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

mod eval;
pub mod record;

/// Time for one whole evaluation (RFC 7208 §4.6.4: "at least 20
/// seconds"); past it the result is `temperror`. The check's own timeout
/// (`timeout`, 10 s by default) usually ends it first, with the same result.
const EVALUATION_TIMEOUT: Duration = Duration::from_secs(20);

/// The host name of the checking host: `receiver=` of `Received-SPF`
/// (RFC 7208 §9.1) and the `%{r}` macro (§7.3). The system's host name when
/// it is a usable domain name, else "unknown" (what §7.3 suggests).
pub fn receiver() -> &'static str {
    static RECEIVER: OnceLock<String> = OnceLock::new();
    RECEIVER.get_or_init(|| {
        let name = gethostname::gethostname();
        let name = name.to_str().unwrap_or("").trim_end_matches('.');
        let usable = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if usable {
            name.to_ascii_lowercase()
        } else {
            "unknown".to_string()
        }
    })
}

/// Which identity one evaluation was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The HELO/EHLO name (RFC 7208 §2.3).
    Helo,
    /// The envelope sender given at MAIL FROM (§2.4).
    MailFrom,
}

/// One SPF evaluation, owned so it can be memoised and shared with DMARC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfOutcome {
    /// Which identity was checked.
    pub checked: Checked,
    /// The domain whose record was evaluated (empty when none could be).
    pub domain: String,
    /// The result of check_host() (RFC 7208 §2.6): SPF's seven results are
    /// exactly the check vocabulary.
    pub result: Status,
    /// The `exp=` explanation of a `fail` (§6.2), as expanded.
    pub explanation: Option<String>,
    /// The mechanism that matched, or "default" when none did (§9.1).
    pub mechanism: Option<String>,
    /// What went wrong, for `temperror` and `permerror` (§9.1 `problem`).
    pub problem: Option<String>,
    /// The client address as evaluated: an IPv4-mapped IPv6 address is its
    /// IPv4 address (§5: `ip4` and `a` then apply, RFC 4291 §2.5.5.2).
    pub ip: Option<IpAddr>,
    /// The HELO name as the client sent it ("" when it sent none).
    pub helo: String,
    /// The <sender> of check_host() (§4.1): the envelope sender for the
    /// MAIL FROM identity, "" for the HELO identity.
    pub sender: String,
    /// Why nothing could be evaluated, when that is the case.
    pub note: Option<&'static str>,
}

impl SpfOutcome {
    /// The check status this outcome gives: the SPF result itself.
    pub fn status(&self) -> Status {
        self.result
    }
}

/// The HELO name for SPF: trimmed, without a trailing dot.
pub(crate) fn helo_name(connection: &ConnectionFacts) -> String {
    connection
        .helo
        .as_deref()
        .map(|h| h.trim().trim_end_matches('.').to_string())
        .unwrap_or_default()
}

pub(crate) fn not_evaluated(
    checked: Checked,
    domain: String,
    helo: String,
    note: &'static str,
) -> SpfOutcome {
    SpfOutcome {
        checked,
        domain,
        result: Status::None,
        explanation: None,
        mechanism: None,
        problem: None,
        ip: None,
        helo,
        sender: String::new(),
        note: Some(note),
    }
}

/// What check_host() is asked (RFC 7208 §4.1).
#[derive(Clone, Copy, Debug)]
pub struct SpfQuery<'a> {
    /// Which identity to check.
    pub checked: Checked,
    /// The SMTP client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO name as given, without a trailing dot ("" for none).
    pub helo: &'a str,
    /// For the MAIL FROM identity, the envelope sender `local@domain`
    /// (the domain in A-labels); ignored for the HELO identity.
    pub sender: &'a str,
}

/// Evaluates one identity (RFC 7208 §2.3, §2.4, §4) through `dns`.
pub async fn evaluate(dns: &Dns, query: SpfQuery<'_>) -> SpfOutcome {
    // §5: an IPv4-mapped IPv6 address is the IPv4 client it stands for
    // (RFC 4291 §2.5.5.2): `ip4`, `a` with A records and `%{i}` apply.
    let ip = query.ip.to_canonical();
    let helo = query.helo;
    let (sender, local, domain) = match query.checked {
        // §2.3: the HELO identity is checked as postmaster@<helo>.
        Checked::Helo => (String::new(), "postmaster", helo),
        Checked::MailFrom => {
            let (local, domain) = query.sender.rsplit_once('@').unwrap_or(("", query.sender));
            // §4.3: a sender without a local part is "postmaster".
            let local = if local.is_empty() {
                "postmaster"
            } else {
                local
            };
            (query.sender.to_string(), local, domain)
        }
    };
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    let mut outcome = SpfOutcome {
        checked: query.checked,
        domain: domain.clone(),
        result: Status::None,
        explanation: None,
        mechanism: None,
        problem: None,
        ip: Some(ip),
        helo: helo.to_string(),
        sender,
        note: None,
    };
    // §4.3: a malformed domain, or one that is not a multi-label domain
    // name (an address literal, a bare host name), is `none` at once.
    if !eval::is_checkable_domain(&domain) {
        outcome.note = Some("not a domain name that SPF can check");
        return outcome;
    }
    let params = eval::Params {
        ip,
        local,
        sender_domain: &domain,
        helo,
        receiver: receiver(),
    };
    // §4.6.4: the whole evaluation is bounded in time too.
    let evaluated =
        tokio::time::timeout(EVALUATION_TIMEOUT, eval::check_host(dns, &params, &domain))
            .await
            .unwrap_or_else(|_| {
                Err(eval::Failed::Temporary(
                    "evaluation took longer than 20 seconds".to_string(),
                ))
            });
    match evaluated {
        Ok(finished) => {
            outcome.result = finished.result;
            outcome.mechanism = finished.mechanism;
            outcome.explanation = finished.explanation;
        }
        Err(eval::Failed::Temporary(problem)) => {
            outcome.result = Status::Temperror;
            outcome.problem = Some(problem);
        }
        Err(eval::Failed::Permanent(problem)) => {
            outcome.result = Status::Permerror;
            outcome.problem = Some(problem);
        }
    }
    outcome
}

pub(crate) async fn evaluate_helo(dns: &Dns, connection: &ConnectionFacts) -> SpfOutcome {
    let helo = helo_name(connection);
    let Some(ip) = connection.client_ip else {
        return not_evaluated(Checked::Helo, helo.clone(), helo, "no client IP address");
    };
    if helo.is_empty() {
        let mut o = not_evaluated(Checked::Helo, String::new(), helo, "no HELO name");
        o.ip = Some(ip.to_canonical());
        return o;
    }
    let query = SpfQuery {
        checked: Checked::Helo,
        ip,
        helo: &helo,
        sender: "",
    };
    evaluate(dns, query).await
}

/// The envelope sender as SPF wants it: the local part as spelled, the
/// domain normalised to its A-label form (DNS names are ASCII, §4.3).
fn spf_sender(sender: &Address) -> String {
    match (sender.original_local(), sender.domain()) {
        (Some(local), Some(domain)) => format!("{local}@{domain}"),
        _ => sender.original().to_string(),
    }
}

pub(crate) async fn evaluate_mail_from(
    dns: &Dns,
    connection: &ConnectionFacts,
    sender: &Address,
) -> SpfOutcome {
    let helo = helo_name(connection);
    let sender = spf_sender(sender);
    let Some(ip) = connection.client_ip else {
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        let mut o = not_evaluated(Checked::MailFrom, domain, helo, "no client IP address");
        o.sender = sender;
        return o;
    };
    let query = SpfQuery {
        checked: Checked::MailFrom,
        ip,
        helo: &helo,
        sender: &sender,
    };
    evaluate(dns, query).await
}
