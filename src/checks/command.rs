//! TODO: the `command` check.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult};
use crate::stage::Stage;
use std::sync::Arc;

pub struct CommandCheck;

impl CommandCheck {
    pub fn build(_ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        Some(Arc::new(CommandCheck))
    }
}

impl Check for CommandCheck {
    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, _input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async { CheckResult::pass() })
    }
}
