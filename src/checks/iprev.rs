//! TODO: the `iprev` check (stub until implemented).

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult};
use crate::stage::Stage;
use std::sync::Arc;

pub struct IprevCheck;

impl IprevCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let span = ctx.options.span();
        ctx.options
            .error(span, "the `iprev` check is not implemented yet");
        None
    }
}

impl Check for IprevCheck {
    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, _input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async { CheckResult::temperror("not implemented") })
    }
}
