//! The `require_tls` check: passes when the client talks to the MTA over TLS,
//! optionally of at least a given protocol version. Option: `min_version`
//! (optional; "TLSv1", "TLSv1.1", "TLSv1.2" or "TLSv1.3").

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::stage::Stage;
use serde::Deserialize;
use std::sync::Arc;

/// The versions an administrator may name in `min_version`.
#[derive(Clone, Copy, Deserialize)]
#[serde(expecting = "\"TLSv1\", \"TLSv1.1\", \"TLSv1.2\" or \"TLSv1.3\"")]
enum ConfigVersion {
    #[serde(rename = "TLSv1")]
    Tls1,
    #[serde(rename = "TLSv1.1")]
    Tls11,
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

impl ConfigVersion {
    /// The version's rank (as [`mta_rank`] gives it) and its name, for reasons.
    fn rank_and_name(self) -> (u8, &'static str) {
        match self {
            ConfigVersion::Tls1 => (2, "TLSv1"),
            ConfigVersion::Tls11 => (3, "TLSv1.1"),
            ConfigVersion::Tls12 => (4, "TLSv1.2"),
            ConfigVersion::Tls13 => (5, "TLSv1.3"),
        }
    }
}

/// `[checks.NAME]` with `kind = "require_tls"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequireTlsOptions {
    min_version: Option<ConfigVersion>,
}

/// The `require_tls` check: the client must use TLS, perhaps of a minimum
/// version.
pub struct RequireTlsCheck {
    /// The lowest acceptable rank and its name, for reasons.
    min_version: Option<(u8, &'static str)>,
}

/// Rank a protocol name as the MTA reports it (`{tls_version}`, which is
/// OpenSSL's name). SSL versions are known so that they fail as "older" rather
/// than as "unknown"; the MTA's spelling is matched loosely because Sendmail
/// and Postfix builds differ in case and in writing "TLSv1" as "TLSv1.0".
fn mta_rank(version: &str) -> Option<u8> {
    match version.trim().to_ascii_lowercase().as_str() {
        "sslv2" => Some(0),
        "sslv3" => Some(1),
        "tlsv1" | "tlsv1.0" => Some(2),
        "tlsv1.1" => Some(3),
        "tlsv1.2" => Some(4),
        "tlsv1.3" => Some(5),
        _ => None,
    }
}

/// A pass that says which version was used, for logs and Authentication-Results
/// comments; control characters are dropped so the reason stays one line.
fn passed(version: &str) -> CheckResult {
    let version: String = version.trim().chars().filter(|c| !c.is_control()).collect();
    if version.is_empty() {
        CheckResult::pass()
    } else {
        CheckResult::with_reason(Status::Pass, version)
    }
}

impl RequireTlsCheck {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let RequireTlsOptions { min_version } = ctx.options.parse()?;
        Some(Arc::new(RequireTlsCheck {
            min_version: min_version.map(ConfigVersion::rank_and_name),
        }))
    }

    fn decide(&self, input: &CheckInput) -> CheckResult {
        let Some(tls) = &input.connection.tls else {
            return CheckResult::fail("TLS required");
        };
        let Some((min_rank, min_name)) = self.min_version else {
            return passed(&tls.version);
        };
        // Debug formatting quotes the MTA's string and escapes control
        // characters, so the reason stays on one line whatever the MTA sent.
        match mta_rank(&tls.version) {
            None => CheckResult::fail(format!("unknown TLS version {:?}", tls.version)),
            Some(rank) if rank < min_rank => CheckResult::fail(format!(
                "TLS version {:?} is older than {min_name}",
                tls.version
            )),
            Some(_) => passed(&tls.version),
        }
    }
}

impl Check for RequireTlsCheck {
    /// TLS is known once the client has said EHLO again after STARTTLS.
    fn inputs(&self) -> Stage {
        Stage::Helo
    }

    /// Refusing at MAIL lets the client see why before sending anything.
    fn decides(&self) -> Stage {
        Stage::Mail
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.decide(&input) })
    }
}

/// Helpers shared by the tests of every check module.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checks::CheckBuildContext;
    use crate::config::error::Diagnostics;
    use crate::config::options::{Options, RawOptions};
    use crate::message::TlsInfo;
    use crate::tables::TableSet;
    use std::path::Path;

    pub(crate) type Builder = fn(&mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>>;

    /// Build a check from a flat TOML snippet of its kind-specific keys the
    /// way the config compiler does (including the unknown-key pass), and
    /// return the check or every error message.
    pub(crate) fn try_build(
        build: Builder,
        src: &str,
        tables: &TableSet,
    ) -> Result<Arc<dyn Check>, Vec<String>> {
        let raw: RawOptions = toml::from_str(src).unwrap();
        let mut diag = Diagnostics::new(Path::new("t.toml"), src);
        let built = {
            let mut opts = Options::new("check \"t\"".into(), 0..0, raw, &mut diag);
            let built = {
                let mut ctx = CheckBuildContext {
                    name: "t",
                    options: &mut opts,
                    tables,
                    base_dir: Path::new("/nonexistent-config-dir"),
                    dns: &crate::dns::DnsProvider::new(crate::dns::DnsSettings::default()),
                };
                build(&mut ctx)
            };
            opts.finish();
            built
        };
        let errors: Vec<String> = diag
            .into_errors()
            .0
            .into_iter()
            .map(|e| e.message)
            .collect();
        match built {
            Some(check) if errors.is_empty() => Ok(check),
            None if errors.is_empty() => panic!("builder returned None without an error"),
            _ => Err(errors),
        }
    }

    pub(crate) fn build_ok(build: Builder, src: &str) -> Arc<dyn Check> {
        build_ok_with(build, src, &TableSet::new())
    }

    pub(crate) fn build_ok_with(build: Builder, src: &str, tables: &TableSet) -> Arc<dyn Check> {
        match try_build(build, src, tables) {
            Ok(check) => check,
            Err(errors) => panic!("unexpected config errors: {errors:?}"),
        }
    }

    /// The errors a snippet produces, joined for `contains` assertions.
    pub(crate) fn build_err(build: Builder, src: &str) -> String {
        match try_build(build, src, &TableSet::new()) {
            Ok(_) => panic!("config {src:?} was accepted"),
            Err(errors) => errors.join("\n"),
        }
    }

    pub(crate) fn input(stage: Stage) -> CheckInput {
        CheckInput {
            stage,
            connection: Arc::default(),
            envelope: None,
            message: None,
            queue_id: None,
            evidence: Default::default(),
        }
    }

    pub(crate) async fn run(check: &Arc<dyn Check>, input: CheckInput) -> CheckResult {
        check.clone().run(Arc::new(input)).await
    }

    fn with_tls(version: &str) -> CheckInput {
        let mut i = input(Stage::Helo);
        Arc::make_mut(&mut i.connection).tls = Some(TlsInfo {
            version: version.into(),
            cipher: None,
        });
        i
    }

    #[tokio::test]
    async fn plain_connection_fails() {
        let check = build_ok(RequireTlsCheck::build, "");
        assert_eq!(check.inputs(), Stage::Helo);
        assert_eq!(check.decides(), Stage::Mail);
        let r = run(&check, input(Stage::Helo)).await;
        assert_eq!(r, CheckResult::fail("TLS required"));
    }

    #[tokio::test]
    async fn any_tls_passes_without_min_version() {
        let check = build_ok(RequireTlsCheck::build, "");
        let r = run(&check, with_tls("TLSv1")).await;
        assert_eq!(r.status, Status::Pass);
        assert_eq!(r.reason.as_deref(), Some("TLSv1"));
        // Even a version nobody knows is TLS when no minimum is asked for.
        let r = run(&check, with_tls("QUIC9")).await;
        assert_eq!(r.status, Status::Pass);
    }

    #[tokio::test]
    async fn min_version_compares_by_rank() {
        let check = build_ok(RequireTlsCheck::build, "min_version = \"TLSv1.2\"");
        assert_eq!(run(&check, with_tls("TLSv1.3")).await.status, Status::Pass);
        assert_eq!(run(&check, with_tls("TLSv1.2")).await.status, Status::Pass);
        // Some MTAs spell the oldest TLS "TLSv1.0".
        let r = run(&check, with_tls("TLSv1.0")).await;
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.reason.as_deref(),
            Some("TLS version \"TLSv1.0\" is older than TLSv1.2")
        );
        assert_eq!(run(&check, with_tls("TLSv1.1")).await.status, Status::Fail);
        assert_eq!(run(&check, with_tls("SSLv3")).await.status, Status::Fail);
        assert_eq!(run(&check, with_tls("tlsv1.3")).await.status, Status::Pass);
    }

    #[tokio::test]
    async fn unknown_mta_version_fails_naming_it() {
        let check = build_ok(RequireTlsCheck::build, "min_version = \"TLSv1\"");
        let r = run(&check, with_tls("TLSv9\r\nX")).await;
        assert_eq!(r.status, Status::Fail);
        let reason = r.reason.unwrap();
        assert!(reason.contains("TLSv9"), "{reason}");
        assert!(!reason.contains(['\r', '\n']), "{reason}");
    }

    #[test]
    fn bad_min_version_is_a_config_error() {
        let e = build_err(RequireTlsCheck::build, "min_version = \"TLSv1.4\"");
        assert_eq!(
            e,
            "`min_version` in check \"t\" must be \"TLSv1\", \"TLSv1.1\", \"TLSv1.2\" \
             or \"TLSv1.3\", found \"TLSv1.4\""
        );
        let e = build_err(RequireTlsCheck::build, "min_version = 1.2");
        assert_eq!(
            e,
            "`min_version` in check \"t\" must be \"TLSv1\", \"TLSv1.1\", \"TLSv1.2\" \
             or \"TLSv1.3\", found 1.2"
        );
        let e = build_err(RequireTlsCheck::build, "min_versoin = \"TLSv1.2\"");
        assert!(e.contains("unknown key `min_versoin`"), "{e}");
    }
}
