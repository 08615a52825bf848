//! TODO: the `strip_plus` modifier.

use super::{Effects, Modifier, ModifierBuildContext};
use std::sync::Arc;

pub struct StripPlusModifier;

impl StripPlusModifier {
    pub fn build(_ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        Some(Arc::new(StripPlusModifier))
    }
}

impl Modifier for StripPlusModifier {
    fn effects(&self) -> Effects {
        Effects::default()
    }
}
