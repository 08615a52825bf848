//! The envelope through the modifiers and the dispatch tree: sender
//! rewrites, recipient rewrites and aliases, the branch each address goes
//! to, and the signature that says which recipients can share a
//! transaction.

use super::*;
use crate::modifiers::RewriteError;
use crate::policy::ModifierInstance;

/// A modifier's rewrite that failed, with the modifier's name.
#[derive(Debug, thiserror::Error)]
#[error("modifier \"{modifier}\": {source}")]
pub(super) struct ModifierFailed {
    modifier: String,
    #[source]
    source: RewriteError,
}

impl ModifierFailed {
    fn new(instance: &ModifierInstance, source: RewriteError) -> ModifierFailed {
        ModifierFailed {
            modifier: instance.name.clone(),
            source,
        }
    }
}

/// The sender after `modifiers`' rewrites.
pub(super) fn rewrite_sender(
    policy: &Policy,
    modifiers: &[ModifierId],
    sender: &Address,
) -> Result<Address, ModifierFailed> {
    let mut current = sender.clone();
    for &id in modifiers {
        let instance = &policy.modifiers[id];
        if let Some(new) = instance
            .modifier
            .rewrite_sender(&current)
            .map_err(|e| ModifierFailed::new(instance, e))?
        {
            current = new;
        }
    }
    Ok(current)
}

fn rewrite_recipients(
    policy: &Policy,
    modifiers: &[ModifierId],
    addresses: Vec<Address>,
) -> Result<Vec<Address>, ModifierFailed> {
    let mut current = addresses;
    for &id in modifiers {
        let instance = &policy.modifiers[id];
        let mut next = Vec::with_capacity(current.len());
        for a in current {
            match instance
                .modifier
                .rewrite_recipient(&a)
                .map_err(|e| ModifierFailed::new(instance, e))?
            {
                Some(replaced) => next.extend(replaced),
                None => next.push(a),
            }
        }
        current = next;
    }
    let mut seen = HashSet::new();
    current.retain(|a| seen.insert(a.key()));
    Ok(current)
}

/// Global and source rewrites, dispatch of each result, then the
/// destination's own rewrites and its redirect. The error is text for the
/// same reason as [`rewrite_sender`]'s.
pub(super) fn dispatch_recipient(
    policy: &Policy,
    pipeline: &Pipeline,
    source: &SourceNode,
    original: &Address,
) -> Result<Vec<Target>, String> {
    dispatch_recipient_typed(policy, pipeline, source, original).map_err(|e| e.to_string())
}

fn dispatch_recipient_typed(
    policy: &Policy,
    pipeline: &Pipeline,
    source: &SourceNode,
    original: &Address,
) -> Result<Vec<Target>, ModifierFailed> {
    let rewritten = rewrite_recipients(policy, &pipeline.modifiers, vec![original.clone()])?;
    let rewritten = rewrite_recipients(policy, &source.modifiers, rewritten)?;
    let mut targets = Vec::new();
    for address in rewritten {
        let (branch, matched_by) = source.destinations.select(&address);
        let finals = match &branch.redirect {
            Some(r) => vec![r.clone()],
            None => rewrite_recipients(policy, &branch.modifiers, vec![address])?,
        };
        for a in finals {
            targets.push(Target {
                address: a,
                branch: branch.clone(),
                matched_by,
            });
        }
    }
    Ok(targets)
}

/// What a recipient's branch does to the whole message: the checks it runs,
/// the modifiers it applies and a quarantine. Recipients with the same
/// signature can share a transaction.
pub(super) fn branch_signature(
    pipeline: &Pipeline,
    source: &SourceNode,
    targets: &[Target],
) -> Vec<usize> {
    let mut sig: Vec<usize> = Vec::new();
    let mut checks: Vec<usize> = targets
        .iter()
        .flat_map(|t| t.branch.checks.iter().copied())
        .collect();
    checks.sort_unstable();
    checks.dedup();
    sig.extend(checks);
    sig.push(usize::MAX);
    sig.extend(pipeline.modifiers.iter().copied());
    sig.extend(source.modifiers.iter().copied());
    let mut mods: Vec<usize> = targets
        .iter()
        .flat_map(|t| t.branch.modifiers.iter().copied())
        .collect();
    mods.dedup();
    sig.extend(mods);
    sig.push(usize::MAX);
    for t in targets {
        if matches!(t.branch.outcome, Outcome::Quarantine(_)) {
            sig.push(t.branch.id);
        }
    }
    sig
}
