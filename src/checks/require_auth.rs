//! TODO: the `require_auth` check.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult};
use crate::stage::Stage;
use std::sync::Arc;

pub struct RequireAuthCheck;

impl RequireAuthCheck {
    pub fn build(_ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        Some(Arc::new(RequireAuthCheck))
    }
}

impl Check for RequireAuthCheck {
    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, _input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async { CheckResult::pass() })
    }
}
