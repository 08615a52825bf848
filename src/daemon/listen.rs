//! The sockets the MTA connects to: TCP with `TCP_NODELAY` (at end of
//! message a milter writes several replies in a row, and Nagle's algorithm
//! would hold the last one for the MTA's delayed ACK, about 40 ms), and UNIX
//! sockets with the configured mode and owner, a stale file replaced and the
//! file removed at exit. Every listener stops accepting when shutdown begins.

use crate::server_config::{ListenAddress, ListenerSettings};
use indymilter::Listener;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

/// A bound socket, before the milter runs on it.
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl Bound {
    /// The address actually bound (port 0 resolved), for logs and tests.
    pub fn local_address(&self) -> ListenAddress {
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

#[derive(Debug)]
pub struct BindError(pub String);

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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

/// A user name or a numeric uid.
fn user_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we read
    // one field immediately, before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| (*pw).pw_uid)
    }
}

/// A group name or a numeric gid.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: as in `user_id`, for getgrnam.
    unsafe {
        let gr = libc::getgrnam(c.as_ptr());
        (!gr.is_null()).then(|| (*gr).gr_gid)
    }
}

/// A listener for indymilter that sets `TCP_NODELAY` and stops accepting
/// (and closes its socket) once `stop` turns true.
pub struct MilterListener {
    inner: Option<Bound>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl MilterListener {
    pub fn new(bound: Bound, mut stop: watch::Receiver<bool>) -> MilterListener {
        let stopped = Box::pin(async move {
            // An error means the sender is gone: the daemon is ending anyway.
            let _ = stop.wait_for(|stop| *stop).await;
        });
        MilterListener {
            inner: Some(bound),
            stopped,
        }
    }
}

impl Listener for MilterListener {
    type Io = indymilter::EitherStream<TcpStream, UnixStream>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        if self.inner.is_some() && self.stopped.as_mut().poll(cx).is_ready() {
            // Closing the socket makes the MTA's next connection fail at once
            // (it then applies milter_default_action) instead of waiting in
            // the backlog of a daemon that will not answer.
            self.inner = None;
        }
        match &mut self.inner {
            None => Poll::Pending,
            Some(Bound::Tcp(l)) => match Listener::poll_accept(l, cx) {
                Poll::Ready(Ok(stream)) => {
                    // Best effort: a socket that refuses NODELAY still works.
                    let _ = stream.set_nodelay(true);
                    Poll::Ready(Ok(indymilter::EitherStream::Tcp(stream)))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            Some(Bound::Unix(l, _)) => match Listener::poll_accept(l, cx) {
                Poll::Ready(Ok(stream)) => Poll::Ready(Ok(indymilter::EitherStream::Unix(stream))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
