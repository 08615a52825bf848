//! The `arc` check: validates the message's ARC chain (RFC 8617) with
//! mail-auth through the shared resolver and reports it as `arc=<result>` in
//! Authentication-Results. It has no options of its own.
//!
//! Results: `pass` (a complete chain whose newest AMS and every seal
//! verify), `fail` (a broken, malformed or unverifiable chain, including a
//! body altered after the newest seal and a seal key that is not
//! published; and, as RFC 8617 §4.2.1 and §5.2 say, a set sealed with
//! `cv=fail` upstream, a first set whose cv= is not `none`, instances that
//! are not 1 to N once each, and more than 50 sets: tests/it/arc_rfc8617.rs), `none` (no ARC headers), `temperror` (a DNS failure while
//! fetching a key: the chain could be fine). Act on them with the usual
//! `on_<result>` keys; by default a `fail` rejects, so an administrator who
//! only wants the report sets `on_fail = "ignore"`.
//!
//! The validation (crate::auth::arc) is a fact of the message's evidence,
//! together with the domain of the newest ARC-Seal, so the `dmarc` check
//! can override a DMARC failure when the chain passes and was sealed by a
//! trusted forwarder (`trusted_arc_sealers`), without validating the chain
//! a second time.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Early};
use crate::auth::arc::ArcFacts;
use crate::dns::Dns;
use crate::stage::Stage;
use serde::Deserialize;
use std::sync::Arc;

/// The check result for validated facts.
pub fn result(f: &ArcFacts) -> CheckResult {
    let mut r = CheckResult::with_reason(f.status, f.reason.clone());
    r.auth_results = Some(vec![crate::auth_results::ResInfo::new("arc", f.status)]);
    r
}

/// `[checks.NAME]` with `kind = "arc"`: no keys of its own, only the
/// ones every check shares.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArcOptions {}

/// The `arc` check: validates the message's ARC chain (RFC 8617).
pub struct ArcCheck {
    dns: Arc<Dns>,
}

impl ArcCheck {
    /// Build it from its options and the shared resolver; `None` after
    /// reporting what is wrong, a broken resolver configuration included.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options = ctx.options.parse::<ArcOptions>();
        // The resolver's own error is named even when a key is unknown.
        let dns = ctx.resolver()?;
        let ArcOptions {} = options?;
        Some(Arc::new(ArcCheck { dns }))
    }
}

impl Check for ArcCheck {
    fn auth_method(&self) -> Option<&'static str> {
        Some("arc")
    }

    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn needs_body(&self) -> bool {
        true
    }

    /// Fetch the keys of each ARC set as its headers arrive.
    fn prefetch(&self, early: &Early<'_>) {
        if let Some((name, value)) = early.header {
            early.evidence.keys().arc_keys(&self.dns, name, value);
        }
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move {
            if input.message.is_none() {
                return CheckResult::temperror("no message to validate");
            }
            let message = input.message.as_deref();
            result(&*input.evidence.arc(&self.dns, message).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::arc::{facts_from, status_of};
    use crate::checks::Status;
    use crate::checks::require_tls::tests::{build_err, input, run, try_build};
    use crate::message::{Header, Message};
    use crate::tables::TableSet;
    use mail_auth::arc::ArcError;
    use mail_auth::common::crypto::CryptoError;
    use mail_auth::{DkimResult, DnsError, Error};

    #[test]
    fn chain_results_map_to_none_pass_fail() {
        assert_eq!(status_of(&DkimResult::Pass), Status::Pass);
        assert_eq!(status_of(&DkimResult::None), Status::None);
        for r in [
            DkimResult::Fail(Error::Arc(ArcError::BrokenChain)),
            DkimResult::Neutral(Error::Arc(ArcError::FailedBodyHashMatch)),
            DkimResult::PermError(Error::Dns(DnsError::RecordNotFound(
                mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain,
            ))),
            DkimResult::Fail(Error::Crypto(CryptoError::FailedVerification)),
        ] {
            assert_eq!(status_of(&r), Status::Fail, "{r:?}");
        }
        assert_eq!(
            status_of(&DkimResult::TempError(Error::Dns(DnsError::Resolver(
                "timeout".into()
            )))),
            Status::Temperror
        );
    }

    #[test]
    fn results_name_the_sealer_and_the_problem() {
        let f = facts_from(&DkimResult::Pass, 2, Some("list.example".into()));
        let r = result(&f);
        assert_eq!(r.status, Status::Pass);
        assert_eq!(
            r.reason.as_deref(),
            Some("ARC pass, 2 set(s), newest seal by list.example")
        );
        assert_eq!(r.auth_text().as_deref(), Some("arc=pass"));
        let f = facts_from(&DkimResult::Fail(Error::Arc(ArcError::InvalidCV)), 1, None);
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.reason.starts_with("ARC fail: Invalid 'cv='"),
            "{}",
            f.reason
        );
        let f = facts_from(&DkimResult::None, 0, None);
        assert_eq!(result(&f).auth_text().as_deref(), Some("arc=none"));
        assert_eq!(f.reason, "no ARC chain");
    }

    #[test]
    fn there_are_no_options() {
        let e = build_err(ArcCheck::build, "trusted = [\"x\"]");
        assert!(e.contains("unknown key `trusted`"), "{e}");
        let check =
            try_build(ArcCheck::build, "", &TableSet::new()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(check.inputs(), Stage::Eom);
        assert!(check.needs_body());
    }

    #[tokio::test]
    async fn a_message_without_arc_headers_is_none() {
        let check: Arc<dyn Check> = Arc::new(ArcCheck {
            dns: crate::dns::unreachable_for_tests(),
        });
        let mut i = input(Stage::Eom);
        i.message = Some(Arc::new(Message {
            headers: vec![Header::new("From", "a@example.org")],
            body: b"hi\r\n".as_slice().into(),
            body_truncated: false,
            size: 0,
        }));
        let r = run(&check, i).await;
        assert_eq!(r.status, Status::None);
        assert_eq!(r.auth_text().as_deref(), Some("arc=none"));
    }
}
