//! Unit tests of listen.rs: the framing, the holding of end of message's
//! replies, the quick ACK decision, socket owners.
use super::{
    ConnectionLimit, Counted, Framing, HOLD_LIMIT, Metrics, awaits_our_reply, group_id, quickack,
    user_id,
};
use indymilter::message::{Message, write};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};

/// A packet as indymilter writes it.
fn packet(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = u32::try_from(payload.len() + 1)
        .expect("small")
        .to_be_bytes()
        .to_vec();
    p.push(kind);
    p.extend_from_slice(payload);
    p
}

#[test]
fn framing_follows_packets_split_anywhere() {
    let stream = [
        packet(b'h', b"X-Seen\0yes\0"),
        packet(b'i', b"\0\0\0\0A\0b\0"),
        packet(b'c', b""),
    ]
    .concat();
    // Every split point, byte by byte too: the state after each packet
    // is the same.
    for cut in 0..=stream.len() {
        let mut f = Framing::default();
        f.feed(&stream[..cut]);
        f.feed(&stream[cut..]);
        assert!(
            f.ends_with_final_reply() && !f.awaits_final_reply(),
            "cut at {cut}"
        );
    }
    let mut f = Framing::default();
    let first = packet(b'h', b"X-Seen\0yes\0");
    for (i, b) in first.iter().enumerate() {
        assert!(!f.awaits_final_reply(), "inside the packet, at {i}");
        f.feed(&[*b]);
    }
    assert!(f.awaits_final_reply());
    // A kind alone (no payload) completes at its header.
    f.feed(&packet(b'p', b""));
    assert!(f.ends_with_final_reply());
    for kind in *b"+-2ehimbq" {
        let mut f = Framing::default();
        f.feed(&packet(kind, b"x"));
        assert!(f.awaits_final_reply(), "{}", kind as char);
    }
    for kind in *b"acdrtysOp" {
        let mut f = Framing::default();
        f.feed(&packet(kind, b"x"));
        assert!(f.ends_with_final_reply(), "{}", kind as char);
    }
}

#[test]
fn framing_of_a_huge_payload_and_a_lost_stream() {
    let mut f = Framing::default();
    let len = (1u32 << 20) + 1;
    f.feed(&len.to_be_bytes());
    f.feed(b"b");
    for _ in 0..1024 {
        assert!(!f.awaits_final_reply());
        f.feed(&[0u8; 1024]);
    }
    assert!(f.awaits_final_reply());
    // The largest length a header can say is counted, not allocated.
    let mut f = Framing::default();
    f.feed(&[0xff, 0xff, 0xff, 0xff, b'h']);
    f.feed(&[0u8; 4096]);
    assert!(!f.awaits_final_reply() && !f.ends_with_final_reply());
    // A zero length is not what indymilter writes: hold nothing after it.
    let mut f = Framing::default();
    f.feed(&[0, 0, 0, 0, 0]);
    f.feed(&packet(b'h', b"x"));
    assert!(!f.awaits_final_reply() && !f.ends_with_final_reply());
}

/// A negotiation reply: version 6, all actions, these protocol options.
fn negotiation(options: u32) -> Vec<u8> {
    let mut payload = 6u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&0x1ffu32.to_be_bytes());
    payload.extend_from_slice(&options.to_be_bytes());
    packet(b'O', &payload)
}

#[test]
fn the_negotiated_options_are_read_from_our_reply_in_any_pieces() {
    let o = negotiation(0x1000 | 0x80 | 0x20);
    for cut in 0..=o.len() {
        let mut f = Framing::default();
        f.feed(&o[..cut]);
        f.feed(&o[cut..]);
        assert_eq!(f.options, Some(0x10a0), "cut at {cut}");
    }
    // A short negotiation packet says nothing.
    let mut f = Framing::default();
    f.feed(&packet(b'O', &[0, 0, 0, 6]));
    assert_eq!(f.options, None);
}

#[test]
fn quick_ack_unless_the_mta_waits_for_our_reply() {
    let read = |bytes: &[u8]| {
        let mut f = Framing::default();
        f.feed(bytes);
        f
    };
    let mail = packet(b'M', b"<a@example.org>\0");
    let macros = packet(b'D', b"Mi\0ABC\0");
    // A command we answer: our reply carries the ACK.
    assert!(awaits_our_reply(&read(&mail), None));
    assert!(awaits_our_reply(
        &read(&[macros.clone(), mail.clone()].concat()),
        None
    ));
    // A macro packet alone, its command still to come: ACK now.
    assert!(!awaits_our_reply(&read(&macros), None));
    // A packet still arriving: ACK now.
    assert!(!awaits_our_reply(&read(&mail[..7]), None));
    // A command negotiated without reply (SMFIP_NR_MAIL): ACK now.
    assert!(!awaits_our_reply(&read(&mail), Some(0x4000)));
    assert!(awaits_our_reply(&read(&mail), Some(0x1000)));
    for (kind, flag) in [
        (b'C', 0x1000),
        (b'H', 0x2000),
        (b'M', 0x4000),
        (b'R', 0x8000),
        (b'T', 0x1_0000),
        (b'U', 0x2_0000),
        (b'N', 0x4_0000),
        (b'B', 0x8_0000),
        (b'L', 0x80),
    ] {
        let p = packet(kind, b"x");
        assert!(awaits_our_reply(&read(&p), Some(!flag)), "{}", kind as char);
        assert!(!awaits_our_reply(&read(&p), Some(flag)), "{}", kind as char);
    }
    for kind in *b"OE" {
        assert!(awaits_our_reply(&read(&packet(kind, b"x")), Some(u32::MAX)));
    }
    for kind in *b"DAQK" {
        assert!(!awaits_our_reply(&read(&packet(kind, b"x")), None));
    }
}

/// Records each write it is given, accepting at most `max` bytes a call.
#[derive(Default)]
struct Recorder {
    writes: Vec<Vec<u8>>,
    flushes: usize,
    shutdown: bool,
    max: Option<usize>,
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.max.map_or(buf.len(), |m| m.min(buf.len()));
        self.writes.push(buf[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown = true;
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn counted<S>(stream: S) -> Counted<S> {
    let mut limit = ConnectionLimit::new(10, Arc::new(Metrics::new()), "test".into());
    let guard = limit.admit().expect("room");
    Counted::new(stream, None, guard)
}

/// Write `replies` the way indymilter does: through its 8 KiB
/// `BufStream`, each reply flushed.
async fn write_replies<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufStream<Counted<S>>,
    replies: &[(u8, Vec<u8>)],
) {
    for (kind, payload) in replies {
        write(stream, Message::new(*kind, payload.clone()))
            .await
            .expect("write");
    }
}

#[tokio::test]
async fn end_of_message_replies_go_out_in_one_write() {
    let mut s = BufStream::new(counted(Recorder::default()));
    let eom = [
        (b'h', b"X-Seen\0yes\0".to_vec()),
        (
            b'i',
            b"\0\0\0\0Authentication-Results\0mx; spf=pass\0".to_vec(),
        ),
        (b'c', Vec::new()),
    ];
    write_replies(&mut s, &eom[..2]).await;
    assert!(
        s.get_ref().stream.writes.is_empty(),
        "modifications are held"
    );
    write_replies(&mut s, &eom[2..]).await;
    let r = &s.get_ref().stream;
    let all: Vec<u8> = eom.iter().flat_map(|(k, p)| packet(*k, p)).collect();
    assert_eq!(r.writes, vec![all]);
    // Every other reply goes out at its own flush, one write each.
    for kind in *b"Opcartdys" {
        write_replies(&mut s, &[(kind, b"x".to_vec())]).await;
        let r = &s.get_ref().stream;
        assert_eq!(
            r.writes.last(),
            Some(&packet(kind, b"x")),
            "{}",
            kind as char
        );
    }
    assert_eq!(s.get_ref().stream.writes.len(), 10);
    assert!(s.get_ref().out.is_empty());
}

#[tokio::test]
async fn progress_sends_held_modifications_with_it() {
    let mut s = BufStream::new(counted(Recorder::default()));
    write_replies(&mut s, &[(b'h', b"A\0b\0".to_vec()), (b'p', Vec::new())]).await;
    let expected = [packet(b'h', b"A\0b\0"), packet(b'p', b"")].concat();
    assert_eq!(s.get_ref().stream.writes, vec![expected]);
}

#[tokio::test]
async fn a_reply_split_across_writes_and_a_short_socket() {
    // The framing is followed whatever the pieces: here a reply given a
    // byte at a time, to a socket that takes 3 bytes a call.
    let mut c = counted(Recorder {
        max: Some(3),
        ..Recorder::default()
    });
    let h = packet(b'h', b"X-Seen\0yes\0");
    for b in &h {
        c.write_all(&[*b]).await.expect("write");
    }
    c.flush().await.expect("flush");
    assert!(c.stream.writes.is_empty(), "the modification is held");
    let final_reply = packet(b'a', b"");
    c.write_all(&final_reply[..2]).await.expect("write");
    c.flush().await.expect("flush");
    // A flush that ends inside a packet holds nothing: what is written
    // is written.
    let sent: Vec<u8> = c.stream.writes.concat();
    assert_eq!(sent, [&h[..], &final_reply[..2]].concat());
    c.write_all(&final_reply[2..]).await.expect("write");
    c.flush().await.expect("flush");
    assert_eq!(c.stream.writes.concat(), [h, final_reply].concat());
    assert!(c.stream.writes.iter().all(|w| w.len() <= 3));
}

#[tokio::test]
async fn huge_replies_are_written_in_pieces_not_held_whole() {
    let mut s = BufStream::new(counted(Recorder::default()));
    let body = vec![b'x'; 1024 * 1024 - 1];
    let replies = [
        (b'b', body.clone()),
        (b'b', body.clone()),
        (b'a', Vec::new()),
    ];
    write_replies(&mut s, &replies).await;
    let r = &s.get_ref().stream;
    let all: Vec<u8> = replies.iter().flat_map(|(k, p)| packet(*k, p)).collect();
    assert_eq!(r.writes.concat(), all);
    assert!(
        r.writes.iter().all(|w| w.len() <= body.len()),
        "no write is larger than a reply"
    );
    assert!(s.get_ref().out.capacity() <= HOLD_LIMIT);
    // The tail of the last body replacement waited for the final reply.
    assert!(
        r.writes
            .last()
            .is_some_and(|w| w.ends_with(&packet(b'a', b"")))
    );
}

#[tokio::test]
async fn shutdown_writes_what_is_held() {
    let mut s = BufStream::new(counted(Recorder::default()));
    write_replies(&mut s, &[(b'h', b"A\0b\0".to_vec())]).await;
    assert!(s.get_ref().stream.writes.is_empty());
    s.shutdown().await.expect("shutdown");
    let r = &s.get_ref().stream;
    assert_eq!(r.writes, vec![packet(b'h', b"A\0b\0")]);
    assert!(r.shutdown);
}

/// Over a real socket pair: the peer finds nothing to read while the
/// modifications are held, then all of end of message in one read.
#[tokio::test]
async fn over_a_socket_the_peer_reads_end_of_message_at_once() {
    let (ours, mut peer) = tokio::net::UnixStream::pair().expect("socketpair");
    let mut s = BufStream::new(counted(ours));
    let eom = [
        (b'h', b"X-Seen\0yes\0".to_vec()),
        (b'h', b"X-Other\0no\0".to_vec()),
        (b'c', Vec::new()),
    ];
    write_replies(&mut s, &eom[..2]).await;
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        peer.try_read(&mut buf).map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock)
    );
    write_replies(&mut s, &eom[2..]).await;
    let n = peer.read(&mut buf).await.expect("read");
    let all: Vec<u8> = eom.iter().flat_map(|(k, p)| packet(*k, p)).collect();
    assert_eq!(&buf[..n], &all[..]);
}

#[tokio::test]
async fn quickack_is_accepted_by_a_tcp_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
    quickack(fd);
    #[cfg(target_os = "linux")]
    {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: fd is `client`'s open socket; v and len outlive the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(v, 1);
    }
}

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
