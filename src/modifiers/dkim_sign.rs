//! TODO: the `dkim_sign` modifier (stub until implemented).

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct DkimSignModifier;

impl DkimSignModifier {
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let span = ctx.options.span();
        ctx.options
            .error(span, "the `dkim_sign` modifier is not implemented yet");
        None
    }
}

impl Modifier for DkimSignModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
