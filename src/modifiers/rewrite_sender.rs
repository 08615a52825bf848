//! TODO: the `rewrite_sender` modifier.

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct RewriteSenderModifier;

impl RewriteSenderModifier {
    pub fn build(_ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        Some(Arc::new(RewriteSenderModifier))
    }
}

impl Modifier for RewriteSenderModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
