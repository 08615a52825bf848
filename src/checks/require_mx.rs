//! The `require_mx` check: the envelope sender's domain must be able to
//! receive mail, so that bounces and replies can reach it. It passes when
//! the domain has MX records, or none but an A or AAAA record (the implicit
//! MX of RFC 5321 §5.1). No options.
//!
//! Results: pass as above; fail when the domain publishes a null MX
//! (RFC 7505: a single MX "0 ."), has neither MX nor A/AAAA records (or does
//! not exist), or is no valid domain name; temperror when DNS does not
//! answer; none for the null sender `<>`, a sender without a domain and an
//! address literal, which have nothing to look up. The check starts and
//! decides at MAIL FROM.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::address::{Address, normalize_domain};
use crate::dns::{Dns, DnsError};
use crate::stage::Stage;
use serde::Deserialize;
use std::sync::Arc;

/// `[checks.NAME]` with `kind = "require_mx"`: no keys of its own, only the
/// ones every check shares.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequireMxOptions {}

/// The `require_mx` check: the envelope sender's domain must be able to
/// receive mail.
pub struct RequireMxCheck {
    dns: Arc<Dns>,
}

/// What the MX records of a domain say about it, once fetched.
#[derive(Debug, PartialEq, Eq)]
enum MxAnswer<'a> {
    /// Only null MX records (exchange "."): the domain takes no mail.
    Null,
    /// The most preferred real exchange.
    Exchange(&'a str),
}

/// Read an MX answer as `Dns::mx` gives it: sorted by preference, the root
/// name as an empty exchange. A null MX mixed with real ones breaks RFC 7505
/// §3; the real ones are used then.
fn read_mx(records: &[(u16, String)]) -> MxAnswer<'_> {
    match records.iter().find(|(_, host)| !host.is_empty()) {
        Some((_, host)) => MxAnswer::Exchange(host),
        None => MxAnswer::Null,
    }
}

/// The domain to look up, or the result when there is none to look up.
fn sender_domain(sender: &Address) -> Result<String, CheckResult> {
    let raw = match sender {
        Address::Null => return Err(CheckResult::with_reason(Status::None, "null sender")),
        Address::Local(_) => {
            return Err(CheckResult::with_reason(
                Status::None,
                "the sender has no domain",
            ));
        }
        Address::Mailbox { domain, .. } => domain,
    };
    if raw.starts_with('[') {
        return Err(CheckResult::with_reason(
            Status::None,
            format!("the sender domain is an address literal {raw:?}"),
        ));
    }
    match normalize_domain(raw) {
        Ok(d) if d.len() <= 253 && d.split('.').all(|l| !l.is_empty() && l.len() <= 63) => Ok(d),
        _ => Err(CheckResult::fail(format!(
            "sender domain {raw:?} is not a valid domain name"
        ))),
    }
}

impl RequireMxCheck {
    /// Build it from its options and the shared resolver; `None` after
    /// reporting what is wrong, a broken resolver configuration included.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options = ctx.options.parse::<RequireMxOptions>();
        // The resolver's own error is named even when a key is unknown.
        let dns = ctx.resolver()?;
        let RequireMxOptions {} = options?;
        Some(Arc::new(RequireMxCheck { dns }))
    }

    async fn evaluate(&self, input: &CheckInput) -> CheckResult {
        let Some(envelope) = &input.envelope else {
            return CheckResult::permerror("the envelope sender is not available");
        };
        let domain = match sender_domain(&envelope.sender) {
            Ok(d) => d,
            Err(result) => return result,
        };
        match self.dns.mx(&domain).await {
            Ok(records) => match read_mx(&records) {
                MxAnswer::Exchange(host) => {
                    CheckResult::with_reason(Status::Pass, format!("{domain} has MX {host}"))
                }
                MxAnswer::Null => {
                    CheckResult::fail(format!("sender domain {domain} accepts no mail (null MX)"))
                }
            },
            Err(e @ DnsError::Temporary(_)) => {
                CheckResult::temperror(format!("MX lookup for {domain}: {e}"))
            }
            Err(DnsError::NotFound) => match self.dns.ips(&domain).await {
                Ok(_) => CheckResult::with_reason(
                    Status::Pass,
                    format!("{domain} has no MX but an address record"),
                ),
                Err(DnsError::NotFound) => CheckResult::fail(format!(
                    "sender domain {domain} has no MX and no A/AAAA record"
                )),
                Err(e @ DnsError::Temporary(_)) => {
                    CheckResult::temperror(format!("address lookup for {domain}: {e}"))
                }
            },
        }
    }
}

impl Check for RequireMxCheck {
    fn inputs(&self) -> Stage {
        Stage::Mail
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.evaluate(&input).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::require_tls::tests::{build_err, build_ok, input, run};
    use crate::message::Envelope;

    #[test]
    fn null_mx_is_recognised() {
        assert_eq!(read_mx(&[(0, String::new())]), MxAnswer::Null);
        assert_eq!(
            read_mx(&[(0, String::new()), (10, "mx.example".into())]),
            MxAnswer::Exchange("mx.example")
        );
        assert_eq!(
            read_mx(&[(5, "a.example".into()), (10, "b.example".into())]),
            MxAnswer::Exchange("a.example")
        );
    }

    #[test]
    fn sender_domains() {
        assert_eq!(
            sender_domain(&Address::parse("<joe@Example.ORG>").unwrap()),
            Ok("example.org".to_string())
        );
        let r = sender_domain(&Address::Null).unwrap_err();
        assert_eq!(r.status, Status::None);
        let r = sender_domain(&Address::parse("<postmaster>").unwrap()).unwrap_err();
        assert_eq!(r.status, Status::None);
        let r = sender_domain(&Address::parse("<joe@[192.0.2.1]>").unwrap()).unwrap_err();
        assert_eq!(r.status, Status::None);
        // A domain with an empty label does not even parse.
        assert!(Address::parse("<joe@bad..example>").is_err());
        let long = format!("joe@{}.example", "a".repeat(64));
        assert_eq!(
            sender_domain(&Address::parse(&long).unwrap())
                .unwrap_err()
                .status,
            Status::Fail
        );
    }

    #[tokio::test]
    async fn null_sender_is_none() {
        let check = build_ok(RequireMxCheck::build, "");
        assert_eq!(check.inputs(), Stage::Mail);
        assert_eq!(check.decides(), Stage::Mail);
        let mut i = input(Stage::Mail);
        i.envelope = Some(Envelope {
            rewritten_sender: None,
            sender: Address::Null,
            mail_args: vec![],
            recipients: vec![],
        });
        let r = run(&check, i).await;
        assert_eq!(r, CheckResult::with_reason(Status::None, "null sender"));
    }

    #[test]
    fn takes_no_options() {
        let e = build_err(RequireMxCheck::build, "fallback = false");
        assert!(e.contains("unknown key `fallback`"), "{e}");
    }
}
