//! The `authorize_sender` check: an authenticated user may only use the
//! envelope senders and From: addresses a table grants them, so one account
//! cannot send mail as another.
//!
//! Options: `table` (required; a table name or an inline table): key = SASL
//! user name, values = allowed addresses, each `alice@example.org`,
//! `*@example.org` or `@example.org` (any local part in that domain).
//! `check_envelope` (default true): check MAIL FROM; the null sender `<>` is
//! always allowed, since bounces have no sender. `check_header_from` (default
//! true): check every address in every From: header. At least one must be
//! true. Unauthenticated sessions get "none": demanding AUTH is the job of
//! `require_auth`.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::address::{Address, normalize_domain};
use crate::message::address_list::address_list;
use crate::stage::Stage;
use crate::tables::{Table, TableRef};
use serde::Deserialize;
use std::sync::Arc;

/// `[checks.NAME]` with `kind = "authorize_sender"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeSenderOptions {
    /// SASL user name to the addresses that user may send as.
    table: TableRef,
    #[serde(default = "yes")]
    check_envelope: bool,
    #[serde(default = "yes")]
    check_header_from: bool,
}

/// Both parts are checked unless one is turned off.
fn yes() -> bool {
    true
}

/// The `authorize_sender` check: the addresses an authenticated user may send
/// as, by table.
pub struct AuthorizeSenderCheck {
    table: Arc<Table>,
    check_envelope: bool,
    check_header_from: bool,
}

/// Whether any table value grants this address. Values are parsed on every
/// lookup because file tables reload behind our back.
fn granted(values: &[String], address: &Address) -> bool {
    if address.is_null() {
        return false;
    }
    values.iter().any(|value| {
        let value = value.trim();
        let domain_rule = value.strip_prefix("*@").or_else(|| value.strip_prefix('@'));
        match domain_rule {
            Some(domain) => match normalize_domain(domain) {
                Ok(domain) => address.domain() == Some(domain.as_str()),
                Err(e) => {
                    tracing::warn!(value, error = %e, "authorize_sender: table value ignored");
                    false
                }
            },
            None => match Address::parse_config(value) {
                Ok(allowed) => !allowed.is_null() && allowed.key() == address.key(),
                Err(e) => {
                    tracing::warn!(value, error = %e, "authorize_sender: table value ignored");
                    false
                }
            },
        }
    })
}

/// The addresses of a From: header to check: each mailbox's address (read
/// by `message::address_list`), and every word with an '@' in the comments
/// beside it (`alice@example.org (ceo@bank.example)`), because some readers
/// show comments as if they were the address: checking too much is the safe
/// side for an anti-spoofing check. `None` when any of them cannot be read:
/// an address that cannot be read is granted to no one. Public for the fuzz
/// target that feeds it hostile From: values (fuzz/README.md).
pub fn from_addresses(value: &str) -> Option<Vec<Address>> {
    let mut out = Vec::new();
    for mailbox in address_list(value) {
        let mailbox = mailbox.ok()?;
        let in_comments = mailbox
            .comments()
            .iter()
            .flat_map(|c| c.split_whitespace())
            .filter(|w| w.contains('@'))
            .map(|w| w.trim_matches(|c: char| "\"'()<>;:,".contains(c)));
        for candidate in std::iter::once(mailbox.addr_spec()).chain(in_comments) {
            match Address::parse(candidate) {
                Ok(a) if !a.is_null() => out.push(a),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
    Some(out)
}

impl AuthorizeSenderCheck {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options: AuthorizeSenderOptions = ctx
            .options
            .required(
                "table",
                "\"senders\" or { alice = [\"alice@example.org\"] }",
            )
            .parse()?;
        let table = options.table.resolve(ctx.options, ctx.tables, "table");
        let (check_envelope, check_header_from) =
            (options.check_envelope, options.check_header_from);
        let mut ok = table.is_some();
        if !check_envelope && !check_header_from {
            let what = ctx.options.what().to_string();
            let span = ctx.options.span();
            ctx.options.error(
                span,
                format!(
                    "{what} checks nothing: set `check_envelope` or `check_header_from` to true"
                ),
            );
            ok = false;
        }

        let table = table.filter(|_| ok)?;
        Some(Arc::new(AuthorizeSenderCheck {
            table,
            check_envelope,
            check_header_from,
        }))
    }

    fn decide(&self, input: &CheckInput) -> CheckResult {
        let Some(auth) = &input.connection.auth else {
            return CheckResult::with_reason(Status::None, "not authenticated");
        };
        // Debug formatting quotes names and addresses and escapes anything
        // that would break a one-line SMTP reply.
        let user = &auth.user;
        let Some(values) = self.table.lookup(user) else {
            return CheckResult::fail(format!("user {user:?} may not send mail"));
        };
        if self.check_envelope {
            let Some(envelope) = &input.envelope else {
                return CheckResult::permerror("the envelope sender is not available");
            };
            let sender = &envelope.sender;
            // Bounces carry the null sender and belong to no one.
            if !sender.is_null() && !granted(&values, sender) {
                return CheckResult::fail(format!(
                    "user {user:?} may not use sender {:?}",
                    sender.original()
                ));
            }
        }
        if self.check_header_from {
            let Some(message) = &input.message else {
                return CheckResult::permerror("the message headers are not available");
            };
            // A message without From: is left alone: it impersonates no one,
            // and MTAs that add one take the envelope sender, which
            // `check_envelope` covers.
            for value in message.header_values("From") {
                let addresses = from_addresses(value).unwrap_or_default();
                if addresses.is_empty() {
                    return CheckResult::fail("unparsable From header");
                }
                if let Some(refused) = addresses.iter().find(|a| !granted(&values, a)) {
                    return CheckResult::fail(format!(
                        "user {user:?} may not use From address {:?}",
                        refused.original()
                    ));
                }
            }
        }
        CheckResult::pass()
    }
}

impl Check for AuthorizeSenderCheck {
    /// The From: header exists only at end of message; the envelope alone can
    /// be judged at MAIL FROM.
    fn inputs(&self) -> Stage {
        if self.check_header_from {
            Stage::Eom
        } else {
            Stage::Mail
        }
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.decide(&input) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::require_tls::tests::{build_err, build_ok, build_ok_with, input, run};
    use crate::message::{AuthInfo, Envelope, Header, Message};
    use crate::tables::TableSet;
    use std::collections::HashMap;

    const TABLE: &str = r#"table = { alice = ["Alice@Example.org", "*@sales.example.org"], bob = "@bücher.example", carol = [] }"#;

    fn session(user: Option<&str>, sender: &str, from: &[&str]) -> CheckInput {
        let mut i = input(Stage::Eom);
        Arc::make_mut(&mut i.connection).auth = user.map(|u| AuthInfo {
            user: u.into(),
            mechanism: Some("PLAIN".into()),
        });
        i.envelope = Some(Envelope {
            rewritten_sender: None,
            sender: Address::parse(sender).unwrap(),
            mail_args: vec![],
            recipients: vec![Address::parse("<rcpt@example.net>").unwrap()],
        });
        i.message = Some(Arc::new(Message {
            headers: from
                .iter()
                .map(|v| Header::new("From", v.to_string()))
                .collect(),
            ..Message::default()
        }));
        i
    }

    fn addrs(value: &str) -> Vec<String> {
        from_addresses(value)
            .unwrap_or_default()
            .iter()
            .map(Address::key)
            .collect()
    }

    #[test]
    fn from_header_parsing() {
        assert_eq!(addrs("alice@example.org"), ["alice@example.org"]);
        assert_eq!(
            addrs("\"Smith, Alice\" <Alice@Example.org>"),
            ["alice@example.org"]
        );
        assert_eq!(
            addrs("\"a <x@evil.org>\" <a@ok.org>, b@ok.org (Bob)"),
            ["a@ok.org", "b@ok.org"]
        );
        assert_eq!(
            addrs("Alice\r\n <alice@example.org>"),
            ["alice@example.org"]
        );
        assert_eq!(addrs("alice@example.org (ceo@bank.example)").len(), 2);
        assert!(addrs("Alice Smith").is_empty());
        assert!(addrs("<>").is_empty());
    }

    #[tokio::test]
    async fn allowed_addresses_pass() {
        let check = build_ok(AuthorizeSenderCheck::build, TABLE);
        assert_eq!(check.inputs(), Stage::Eom);
        assert_eq!(check.decides(), Stage::Eom);
        let ok = [
            session(
                Some("alice"),
                "<alice@EXAMPLE.org>",
                &["Alice <alice@example.org>"],
            ),
            session(
                Some("Alice"),
                "<x@Sales.Example.org>",
                &["y@sales.example.org"],
            ),
            session(
                Some("bob"),
                "<b@xn--bcher-kva.example>",
                &["<B@BÜCHER.example>"],
            ),
            // Bounces and messages without From: have nothing to refuse.
            session(Some("alice"), "<>", &[]),
        ];
        for i in ok {
            let r = run(&check, i).await;
            assert_eq!(r, CheckResult::pass());
        }
    }

    #[tokio::test]
    async fn foreign_envelope_sender_fails_naming_it() {
        let check = build_ok(AuthorizeSenderCheck::build, TABLE);
        let r = run(
            &check,
            session(Some("alice"), "<ceo@example.org>", &["alice@example.org"]),
        )
        .await;
        assert_eq!(
            r,
            CheckResult::fail("user \"alice\" may not use sender \"ceo@example.org\"")
        );
        // A subdomain is not the domain.
        let r = run(
            &check,
            session(Some("alice"), "<x@eu.sales.example.org>", &[]),
        )
        .await;
        assert_eq!(r.status, Status::Fail);
        // A user listed with no addresses may use none.
        let r = run(&check, session(Some("carol"), "<carol@example.org>", &[])).await;
        assert_eq!(r.status, Status::Fail);
    }

    #[tokio::test]
    async fn every_from_address_is_checked() {
        let check = build_ok(AuthorizeSenderCheck::build, TABLE);
        let r = run(
            &check,
            session(
                Some("alice"),
                "<alice@example.org>",
                &[
                    "alice@example.org",
                    "Alice <alice@example.org>, The CEO <CEO@example.org>",
                ],
            ),
        )
        .await;
        assert_eq!(
            r,
            CheckResult::fail("user \"alice\" may not use From address \"CEO@example.org\"")
        );
        let r = run(
            &check,
            session(Some("alice"), "<alice@example.org>", &["Undisclosed"]),
        )
        .await;
        assert_eq!(r, CheckResult::fail("unparsable From header"));
    }

    #[tokio::test]
    async fn unknown_user_and_no_auth() {
        let check = build_ok(AuthorizeSenderCheck::build, TABLE);
        let r = run(&check, session(Some("mallory"), "<alice@example.org>", &[])).await;
        assert_eq!(r, CheckResult::fail("user \"mallory\" may not send mail"));
        let r = run(
            &check,
            session(None, "<ceo@example.org>", &["ceo@example.org"]),
        )
        .await;
        assert_eq!(
            r,
            CheckResult::with_reason(Status::None, "not authenticated")
        );
    }

    #[tokio::test]
    async fn flags_select_what_is_checked() {
        let src = format!("{TABLE}\ncheck_header_from = false");
        let check = build_ok(AuthorizeSenderCheck::build, &src);
        assert_eq!(check.inputs(), Stage::Mail);
        let mut i = session(Some("alice"), "<alice@example.org>", &["ceo@example.org"]);
        i.stage = Stage::Mail;
        i.message = None;
        assert_eq!(run(&check, i).await, CheckResult::pass());

        let src = format!("{TABLE}\ncheck_envelope = false");
        let check = build_ok(AuthorizeSenderCheck::build, &src);
        assert_eq!(check.inputs(), Stage::Eom);
        let i = session(Some("alice"), "<ceo@example.org>", &["alice@example.org"]);
        assert_eq!(run(&check, i).await, CheckResult::pass());
    }

    #[tokio::test]
    async fn named_table() {
        let mut entries = HashMap::new();
        entries.insert("dave".to_string(), vec!["dave@example.org".to_string()]);
        let mut tables = TableSet::new();
        tables.insert(
            "senders".into(),
            Arc::new(Table::inline("senders", entries)),
        );
        let check = build_ok_with(
            AuthorizeSenderCheck::build,
            "table = \"senders\"\ncheck_header_from = false",
            &tables,
        );
        let r = run(&check, session(Some("dave"), "<dave@example.org>", &[])).await;
        assert_eq!(r, CheckResult::pass());
    }

    #[test]
    fn config_errors() {
        let e = build_err(AuthorizeSenderCheck::build, "");
        assert!(e.contains("needs `table`"), "{e}");
        let e = build_err(AuthorizeSenderCheck::build, "table = \"nope\"");
        assert!(e.contains("unknown table \"nope\""), "{e}");
        let src = format!("{TABLE}\ncheck_envelope = false\ncheck_header_from = false");
        let e = build_err(AuthorizeSenderCheck::build, &src);
        assert!(e.contains("checks nothing"), "{e}");
        let src = format!("{TABLE}\ncheck_envelope = \"yes\"");
        let e = build_err(AuthorizeSenderCheck::build, &src);
        assert!(e.contains("`check_envelope`"), "{e}");
    }
}
