//! TODO: the `rewrite_rcpt` modifier.

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct RewriteRcptModifier;

impl RewriteRcptModifier {
    pub fn build(_ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        Some(Arc::new(RewriteRcptModifier))
    }
}

impl Modifier for RewriteRcptModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
