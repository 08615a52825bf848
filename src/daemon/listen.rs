//! The sockets the MTA connects to, and how the bytes cross them.
//!
//! UNIX sockets get the configured mode and owner; a stale file is replaced
//! and the file removed at exit. Each listener counts its open connections
//! and closes a connection past `max_connections` at once (see
//! `ConnectionLimit`), and every listener stops accepting when shutdown
//! begins.
//!
//! Reads and writes. indymilter reads and writes each connection through an
//! 8 KiB `BufStream`: a command (length, kind, payload: three reads in its
//! code) costs about one `read` of the socket, and a reply (three writes,
//! then a flush) one `write`. What that cannot see is that the replies of
//! end of message belong together: each modification (add a header, ...) is
//! flushed on its own, then the final reply. `Counted` follows the milter
//! framing of what it is given and holds a flush that ends with a
//! modification, so they all leave with the final reply, in one write (one
//! segment, one wake-up of the MTA). It holds at most `HOLD_LIMIT` bytes;
//! every other reply (progress included) is written at its flush, and
//! shutdown writes what is held.
//!
//! Options of an accepted TCP connection (UNIX sockets have no ACKs and no
//! Nagle):
//!
//! - `TCP_NODELAY`: a reply is one write, to be sent at once. With Nagle's
//!   algorithm, a reply written while the previous one is still
//!   unacknowledged waits for the MTA's delayed ACK, about 40 ms.
//! - `TCP_QUICKACK`, set again after a read that leaves the MTA with more
//!   to send: the MTA side may have Nagle on, and then a small write waits
//!   until the one before it is acknowledged. Linux delays that ACK (up to
//!   40 ms) hoping to send it with our reply, but there is no reply to a
//!   macro packet or to a command negotiated without one. Sendmail writes
//!   each macro packet and its command as two writes, so every command
//!   waited about 40 ms (six times a message). Postfix writes a command with
//!   its macros at once, but sends the DATA stage's macros alone when the
//!   milter skips DATA, and the message's headers and body then waited for
//!   their ACK: about 40 ms at end of message (a packet capture shows it;
//!   docs/benchmarks.md section 2). The option makes the kernel acknowledge
//!   at once, but it does not stay set (each reply we send makes the kernel
//!   delay ACKs again), so it is set after each such read. After a read that
//!   ends with a whole command we answer, it is not: the MTA waits for the
//!   reply, which carries the ACK, and the system call and a bare ACK
//!   packet are saved. Which commands we answer is read from our own
//!   negotiation reply (the no-reply flags). One `setsockopt` per macro
//!   packet or unanswered command that arrives alone.

use super::metrics::Metrics;
use crate::server_config::{ListenAddress, ListenerSettings};
use indymilter::Listener;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
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

/// A listener for indymilter that sets `TCP_NODELAY` (and has `Counted`
/// re-arm `TCP_QUICKACK`; see the module comment), holds at most
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
                    let quickack = match &stream {
                        indymilter::EitherStream::Tcp(s) => {
                            Some(std::os::fd::AsRawFd::as_raw_fd(s))
                        }
                        indymilter::EitherStream::Unix(_) => None,
                    };
                    return Poll::Ready(Ok(Counted::new(stream, quickack, guard)));
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
///
/// It also shapes the traffic (see the module comment): the modification
/// replies of end of message wait in `out` until the final reply follows
/// them, and on TCP every read that returned data re-arms `TCP_QUICKACK`.
pub(crate) struct Counted<S> {
    stream: S,
    /// Reply bytes accepted from indymilter and not yet written; `sent` of
    /// them are already on the socket.
    out: Vec<u8>,
    sent: usize,
    /// Where the bytes accepted so far stand in the milter framing.
    framing: Framing,
    /// Where the bytes read so far stand in it (TCP only).
    inbound: Framing,
    /// The TCP socket to re-arm `TCP_QUICKACK` on after a read; `None` for
    /// a UNIX socket (no ACKs there).
    quickack: Option<std::os::fd::RawFd>,
    _open: OpenGuard,
}

/// Reply kinds that only modify the message (milter protocol version 6:
/// add, delete recipient, add recipient with arguments, change sender, add,
/// insert, change header, replace body, quarantine). They are sent only at
/// end of message, and a final reply (accept, continue, reject, tempfail,
/// discard, reply code) always follows them, so nothing is lost by holding
/// them until it comes. Progress (`p`) is not one of them: it exists to be
/// seen at once.
const MODIFICATIONS: &[u8] = b"+-2ehimbq";

/// How many bytes `Counted` keeps at most before it writes them whatever
/// the framing says: a series of large body replacements is written as it
/// comes, in pieces of this size, and never buffered whole.
const HOLD_LIMIT: usize = 64 * 1024;

/// A buffer that grew past this (huge replies) is given back after it is
/// written, so an idle connection does not keep it.
const KEEP_CAPACITY: usize = 8 * 1024;

/// The framing of a byte stream of milter packets (a 4-byte big-endian
/// length, which counts the kind byte and the payload, the kind byte, the
/// payload), fed in pieces of any size. Only the lengths are read: the
/// payload is skipped by counting.
#[derive(Clone, Copy, Debug, Default)]
struct Framing {
    header: [u8; 5],
    /// Header bytes seen of the current packet (0 between packets).
    header_len: usize,
    /// Payload bytes still to come of the current packet.
    payload_left: usize,
    /// The kind of the last complete packet.
    last_kind: Option<u8>,
    /// A zero length was seen: a packet without a kind, which indymilter
    /// never writes. From then on nothing is held.
    lost: bool,
    /// Payload bytes seen of the current packet.
    pos: usize,
    /// Bytes 8 to 11 of an `O` packet's payload: the protocol options.
    word: [u8; 4],
    /// The protocol options of the last complete negotiation packet (`O`):
    /// in our replies, which commands the MTA expects no reply to.
    options: Option<u32>,
}

impl Framing {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // Between packets, with a whole header at hand (the usual case):
            // the length is read in place, and a packet that ends within
            // `bytes` is passed over at once. A negotiation packet takes the
            // long way, which reads its options.
            if self.payload_left == 0
                && self.header_len == 0
                && let Some((header, rest)) = bytes.split_first_chunk::<5>()
                && header[4] != b'O'
            {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                self.lost |= len == 0;
                self.header[4] = header[4];
                let payload = usize::try_from(len.saturating_sub(1)).unwrap_or(usize::MAX);
                match rest.get(payload..) {
                    Some(after) => {
                        self.last_kind = Some(header[4]);
                        bytes = after;
                    }
                    None => {
                        self.last_kind = None;
                        self.pos = rest.len();
                        self.payload_left = payload - rest.len();
                        return;
                    }
                }
                continue;
            }
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if self.header[4] == b'O' && self.pos < 12 {
                    for (i, b) in bytes[..n].iter().enumerate() {
                        if let Some(w) = (self.pos + i).checked_sub(8).filter(|w| *w < 4) {
                            self.word[w] = *b;
                        }
                    }
                }
                self.pos += n;
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.last_kind = Some(self.header[4]);
                    if self.header[4] == b'O' && self.pos >= 12 {
                        self.options = Some(u32::from_be_bytes(self.word));
                    }
                }
                continue;
            }
            let n = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                self.pos = 0;
                let len = u32::from_be_bytes([
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                ]);
                if len == 0 {
                    self.lost = true;
                }
                // u32 always fits in usize on the targets we build for (64-bit
                // and 32-bit Unix).
                self.payload_left = usize::try_from(len.saturating_sub(1)).unwrap_or(usize::MAX);
                self.last_kind = if self.payload_left == 0 {
                    Some(self.header[4])
                } else {
                    None
                };
            }
        }
    }

    /// The bytes so far end with whole packets, the last a modification: a
    /// final reply is still to come.
    fn awaits_final_reply(&self) -> bool {
        !self.lost
            && self.header_len == 0
            && self.payload_left == 0
            && self.last_kind.is_some_and(|k| MODIFICATIONS.contains(&k))
    }

    /// The kind of the packet the bytes so far end with, if they end with a
    /// whole one.
    fn ends_with(&self) -> Option<u8> {
        if self.lost || self.header_len != 0 || self.payload_left != 0 {
            return None;
        }
        self.last_kind
    }

    /// The bytes so far end with a whole packet that is not a modification.
    fn ends_with_final_reply(&self) -> bool {
        !self.lost
            && self.header_len == 0
            && self.payload_left == 0
            && self.last_kind.is_some_and(|k| !MODIFICATIONS.contains(&k))
    }
}

/// Whether the MTA, having sent the commands `inbound` has seen, now waits
/// for our reply: the last is whole and is a command we answer, given the
/// protocol `options` we negotiated (no-reply flags, milter protocol 6).
/// Then our reply carries the ACK; otherwise (a macro packet, a command
/// without reply, a packet still arriving) the MTA may have more to send
/// and must not wait for our delayed ACK.
fn awaits_our_reply(inbound: &Framing, options: Option<u32>) -> bool {
    let Some(kind) = inbound.ends_with() else {
        return false;
    };
    let no_reply_flag = match kind {
        b'O' | b'E' => return true,
        b'C' => 0x1000,
        b'H' => 0x2000,
        b'M' => 0x4000,
        b'R' => 0x8000,
        b'T' => 0x1_0000,
        b'U' => 0x2_0000,
        b'N' => 0x4_0000,
        b'B' => 0x8_0000,
        b'L' => 0x80,
        // Macros, abort, quit, quit and reuse, anything else: no reply.
        _ => return false,
    };
    options.unwrap_or(0) & no_reply_flag == 0
}

impl<S> Counted<S> {
    fn new(stream: S, quickack: Option<std::os::fd::RawFd>, open: OpenGuard) -> Counted<S> {
        Counted {
            stream,
            out: Vec::new(),
            sent: 0,
            framing: Framing::default(),
            inbound: Framing::default(),
            quickack,
            _open: open,
        }
    }
}

impl<S: AsyncWrite + Unpin> Counted<S> {
    /// Write all of `out`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Poll::Ready(Ok(()))
    }
}

/// Ask the kernel to acknowledge what it received at once, and to leave
/// the delayed-ACK ("pingpong") mode it enters again each time we send.
/// Best effort: a socket that refuses it still works, only slower.
#[cfg(target_os = "linux")]
fn quickack(fd: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is the socket of the stream that `Counted` owns, open as
    // long as it; the option value is a c_int that outlives the call, and
    // its size is passed with it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn quickack(_fd: std::os::fd::RawFd) {}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        // Never wait for a command with replies unsent: indymilter does not
        // read with a modification held (a final reply always follows), but
        // if it ever did, the MTA and we would wait for each other.
        if !me.out.is_empty()
            && let Poll::Ready(Err(e)) = me.poll_drain(cx)
        {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut me.stream).poll_read(cx, buf))?;
        if let Some(fd) = me.quickack
            && buf.filled().len() > before
        {
            me.inbound.feed(&buf.filled()[before..]);
            if !awaits_our_reply(&me.inbound, me.framing.options) {
                quickack(fd);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.out.len() >= HOLD_LIMIT {
            ready!(me.poll_drain(cx))?;
        }
        if me.out.is_empty() {
            // Nothing held: whole replies that need no holding, and large
            // pieces, go straight to the socket, without a copy.
            let mut after = me.framing;
            after.feed(buf);
            if buf.len() >= HOLD_LIMIT || after.ends_with_final_reply() {
                let n = ready!(Pin::new(&mut me.stream).poll_write(cx, buf))?;
                if n == buf.len() {
                    me.framing = after;
                } else {
                    me.framing.feed(&buf[..n]);
                }
                return Poll::Ready(Ok(n));
            }
        }
        let n = buf.len().min(HOLD_LIMIT - me.out.len());
        me.out.extend_from_slice(&buf[..n]);
        me.framing.feed(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.framing.awaits_final_reply() {
            // Held: the final reply that must follow goes out with these.
            return Poll::Ready(Ok(()));
        }
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
