//! The `require_auth` check: passes when the client authenticated with SMTP
//! AUTH, optionally with one of the listed SASL mechanisms. Option:
//! `mechanisms` (optional string list such as ["PLAIN", "LOGIN"], any case).

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::config::options::OneOrMany;
use crate::stage::Stage;
use serde::Deserialize;
use std::sync::Arc;

/// `[checks.NAME]` with `kind = "require_auth"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequireAuthOptions {
    mechanisms: Option<OneOrMany>,
}

/// The `require_auth` check: the client must have authenticated with SMTP AUTH.
pub struct RequireAuthCheck {
    /// Allowed mechanisms, upper-cased (SASL names are case-insensitive,
    /// RFC 4422 §3.1); `None` allows any.
    mechanisms: Option<Vec<String>>,
}

impl RequireAuthCheck {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let RequireAuthOptions { mechanisms } = ctx.options.parse()?;
        let mechanisms = match mechanisms {
            None => None,
            Some(OneOrMany(list)) => {
                let list: Vec<String> =
                    list.iter().map(|m| m.trim().to_ascii_uppercase()).collect();
                // An empty list would refuse every client, which is never what
                // someone who wrote the key meant.
                if list.is_empty() || list.iter().any(String::is_empty) {
                    ctx.options.invalid(
                        "mechanisms",
                        "must list SASL mechanism names such as [\"PLAIN\", \"LOGIN\"]; remove it to allow any mechanism",
                    );
                    return None;
                }
                Some(list)
            }
        };
        Some(Arc::new(RequireAuthCheck { mechanisms }))
    }

    fn decide(&self, input: &CheckInput) -> CheckResult {
        let Some(auth) = &input.connection.auth else {
            return CheckResult::fail("authentication required");
        };
        if let Some(allowed) = &self.mechanisms {
            let Some(mechanism) = &auth.mechanism else {
                // The MTA is not passing {auth_type}: a setup problem, not
                // the client's fault.
                return CheckResult::permerror(
                    "the MTA did not report the authentication mechanism",
                );
            };
            let wanted = mechanism.trim().to_ascii_uppercase();
            if !allowed.contains(&wanted) {
                // Debug quoting keeps client-chosen text on one line.
                return CheckResult::fail(format!(
                    "authentication mechanism {mechanism:?} not allowed"
                ));
            }
        }
        CheckResult::with_reason(Status::Pass, format!("authenticated as {:?}", auth.user))
    }
}

impl Check for RequireAuthCheck {
    /// AUTH happens before MAIL, and its macros arrive with MAIL FROM.
    fn inputs(&self) -> Stage {
        Stage::Mail
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.decide(&input) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::require_tls::tests::{build_err, build_ok, input, run};
    use crate::message::AuthInfo;

    fn authed(mechanism: Option<&str>) -> CheckInput {
        let mut i = input(Stage::Mail);
        Arc::make_mut(&mut i.connection).auth = Some(AuthInfo {
            user: "alice".into(),
            mechanism: mechanism.map(str::to_string),
        });
        i
    }

    #[tokio::test]
    async fn unauthenticated_fails() {
        let check = build_ok(RequireAuthCheck::build, "");
        assert_eq!(check.inputs(), Stage::Mail);
        assert_eq!(check.decides(), Stage::Mail);
        let r = run(&check, input(Stage::Mail)).await;
        assert_eq!(r, CheckResult::fail("authentication required"));
    }

    #[tokio::test]
    async fn any_mechanism_passes_without_list() {
        let check = build_ok(RequireAuthCheck::build, "");
        let r = run(&check, authed(Some("CRAM-MD5"))).await;
        assert_eq!(r.status, Status::Pass);
        let r = run(&check, authed(None)).await;
        assert_eq!(r.status, Status::Pass);
    }

    #[tokio::test]
    async fn mechanisms_compare_case_insensitively() {
        let check = build_ok(
            RequireAuthCheck::build,
            "mechanisms = [\"plain\", \"Login\"]",
        );
        assert_eq!(
            run(&check, authed(Some("PLAIN"))).await.status,
            Status::Pass
        );
        assert_eq!(
            run(&check, authed(Some("login"))).await.status,
            Status::Pass
        );
        let r = run(&check, authed(Some("CRAM-MD5"))).await;
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.reason.as_deref(),
            Some("authentication mechanism \"CRAM-MD5\" not allowed")
        );
        // A single string is a list of one.
        let check = build_ok(RequireAuthCheck::build, "mechanisms = \"PLAIN\"");
        assert_eq!(
            run(&check, authed(Some("LOGIN"))).await.status,
            Status::Fail
        );
    }

    #[tokio::test]
    async fn missing_mechanism_macro_is_a_setup_error() {
        let check = build_ok(RequireAuthCheck::build, "mechanisms = [\"PLAIN\"]");
        let r = run(&check, authed(None)).await;
        assert_eq!(r.status, Status::Permerror);
    }

    #[test]
    fn bad_mechanisms_are_config_errors() {
        let e = build_err(RequireAuthCheck::build, "mechanisms = []");
        assert_eq!(
            e,
            "`mechanisms` in check \"t\" must list SASL mechanism names such as \
             [\"PLAIN\", \"LOGIN\"]; remove it to allow any mechanism"
        );
        let e = build_err(RequireAuthCheck::build, "mechanisms = [1]");
        assert_eq!(
            e,
            "`mechanisms[0]` in check \"t\" must be a string, found 1"
        );
        let e = build_err(RequireAuthCheck::build, "mechanism = \"PLAIN\"");
        assert!(e.starts_with("unknown key `mechanism`"), "{e}");
    }
}
