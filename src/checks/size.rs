//! The `size` check: fails a message larger than a limit, whether the size
//! is the one received or the one the client declared with `SIZE=` at MAIL
//! FROM. Option: `max_size` (required; bytes, or "512K", "10M", "1G").

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult};
use crate::config::options::Size;
use crate::stage::Stage;
use serde::Deserialize;
use std::sync::Arc;

/// `[checks.NAME]` with `kind = "size"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SizeOptions {
    max_size: Size,
}

/// The `size` check: the largest message accepted, in bytes.
pub struct SizeCheck {
    max_size: u64,
}

impl SizeCheck {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let SizeOptions {
            max_size: Size(max_size),
        } = ctx.options.required("max_size", "\"10M\"").parse()?;
        // A limit of zero refuses every message, surely a typo.
        if max_size == 0 {
            ctx.options
                .invalid("max_size", "must be more than 0, such as \"10M\"");
            return None;
        }
        Some(Arc::new(SizeCheck { max_size }))
    }

    fn too_big(&self, size: u64) -> CheckResult {
        CheckResult::fail(format!(
            "message size {size} exceeds limit {}",
            self.max_size
        ))
    }

    fn decide(&self, input: &CheckInput) -> CheckResult {
        if let Some(message) = &input.message
            && message.size > self.max_size
        {
            return self.too_big(message.size);
        }
        // A client that announced more than the limit is refused even if what
        // arrived was smaller: it said what it meant to send.
        if let Some(declared) = input.envelope.as_ref().and_then(|e| e.declared_size())
            && declared > self.max_size
        {
            return self.too_big(declared);
        }
        if input.message.is_none() {
            return CheckResult::permerror("the message size is not available");
        }
        CheckResult::pass()
    }
}

impl Check for SizeCheck {
    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.decide(&input) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::checks::Status;
    use crate::checks::require_tls::tests::{build_err, build_ok, input, run};
    use crate::message::{Envelope, Message};

    fn sized(size: u64, declared: Option<u64>) -> CheckInput {
        let mut i = input(Stage::Eom);
        i.message = Some(Arc::new(Message {
            size,
            ..Message::default()
        }));
        i.envelope = Some(Envelope {
            rewritten_sender: None,
            sender: Address::Null,
            mail_args: declared.map(|d| format!("SIZE={d}")).into_iter().collect(),
            recipients: vec![],
        });
        i
    }

    #[tokio::test]
    async fn limit_is_inclusive() {
        let check = build_ok(SizeCheck::build, "max_size = \"1K\"");
        assert_eq!(check.inputs(), Stage::Eom);
        assert_eq!(run(&check, sized(1024, None)).await, CheckResult::pass());
        assert_eq!(
            run(&check, sized(1025, None)).await,
            CheckResult::fail("message size 1025 exceeds limit 1024")
        );
    }

    #[tokio::test]
    async fn declared_size_counts_too() {
        let check = build_ok(SizeCheck::build, "max_size = 1000");
        assert_eq!(
            run(&check, sized(10, Some(5000))).await,
            CheckResult::fail("message size 5000 exceeds limit 1000")
        );
        assert_eq!(
            run(&check, sized(10, Some(1000))).await,
            CheckResult::pass()
        );
    }

    #[tokio::test]
    async fn no_message_is_a_setup_error() {
        let check = build_ok(SizeCheck::build, "max_size = 1000");
        assert_eq!(
            run(&check, input(Stage::Eom)).await.status,
            Status::Permerror
        );
    }

    #[test]
    fn config_errors() {
        let e = build_err(SizeCheck::build, "");
        assert!(e.contains("needs `max_size`"), "{e}");
        let e = build_err(SizeCheck::build, "max_size = \"10 parsecs\"");
        assert!(e.contains("`max_size`"), "{e}");
        let e = build_err(SizeCheck::build, "max_size = 0");
        assert!(e.contains("more than 0"), "{e}");
    }
}
