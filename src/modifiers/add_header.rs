//! TODO: the `add_header` modifier.

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct AddHeaderModifier;

impl AddHeaderModifier {
    pub fn build(_ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        Some(Arc::new(AddHeaderModifier))
    }
}

impl Modifier for AddHeaderModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
