//! TODO: the `alias` modifier.

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct AliasModifier;

impl AliasModifier {
    pub fn build(_ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        Some(Arc::new(AliasModifier))
    }
}

impl Modifier for AliasModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
