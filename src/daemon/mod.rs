//! The milter daemon: binds the configured listeners, runs the adapter on
//! each, reloads the policy on SIGHUP and shuts down gracefully on SIGTERM
//! and SIGINT. `Daemon` is the in-process handle the tests use; `serve` is
//! what the `serve` command runs.

pub mod adapter;
pub mod deferred;
pub mod listen;
pub mod logline;
pub mod metrics;
pub mod reload_guard;
pub mod shared;

use crate::config::{ConfigErrors, Registry};
use crate::policy::Policy;
use crate::server_config::{ListenAddress, LogFormat, ServerSettings};
use adapter::Binding;
use shared::Shared;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a reload may take before it counts as failed and the running
/// configuration stays. Reading a configuration takes milliseconds; a table
/// file that is still being written is waited for up to 10 s
/// (`tables::defaults::LOAD_WAIT`), so this leaves room for that and fails
/// only a load that hangs.
pub(crate) const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

fn load_failure(path: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![crate::config::ConfigError {
        file: path.to_path_buf(),
        position: None,
        message,
        hint: None,
    }])
}

/// Why the daemon could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration has errors.
    Config(ConfigErrors),
    /// A listener or the metrics endpoint could not be bound.
    Bind(String),
    /// The open file limit leaves no room for connections.
    Limits(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Bind(e) | StartError::Limits(e) => f.write_str(e),
        }
    }
}

/// A running daemon.
pub struct Daemon {
    /// The bound addresses, in config order (port 0 resolved).
    pub addresses: Vec<ListenAddress>,
    /// The bound metrics endpoint (port 0 resolved), when `[server] metrics` is set.
    pub metrics_address: Option<SocketAddr>,
    shared: Arc<Shared>,
    registry: Registry,
    /// A configuration load thread is running (see `load_config`).
    loading: Arc<std::sync::atomic::AtomicBool>,
    config_path: PathBuf,
    server: ServerSettings,
    stop_accepting: watch::Sender<bool>,
    stop_sessions: watch::Sender<bool>,
    milters: Vec<JoinHandle<std::io::Result<()>>>,
    metrics_task: Option<JoinHandle<()>>,
    /// A listener that stopped on its own (accept failed for good).
    listener_failed: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Daemon {
    /// Load the configuration, bind every listener and start serving.
    pub async fn start(config_path: &Path, registry: Registry) -> Result<Daemon, StartError> {
        let policy =
            crate::config::load_with(config_path, &registry).map_err(StartError::Config)?;
        Daemon::start_with_policy(Arc::new(policy), config_path, registry).await
    }

    pub(crate) async fn start_with_policy(
        policy: Arc<Policy>,
        config_path: &Path,
        registry: Registry,
    ) -> Result<Daemon, StartError> {
        let server = policy.server.clone();
        let per_listener = open_file_limit(&server)?;
        let metrics = Arc::new(metrics::Metrics::new());
        let shared = Arc::new(Shared::new(policy, metrics.clone()));

        let mut bound = Vec::new();
        for l in &server.listeners {
            let b = listen::bind(l).await.map_err(|e| StartError::Bind(e.0))?;
            bound.push((l.clone(), b));
        }
        let (metrics_address, metrics_task) = match server.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    StartError::Bind(format!("cannot listen for metrics on {addr}: {e}"))
                })?;
                let local = listener.local_addr().ok();
                (local, Some(tokio::spawn(metrics.clone().serve(listener))))
            }
            None => (None, None),
        };

        let (failed_tx, listener_failed) = tokio::sync::mpsc::unbounded_channel();
        let (stop_accepting, accept_rx) = watch::channel(false);
        let (stop_sessions, sessions_rx) = watch::channel(false);
        let mut addresses = Vec::new();
        let mut milters = Vec::new();
        for (settings, b) in bound {
            let address = b.local_address();
            tracing::info!(listener = %address, pipeline = settings.pipeline.as_deref().unwrap_or("by {daemon_name}"), "listening");
            addresses.push(address.clone());
            let binding = Binding {
                pipeline: settings.pipeline.clone(),
                listener: address.to_string(),
            };
            let callbacks = adapter::callbacks(shared.clone(), binding);
            let config = indymilter::Config {
                // Our listener enforces the limit: it closes a connection
                // past it at once. indymilter's own limit would instead stop
                // accepting, leaving the MTA in the listen queue until
                // milter_command_timeout, so it must never bind.
                max_connections: tokio::sync::Semaphore::MAX_PERMITS,
                connection_timeout: server.connection_timeout,
                ..Default::default()
            };
            let limit =
                listen::ConnectionLimit::new(per_listener, metrics.clone(), address.to_string());
            let listener = listen::MilterListener::new(b, limit, accept_rx.clone());
            let mut rx = sessions_rx.clone();
            let shutdown = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            let failed_tx = failed_tx.clone();
            let name = address.to_string();
            milters.push(tokio::spawn(async move {
                let result = indymilter::run(listener, callbacks, config, shutdown).await;
                if let Err(e) = &result {
                    let _ = failed_tx.send(format!("{name}: {e}"));
                }
                result
            }));
        }
        Ok(Daemon {
            addresses,
            metrics_address,
            shared,
            registry,
            loading: Arc::default(),
            config_path: config_path.to_path_buf(),
            server,
            stop_accepting,
            stop_sessions,
            milters,
            metrics_task,
            listener_failed,
        })
    }

    /// Load the configuration again. A valid one serves new connections from
    /// now on (open ones keep theirs); an invalid one is logged in full and
    /// the running policy stays. The file is loaded off the async workers
    /// (see [`Daemon::load_config`]), giving up after [`RELOAD_DEADLINE`].
    pub async fn reload(&self) -> Result<(), ConfigErrors> {
        self.reload_within(RELOAD_DEADLINE).await
    }

    /// As [`Daemon::reload`], giving up after `deadline`.
    pub async fn reload_within(&self, deadline: Duration) -> Result<(), ConfigErrors> {
        let loaded = self.load_config(deadline).await;
        self.apply_reload(loaded)
    }

    /// Read and compile the configuration file on a thread of its own, so
    /// that a file that is slow to read (a table on a hung network file
    /// system) holds up neither the async workers nor signal handling. After
    /// `deadline` the load counts as failed; its thread is left to finish or
    /// hang on its own. The future borrows nothing from the daemon.
    fn load_config(
        &self,
        deadline: Duration,
    ) -> impl std::future::Future<Output = Result<Policy, ConfigErrors>> + Send + 'static {
        let path = self.config_path.clone();
        let registry = self.registry.clone();
        let loading = self.loading.clone();
        async move {
            use std::sync::atomic::Ordering;
            // One load thread at a time: a file system that hangs would
            // otherwise keep one more stuck thread per SIGHUP.
            if loading.swap(true, Ordering::AcqRel) {
                return Err(load_failure(
                    &path,
                    "the previous configuration load has not finished (a file it reads does not answer); not starting another".to_string(),
                ));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let runtime = tokio::runtime::Handle::try_current().ok();
            let thread_path = path.clone();
            let thread_loading = loading.clone();
            let spawned = std::thread::Builder::new()
                .name("config-load".to_string())
                .spawn(move || {
                    // Compile in the runtime's context, as the daemon's first
                    // load (and the old in-line reload) did.
                    let _context = runtime.as_ref().map(|r| r.enter());
                    let loaded = crate::config::load_with(&thread_path, &registry);
                    thread_loading.store(false, Ordering::Release);
                    let _ = tx.send(loaded);
                });
            if let Err(e) = spawned {
                loading.store(false, Ordering::Release);
                return Err(load_failure(
                    &path,
                    format!("cannot start a thread to load the configuration: {e}"),
                ));
            }
            match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(loaded)) => loaded,
                Ok(Err(_)) => Err(load_failure(
                    &path,
                    "loading the configuration ended without a result (a bug: see the log for a panic)"
                        .to_string(),
                )),
                Err(_) => Err(load_failure(
                    &path,
                    format!(
                        "loading the configuration took longer than {}; is a file it names on a file system that does not answer?",
                        humantime::format_duration(deadline)
                    ),
                )),
            }
        }
    }

    /// Serve new connections with `loaded`, or log why it failed. A valid
    /// file that would move a listener's mail to another pipeline is refused
    /// too (see `reload_guard`).
    fn apply_reload(&self, loaded: Result<Policy, ConfigErrors>) -> Result<(), ConfigErrors> {
        let loaded = loaded.and_then(|policy| {
            let refusals =
                reload_guard::refusals(&self.server.listeners, &self.shared.current(), &policy);
            if refusals.is_empty() {
                return Ok(policy);
            }
            Err(ConfigErrors(
                refusals
                    .into_iter()
                    .map(|message| load_failure(&self.config_path, message))
                    .flat_map(|e| e.0)
                    .collect(),
            ))
        });
        match loaded {
            Ok(policy) => {
                if policy.server != self.server {
                    tracing::warn!(
                        "the [server] section changed; listeners, limits, threads, logging and metrics change only at restart"
                    );
                }
                self.shared.replace(Arc::new(policy));
                self.shared.metrics.reload(true);
                tracing::info!(config = %self.config_path.display(), "configuration reloaded");
                Ok(())
            }
            Err(errors) => {
                self.shared.metrics.reload(false);
                tracing::error!(config = %self.config_path.display(), errors = %errors, "reload failed; the running configuration stays");
                Err(errors)
            }
        }
    }

    /// How many messages are between MAIL FROM and their end right now.
    pub fn messages_in_flight(&self) -> usize {
        self.shared.messages_in_flight()
    }

    /// The daemon's counters and histograms, as the metrics endpoint serves them.
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.shared.metrics.clone()
    }

    /// Resolves when a listener stopped on its own: its accept loop failed
    /// (for example out of file descriptors). The daemon should then exit
    /// non-zero so the service manager restarts it.
    pub(crate) async fn listener_failed(&mut self) -> String {
        match self.listener_failed.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    /// Stop accepting connections, let messages in flight finish (up to the
    /// grace period), then end every session.
    pub async fn shutdown(self) {
        self.shutdown_or(std::future::pending::<()>()).await
    }

    /// As `shutdown`, but `hurry` (a second signal) ends the grace period at once.
    pub(crate) async fn shutdown_or(self, hurry: impl std::future::Future) {
        let _ = self.stop_accepting.send(true);
        let grace = self.server.shutdown_grace;
        let in_flight = self.shared.messages_in_flight();
        if in_flight > 0 {
            tracing::info!(in_flight, grace = %humantime::format_duration(grace), "waiting for messages in flight");
        }
        tokio::select! {
            finished = tokio::time::timeout(grace, self.shared.wait_idle()) => {
                if finished.is_err() {
                    tracing::warn!(
                        in_flight = self.shared.messages_in_flight(),
                        "grace period over; the MTA will tempfail the messages still open"
                    );
                }
            }
            _ = hurry => {
                tracing::warn!(
                    in_flight = self.shared.messages_in_flight(),
                    "second signal: not waiting any longer; the MTA will tempfail the messages still open"
                );
            }
        }
        let _ = self.stop_sessions.send(true);
        for m in self.milters {
            match m.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "a listener failed"),
                Err(e) => tracing::error!(error = %e, "a listener task failed"),
            }
        }
        if let Some(t) = self.metrics_task {
            t.abort();
        }
        tracing::info!("stopped");
    }
}

/// Descriptors that `max_connections` on every listener needs: one per
/// connection, plus [`SPARE_FILES`](crate::server_config::defaults::SPARE_FILES).
pub(crate) fn needed_files(listeners: usize, max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(listeners.max(1) as u64)
        .saturating_add(crate::server_config::defaults::SPARE_FILES)
}

/// How many connections each listener may hold when the process may open
/// `files` descriptors: `max_connections`, or fewer when that does not fit.
/// 0 means not even one fits.
pub(crate) fn connections_within(files: u64, listeners: usize, max_connections: usize) -> usize {
    let room =
        files.saturating_sub(crate::server_config::defaults::SPARE_FILES) / listeners.max(1) as u64;
    usize::try_from(room).map_or(max_connections, |room| room.min(max_connections))
}

/// Raise the soft open file limit to the hard limit and check that it covers
/// `max_connections` on every listener; returns how many connections each
/// listener may hold. When the hard limit is too low, each
/// listener serves fewer connections (and closes the rest at once) and the
/// daemon says which limit to raise: better than accepting connections it
/// has no descriptor for, and wait for descriptors with every accept.
fn open_file_limit(server: &ServerSettings) -> Result<usize, StartError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct that we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open file limit; not checking it against max_connections");
        return Ok(server.max_connections);
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    let listeners = server.listeners.len();
    let needed = needed_files(listeners, server.max_connections);
    let mut available = soft;
    // All the hard limit allows, as Postfix's daemons do: past the
    // connections, DNS sockets, `command` pipes and table reads need room
    // too, and a descriptor shortage only pauses accepting. The kernel caps
    // a process at nr_open (2^20 by default) whatever the hard limit says.
    let target = hard.min(1 << 20);
    if soft < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads one rlimit struct that we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = soft,
                to = target,
                "raised the soft open file limit to the hard limit"
            );
            available = target;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), from = soft, to = target, "cannot raise the soft open file limit");
        }
    }
    if available >= needed {
        return Ok(server.max_connections);
    }
    let advice = "raise the hard limit: LimitNOFILE= in the systemd unit, or `ulimit -n` as root before starting the daemon";
    let per_listener = connections_within(available, listeners, server.max_connections);
    if per_listener == 0 {
        return Err(StartError::Limits(format!(
            "the open file limit ({available}) leaves no room for connections: max_connections = {} on {listeners} listener(s) needs {needed} descriptors; {advice}",
            server.max_connections
        )));
    }
    tracing::warn!(
        limit = available,
        needed,
        max_connections = server.max_connections,
        serving = per_listener,
        "the open file limit is too low for max_connections on every listener; each listener serves at most `serving` connections and closes the rest at once; {advice}"
    );
    Ok(per_listener)
}

/// Set up logging from the server settings; `RUST_LOG` wins over the config.
pub fn init_logging(server: &ServerSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&server.log_level));
    use std::io::IsTerminal;
    // Colours only on a terminal: a log file or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match server.log_format {
        LogFormat::Text => builder.fmt_fields(logline::KeyValueFields).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
}

/// Loads the configuration the daemon starts with, before the runtime
/// exists (`[server] worker_threads` sizes it). On errors prints them and
/// returns the exit code.
pub fn load_for_start(config_path: &Path, registry: &Registry) -> Result<Arc<Policy>, i32> {
    // Logging is set up from the configuration, so what loading it warns
    // about (a group-readable key file, say) goes to stderr as plain text.
    let startup_log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .with_target(false)
        .finish();
    let loaded = tracing::subscriber::with_default(startup_log, || {
        crate::config::load_with(config_path, registry)
    });
    match loaded {
        Ok(p) => Ok(Arc::new(p)),
        Err(e) => {
            eprintln!("{e}");
            Err(crate::cli::EXIT_CONFIG)
        }
    }
}

/// The runtime the daemon runs on: `[server] worker_threads` threads, or
/// [`default_worker_threads`].
pub fn runtime(server: &ServerSettings) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            server
                .worker_threads
                .unwrap_or(default_worker_threads(cpus)),
        )
        .enable_all()
        .build()
}

/// Half the CPUs, at least one. The milter shares its host with the MTA,
/// which spends several times the milter's CPU on each message (Postfix
/// about 3.5 ms against 0.5 to 1 ms here), so the milter rarely needs more;
/// and every thread beyond one costs CPU of its own: waking another thread
/// for a task, and glibc malloc freeing across threads. Measured behind
/// Postfix on two cores: one thread instead of two took a fifth off the
/// milter's CPU per message (docs/benchmarks.md, "Worker threads").
pub(crate) fn default_worker_threads(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

/// Runs the daemon with a configuration [`load_for_start`] loaded, until
/// SIGTERM or SIGINT; reloads on SIGHUP. Returns the process exit status.
pub async fn serve_loaded(policy: Arc<Policy>, config_path: &Path, registry: Registry) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    init_logging(&policy.server);
    let (mut hup, mut term, mut int) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(h), Ok(t), Ok(i)) => (h, t, i),
        _ => {
            tracing::error!("cannot install signal handlers");
            return 1;
        }
    };
    let mut daemon = match Daemon::start_with_policy(policy, config_path, registry).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return 1;
        }
    };
    tracing::info!(
        addresses = %daemon.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" "),
        "ready"
    );
    let mut status = 0;
    // A reload runs beside this loop, so SIGTERM is answered while a slow
    // configuration loads. A SIGHUP during a reload asks for one more
    // afterwards, so the last edit is always the one loaded.
    let mut reloading: Option<std::pin::Pin<Box<dyn Future<Output = _> + Send>>> = None;
    let mut reload_again = false;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if reloading.is_some() {
                    reload_again = true;
                    tracing::info!("SIGHUP during a reload; loading the configuration again once it is done");
                } else {
                    tracing::info!(config = %config_path.display(), "SIGHUP: loading the configuration");
                    reloading = Some(Box::pin(daemon.load_config(RELOAD_DEADLINE)));
                }
            }
            loaded = async {
                match reloading.as_mut() {
                    Some(load) => load.await,
                    None => std::future::pending().await,
                }
            } => {
                reloading = None;
                let _ = daemon.apply_reload(loaded);
                if std::mem::take(&mut reload_again) {
                    reloading = Some(Box::pin(daemon.load_config(RELOAD_DEADLINE)));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            failure = daemon.listener_failed() => {
                tracing::error!(error = %failure, "a listener stopped accepting connections; shutting down so the service manager can restart the daemon");
                status = 1;
                break;
            }
        }
    }
    tracing::info!("shutting down");
    let hurry = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    daemon.shutdown_or(hurry).await;
    status
}

#[cfg(test)]
mod tests {
    use super::{connections_within, default_worker_threads, needed_files};

    #[test]
    fn open_files_cover_every_listener_and_spare() {
        assert_eq!(needed_files(1, 1000), 1064);
        assert_eq!(needed_files(2, 500), 1064);
        assert_eq!(needed_files(0, 10), 74);
        assert_eq!(needed_files(3, usize::MAX), u64::MAX);
    }

    #[test]
    fn a_short_limit_is_shared_between_the_listeners() {
        // Enough: the configured limit.
        assert_eq!(connections_within(20_000, 2, 1000), 1000);
        assert_eq!(connections_within(1064, 1, 1000), 1000);
        assert_eq!(connections_within(u64::MAX, 1, 1000), 1000);
        // Short: what is left after the spare, split evenly.
        assert_eq!(connections_within(1024, 1, 1000), 960);
        assert_eq!(connections_within(200, 2, 100), 68);
        // Not even one connection each.
        assert_eq!(connections_within(65, 2, 100), 0);
        assert_eq!(connections_within(10, 1, 100), 0);
    }

    #[test]
    fn the_default_is_half_the_cpus_and_at_least_one() {
        let defaults: Vec<usize> = [1, 2, 3, 4, 16].map(default_worker_threads).into();
        assert_eq!(defaults, [1, 1, 1, 2, 8]);
    }
}
