//! The `iprev` check: forward-confirmed reverse DNS of the SMTP client
//! (RFC 8601 §3, the `iprev` method; first defined in RFC 5451). The PTR
//! names of the client address are looked up, then the addresses of each name
//! (A for an IPv4 client, AAAA for IPv6; an IPv4-mapped IPv6 client counts as
//! IPv4); the client passes when one name leads back to its address. At most
//! [`MAX_NAMES`] PTR names are tried, all at once. No options.
//!
//! Results (RFC 8601 §2.7.3): pass when a name confirms; fail when there is
//! no PTR record or no name confirms; temperror when a lookup failed and no
//! name confirmed; permerror when the PTR records name no valid host; none
//! when the client address is unknown (a local socket). The check starts at
//! connect and decides at MAIL (`decide_at` can change that). Its
//! Authentication-Results fragment reads
//! `iprev=pass policy.iprev=192.0.2.10 (mail.example.net)`.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::address::normalize_domain;
use crate::auth_results::{Property, ResInfo};
use crate::dns::{Dns, DnsError};
use crate::stage::Stage;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;

/// The most PTR names whose addresses are looked up: a client with more is
/// unusual, and each name costs a query.
pub const MAX_NAMES: usize = 10;

/// `[checks.NAME]` with `kind = "iprev"`: no keys of its own, only the
/// ones every check shares.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IprevOptions {}

/// The `iprev` check: forward-confirmed reverse DNS of the SMTP client.
pub struct IprevCheck {
    dns: Arc<Dns>,
}

/// The PTR names worth a forward lookup: valid host names, lowercased,
/// without repeats, at most [`MAX_NAMES`], in the order DNS gave them.
fn usable_names(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let Ok(d) = normalize_domain(n) else {
            continue;
        };
        let fits = d.len() <= 253 && d.split('.').all(|l| !l.is_empty() && l.len() <= 63);
        if fits && !d.starts_with('[') && !out.contains(&d) {
            out.push(d);
        }
        if out.len() == MAX_NAMES {
            break;
        }
    }
    out
}

/// A result with its Authentication-Results fragment (RFC 8601 §2.7.3, §3):
/// the confirmed name goes in a comment.
fn result(status: Status, ip: IpAddr, name: Option<&str>, reason: String) -> CheckResult {
    let mut r = CheckResult::with_reason(status, reason);
    let property = Property::new("policy", "iprev", ip.to_string());
    let property = match name {
        Some(n) => property.with_comment(n),
        None => property,
    };
    r.auth_results = Some(vec![ResInfo::new("iprev", status).with_property(property)]);
    r
}

/// "a.example" or "a.example, b.example", for reasons.
fn name_list(names: &[String]) -> String {
    names.join(", ")
}

impl IprevCheck {
    /// Build it from its options and the shared resolver; `None` after
    /// reporting what is wrong, a broken resolver configuration included.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options = ctx.options.parse::<IprevOptions>();
        // The resolver's own error is named even when a key is unknown.
        let dns = ctx.resolver()?;
        let IprevOptions {} = options?;
        Some(Arc::new(IprevCheck { dns }))
    }

    async fn evaluate(&self, input: &CheckInput) -> CheckResult {
        let Some(ip) = input.connection.client_ip.map(crate::ip::canonical) else {
            return CheckResult::with_reason(Status::None, "no client address");
        };
        let ptr = match self.dns.ptr(ip).await {
            Ok(names) => names,
            Err(DnsError::NotFound) => {
                return result(Status::Fail, ip, None, format!("no PTR record for {ip}"));
            }
            Err(e @ DnsError::Temporary(_)) => {
                return result(
                    Status::Temperror,
                    ip,
                    None,
                    format!("PTR lookup for {ip}: {e}"),
                );
            }
        };
        let names = usable_names(&ptr);
        if names.is_empty() {
            return result(
                Status::Permerror,
                ip,
                None,
                format!("the PTR records of {ip} name no valid host"),
            );
        }

        // Polled together in this task, not a task spawned per question:
        // nearly every answer comes from the cache, and a task (allocation,
        // scheduler, often a wakeup of the other worker thread) cost more
        // than the answer. Dropping the set cancels what is still running.
        let mut lookups = FuturesUnordered::new();
        for (i, name) in names.iter().enumerate() {
            let dns = &self.dns;
            lookups.push(async move {
                let confirmed = match ip {
                    IpAddr::V4(v4) => dns.ipv4(name).await.map(|a| a.contains(&v4)),
                    IpAddr::V6(v6) => dns.ipv6(name).await.map(|a| a.contains(&v6)),
                };
                (i, confirmed)
            });
        }
        let mut failed: Vec<(usize, DnsError)> = Vec::new();
        while let Some(outcome) = lookups.next().await {
            match outcome {
                // The first name that confirms decides; dropping the set
                // cancels the other lookups.
                (i, Ok(true)) => {
                    let name = &names[i];
                    return result(Status::Pass, ip, Some(name), format!("{ip} is {name}"));
                }
                (_, Ok(false) | Err(DnsError::NotFound)) => {}
                (i, Err(e)) => failed.push((i, e)),
            }
        }
        if let Some((i, e)) = failed.iter().min_by_key(|(i, _)| *i) {
            let what = names.get(*i).map_or("a PTR name", String::as_str);
            return result(
                Status::Temperror,
                ip,
                None,
                format!("address lookup for {what}: {e}"),
            );
        }
        let reason = match names.as_slice() {
            [one] => format!("{ip} is not an address of {one}"),
            many => format!(
                "{ip} is not an address of any of its PTR names ({})",
                name_list(many)
            ),
        };
        result(Status::Fail, ip, None, reason)
    }
}

impl Check for IprevCheck {
    fn auth_method(&self) -> Option<&'static str> {
        Some("iprev")
    }

    /// The client address is known at connect.
    fn inputs(&self) -> Stage {
        Stage::Connect
    }

    /// Refusing at MAIL lets the client see why.
    fn decides(&self) -> Stage {
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

    #[test]
    fn names_are_normalised_deduplicated_and_capped() {
        let ptr: Vec<String> = ["Mail.Example.NET", "mail.example.net", "bad..name", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(usable_names(&ptr), ["mail.example.net"]);
        let many: Vec<String> = (0..20).map(|n| format!("h{n}.example")).collect();
        let used = usable_names(&many);
        assert_eq!(used.len(), MAX_NAMES);
        assert_eq!(used[0], "h0.example");
        assert!(usable_names(&["a b.example".to_string()]).is_empty());
    }

    #[test]
    fn auth_results_fragments() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let r = result(Status::Pass, ip, Some("mail.example.net"), "x".into());
        assert_eq!(
            r.auth_text().as_deref(),
            Some("iprev=pass policy.iprev=192.0.2.10 (mail.example.net)")
        );
        let r = result(Status::Fail, ip, None, "x".into());
        assert_eq!(
            r.auth_text().as_deref(),
            Some("iprev=fail policy.iprev=192.0.2.10")
        );
    }

    #[test]
    fn mapped_clients_are_ipv4() {
        let ip: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
        assert_eq!(
            crate::ip::canonical(ip),
            "192.0.2.10".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn no_client_address_is_none() {
        let check = build_ok(IprevCheck::build, "");
        assert_eq!(check.inputs(), Stage::Connect);
        assert_eq!(check.decides(), Stage::Mail);
        let r = run(&check, input(Stage::Connect)).await;
        assert_eq!(r.status, Status::None);
        assert_eq!(r.auth_results, None);
    }

    #[test]
    fn takes_no_options() {
        let e = build_err(IprevCheck::build, "max_names = 3");
        assert!(e.contains("unknown key `max_names`"), "{e}");
    }
}
