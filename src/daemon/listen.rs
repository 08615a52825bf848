//! The sockets the MTA connects to: TCP with `TCP_NODELAY` (at end of
//! message a milter writes several replies in a row, and Nagle's algorithm
//! would hold the last one for the MTA's delayed ACK, about 40 ms), and UNIX
//! sockets with the configured mode and owner, a stale file replaced and the
//! file removed at exit. Each listener counts its open connections and closes
//! a connection past `max_connections` at once (see `ConnectionLimit`), and
//! every listener stops accepting when shutdown begins.

use super::metrics::Metrics;
use crate::server_config::{ListenAddress, ListenerSettings};
use indymilter::Listener;
use std::future::Future;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

/// A bound socket, before the milter runs on it.
pub enum Bound {
    /// A TCP listener, from `inet:IP:PORT`.
    Tcp(TcpListener),
    /// A Unix socket listener, from `unix:/path`, with its socket file.
    Unix(UnixListener, SocketFile),
}

impl Bound {
    /// The address actually bound (port 0 resolved), for logs and tests.
    pub(crate) fn local_address(&self) -> ListenAddress {
        match self {
            Bound::Tcp(l) => match l.local_addr() {
                Ok(a) => ListenAddress::Inet(a),
                Err(_) => ListenAddress::Inet(([0, 0, 0, 0], 0).into()),
            },
            Bound::Unix(_, f) => ListenAddress::Unix(f.0.clone()),
        }
    }
}

/// Removes the socket file when the listener is gone.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why a listen address could not be bound, in words for the administrator.
#[derive(Debug)]
pub struct BindError(pub String);

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bind the listener's address; a Unix socket gets the mode and owner its settings name.
pub async fn bind(settings: &ListenerSettings) -> Result<Bound, BindError> {
    match &settings.address {
        ListenAddress::Inet(addr) => TcpListener::bind(addr).await.map(Bound::Tcp).map_err(|e| {
            BindError(format!(
                "cannot listen on inet:{addr}: {e}; is another instance running, or is the address not on this host?"
            ))
        }),
        ListenAddress::Unix(path) => bind_unix(path, settings).await,
    }
}

async fn bind_unix(path: &Path, settings: &ListenerSettings) -> Result<Bound, BindError> {
    let shown = path.display();
    if path.exists() {
        // A live socket means another instance: never steal it. A file that
        // refuses connections is left over from a crash: replace it.
        match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(BindError(format!(
                    "unix:{shown} belongs to a running instance; stop it first or choose another path"
                )));
            }
            Err(_) => {
                let meta = std::fs::symlink_metadata(path)
                    .map_err(|e| BindError(format!("cannot inspect unix:{shown}: {e}")))?;
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(BindError(format!(
                        "{shown} exists and is not a socket; refusing to replace it"
                    )));
                }
                std::fs::remove_file(path)
                    .map_err(|e| BindError(format!("cannot remove stale socket {shown}: {e}")))?;
                tracing::info!(path = %shown, "replaced a stale socket file");
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        BindError(format!(
            "cannot listen on unix:{shown}: {e}; does the directory exist and may this user write to it?"
        ))
    })?;
    let file = SocketFile(path.to_path_buf());
    if let Some(mode) = settings.socket_mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| BindError(format!("cannot set mode {mode:o} on {shown}: {e}")))?;
    }
    if settings.socket_owner.is_some() || settings.socket_group.is_some() {
        let uid = match &settings.socket_owner {
            Some(name) => Some(user_id(name).ok_or_else(|| {
                BindError(format!(
                    "socket_owner \"{name}\" is not a user on this system"
                ))
            })?),
            None => None,
        };
        let gid = match &settings.socket_group {
            Some(name) => Some(group_id(name).ok_or_else(|| {
                BindError(format!(
                    "socket_group \"{name}\" is not a group on this system"
                ))
            })?),
            None => None,
        };
        std::os::unix::fs::chown(path, uid, gid).map_err(|e| {
            BindError(format!(
                "cannot change the owner of {shown}: {e}; the daemon must start as root to give the socket to another user"
            ))
        })?;
    }
    Ok(Bound::Unix(listener, file))
}

/// A user name or a numeric uid. getpwnam_r (through nix), not getpwnam:
/// the latter's static result could be overwritten by another thread.
fn user_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let user = nix::unistd::User::from_name(name).ok()??;
    Some(user.uid.as_raw())
}

/// A group name or a numeric gid (getgrnam_r, as `user_id`).
fn group_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let group = nix::unistd::Group::from_name(name).ok()??;
    Some(group.gid.as_raw())
}

/// The stream type of every listener: TCP or UNIX, counted while open.
pub(crate) type MilterStream = Counted<indymilter::EitherStream<TcpStream, UnixStream>>;

/// A listener for indymilter that sets `TCP_NODELAY`, holds at most
/// `max_connections` connections open (closing any connection past that at
/// once), and stops accepting (and closes its socket) once `stop` turns true.
pub(crate) struct MilterListener {
    inner: Option<Bound>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    limit: ConnectionLimit,
    /// After an accept error that passes (out of file descriptors, a
    /// connection aborted before it was taken), when to try again.
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    last_accept_error: Option<Instant>,
}

/// How long the listener pauses after an accept error that passes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accept errors that say nothing about the listening socket itself: the
/// process or system is out of descriptors or memory for a moment, or the
/// client gave up before we took its connection. Returning them would end
/// indymilter's accept loop, and with it the daemon.
fn passing_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
        )
    ) || e.kind() == io::ErrorKind::ConnectionAborted
}

impl MilterListener {
    pub fn new(
        bound: Bound,
        limit: ConnectionLimit,
        mut stop: watch::Receiver<bool>,
    ) -> MilterListener {
        let stopped = Box::pin(async move {
            // An error means the sender is gone: the daemon is ending anyway.
            let _ = stop.wait_for(|stop| *stop).await;
        });
        MilterListener {
            inner: Some(bound),
            stopped,
            limit,
            backoff: None,
            last_accept_error: None,
        }
    }

    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<indymilter::EitherStream<TcpStream, UnixStream>>> {
        if self.inner.is_some() && self.stopped.as_mut().poll(cx).is_ready() {
            // Closing the socket makes the MTA's next connection fail at once
            // (it then applies milter_default_action) instead of waiting in
            // the backlog of a daemon that will not answer.
            self.inner = None;
        }
        match &mut self.inner {
            None => Poll::Pending,
            Some(Bound::Tcp(l)) => Listener::poll_accept(l, cx).map_ok(|stream| {
                // Best effort: a socket that refuses NODELAY still works.
                let _ = stream.set_nodelay(true);
                indymilter::EitherStream::Tcp(stream)
            }),
            Some(Bound::Unix(l, _)) => {
                Listener::poll_accept(l, cx).map_ok(indymilter::EitherStream::Unix)
            }
        }
    }
}

impl Listener for MilterListener {
    type Io = MilterStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(sleep) = self.backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            let stream = match self.poll_stream(cx) {
                Poll::Ready(Ok(stream)) => stream,
                Poll::Ready(Err(e)) if passing_accept_error(&e) => {
                    // At most one line per interval: a descriptor shortage
                    // would otherwise log ten lines a second.
                    let now = Instant::now();
                    if self
                        .last_accept_error
                        .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL)
                    {
                        self.last_accept_error = Some(now);
                        tracing::warn!(listener = %self.limit.listener, error = %e, "cannot accept a connection now; trying again shortly");
                    }
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match self.limit.admit() {
                Some(guard) => {
                    return Poll::Ready(Ok(Counted {
                        stream,
                        _open: guard,
                    }));
                }
                // Dropping the stream closes it: the MTA sees the connection
                // end before negotiation and applies its
                // milter_default_action now, instead of waiting in the
                // listen queue for milter_command_timeout. Then accept the
                // next one, which registers the waker again.
                None => drop(stream),
            }
        }
    }
}

/// How long refusals are only counted after a warning was logged.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One listener's count of open connections against its `max_connections`.
/// Only the accept loop adds to the count, so it never passes the limit;
/// each connection's guard takes itself off when the connection closes.
pub(crate) struct ConnectionLimit {
    max: usize,
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    listener: String,
    /// Refusals since the last warning, and when that warning was logged.
    unlogged: u64,
    last_warning: Option<Instant>,
}

impl ConnectionLimit {
    pub fn new(max: usize, metrics: Arc<Metrics>, listener: String) -> ConnectionLimit {
        metrics.listener_started(&listener);
        ConnectionLimit {
            max,
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
            listener,
            unlogged: 0,
            last_warning: None,
        }
    }

    /// A guard for a new connection, or `None` (counted and logged) when the
    /// listener is full.
    fn admit(&mut self) -> Option<OpenGuard> {
        if self.open.load(Ordering::Acquire) >= self.max {
            self.refused();
            return None;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        self.metrics.connection_opened();
        Some(OpenGuard {
            open: self.open.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Count a refusal; warn at most every `REFUSAL_LOG_INTERVAL`, with how
    /// many were refused in between, so a flood does not flood the log.
    fn refused(&mut self) {
        self.metrics.connection_refused(&self.listener);
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            listener = %self.listener,
            max_connections = self.max,
            refused = self.unlogged,
            "listener at max_connections: closed new connections at once, so the MTA applies its milter_default_action; \
             raise max_connections or find what holds the connections open"
        );
        self.unlogged = 0;
        self.last_warning = Some(now);
    }
}

/// Takes a connection off its listener's count and the gauge when dropped.
struct OpenGuard {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connection_closed();
    }
}

/// An accepted stream that counts as open until it is dropped. indymilter
/// drops the stream when the session ends for any reason (QUIT, the MTA
/// closing, a timeout, shutdown), so the count runs from accept to close,
/// including connections that never send a command.
pub(crate) struct Counted<S> {
    stream: S,
    _open: OpenGuard,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{group_id, user_id};

    #[test]
    fn socket_owners_by_name_or_number() {
        // root and its group exist on every system the daemon runs on.
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(user_id("4242"), Some(4242));
        assert_eq!(group_id("4242"), Some(4242));
        assert_eq!(user_id("no-such-user-dispatch-milter"), None);
        assert_eq!(group_id("no-such-group-dispatch-milter"), None);
        assert_eq!(user_id("ro\0ot"), None);
    }
}
