//! TODO: the `remove_header` modifier.

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct RemoveHeaderModifier;

impl RemoveHeaderModifier {
    pub fn build(_ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        Some(Arc::new(RemoveHeaderModifier))
    }
}

impl Modifier for RemoveHeaderModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
