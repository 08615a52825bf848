//! What a reload may not change without a restart: which pipeline serves a
//! listener's connections. Listeners keep the `[server]` section they were
//! started with, so a reloaded file that renames a listener's pipeline, or
//! stops selecting a pipeline for a `{daemon_name}` that had one, or puts
//! another pipeline first (the fallback), would send mail to a pipeline
//! nobody chose for it, such as submission mail to the MX pipeline without
//! its TLS and AUTH checks. Such a reload is refused and the running
//! configuration stays.

use crate::policy::Policy;
use crate::server_config::ListenerSettings;

/// Why `new` cannot replace `old` for these running listeners; empty when
/// it can.
pub fn refusals(listeners: &[ListenerSettings], old: &Policy, new: &Policy) -> Vec<String> {
    let mut why = Vec::new();
    for l in listeners {
        if let Some(name) = &l.pipeline
            && new.pipeline(name).is_none()
        {
            why.push(format!(
                "listener {} is bound to pipeline \"{name}\", which the new configuration no longer has; restart the daemon to change a listener's pipeline",
                l.address
            ));
        }
    }
    if !listeners.iter().any(|l| l.pipeline.is_none()) {
        return why;
    }
    // Listeners that choose by {daemon_name}: each name keeps its pipeline's
    // name, and the fallback stays the same pipeline.
    for p in &old.pipelines {
        for d in &p.settings.daemon_names {
            let chosen = new.pipeline_for_daemon_name(d).map(|i| &new.pipelines[i]);
            match chosen {
                None => why.push(format!(
                    "{{daemon_name}} \"{d}\" selects pipeline \"{}\", and no pipeline of the new configuration lists it: its mail would go to the first pipeline; list it in `daemon_names` again, or restart the daemon to apply this",
                    p.name
                )),
                Some(n) if n.name != p.name => why.push(format!(
                    "{{daemon_name}} \"{d}\" selects pipeline \"{}\", and would select \"{}\" in the new configuration; restart the daemon to move a service to another pipeline",
                    p.name, n.name
                )),
                Some(_) => {}
            }
        }
    }
    if let (Some(a), Some(b)) = (old.pipelines.first(), new.pipelines.first())
        && a.name != b.name
    {
        why.push(format!(
            "the first pipeline, which serves connections no `daemon_names` list selects, would change from \"{}\" to \"{}\"; keep \"{}\" first, or restart the daemon to apply this",
            a.name, b.name, a.name
        ));
    }
    why
}
