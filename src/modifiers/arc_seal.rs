//! TODO: the `arc_seal` modifier (stub until implemented).

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct ArcSealModifier;

impl ArcSealModifier {
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let span = ctx.options.span();
        ctx.options
            .error(span, "the `arc_seal` modifier is not implemented yet");
        None
    }
}

impl Modifier for ArcSealModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
