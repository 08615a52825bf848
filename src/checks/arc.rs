//! TODO: the `arc` check (stub until implemented).

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult};
use crate::stage::Stage;
use std::sync::Arc;

pub struct ArcCheck;

impl ArcCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let span = ctx.options.span();
        ctx.options
            .error(span, "the `arc` check is not implemented yet");
        None
    }
}

impl Check for ArcCheck {
    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, _input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async { CheckResult::temperror("not implemented") })
    }
}
