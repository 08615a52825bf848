//! The transport between the MTA and the daemon (src/daemon/listen.rs):
//! the replies of end of message, modifications and final reply, reach the
//! MTA in one write. Seen from a raw TCP socket as the kernel counts it: the
//! replies arrive in one segment with data (`tcpi_data_segs_in`), which one
//! write of a few hundred bytes on loopback is, and so in one read. A read
//! alone would not tell: the daemon's separate writes follow each other
//! within microseconds, and usually all have arrived before the reader
//! wakes. Each separate write is a segment of its own (`TCP_NODELAY`), or
//! fewer when the kernel's autocorking merges some: never just one for
//! three replies every time, which is what this test asks.

use crate::common;

use common::daemon::{LISTEN, TestDaemon};
use common::raw_milter::{
    ADD_HEADER, ALL_ACTIONS, BODY, CONTINUE, EOH, EOM, HEADER, HELO, MAIL, RCPT, RawMilter, strings,
};
use tokio::io::AsyncReadExt;

/// Segments with data this socket has received (Linux's `TCP_INFO`).
fn data_segments_in(stream: &tokio::net::TcpStream) -> u32 {
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    // SAFETY: tcp_info is plain data; zero is a valid value for each field.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: fd is the stream's open socket; info and len outlive the
    // call, and len says how large info is.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

fn policy() -> String {
    format!(
        r#"{LISTEN}
[modifiers.one]
kind = "add_header"
name = "X-One"
value = "1"

[modifiers.two]
kind = "add_header"
name = "X-Two"
value = "2"

[pipelines.mx]
modify = ["one", "two"]
"#
    )
}

/// The packets in `bytes`, and whether they end exactly at a packet's end.
fn packets(bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, bool) {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || rest.len() < 4 + len {
            return (out, false);
        }
        out.push((rest[4], rest[5..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    (out, rest.is_empty())
}

#[tokio::test]
async fn end_of_message_replies_arrive_in_one_segment() {
    let mut d = TestDaemon::start(&policy()).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    m.negotiate(ALL_ACTIONS).await.expect("negotiate");
    m.macros(b'C', &[("{daemon_name}", "mx"), ("j", "mx.example.org")])
        .await
        .expect("macros");
    let (reply, _) = m
        .connect_from("client.example.net", "192.0.2.10")
        .await
        .expect("connect");
    assert_eq!(reply as char, CONTINUE as char);
    let steps: [(u8, Vec<u8>); 6] = [
        (HELO, strings(&["client.example.net"])),
        (MAIL, strings(&["<someone@example.net>"])),
        (RCPT, strings(&["<alice@example.org>"])),
        (HEADER, strings(&["Subject", " hi"])),
        (EOH, Vec::new()),
        (BODY, b"Hello.\r\n".to_vec()),
    ];
    for (command, data) in steps {
        let (reply, _) = m.command(command, &data).await.expect("reply");
        assert_eq!(reply as char, CONTINUE as char, "{}", command as char);
    }
    let segments_before = data_segments_in(&m.stream);
    m.send(EOM, &[]).await.expect("end of message");
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(common::raw_milter::REPLY_WAIT, m.stream.read(&mut buf))
        .await
        .expect("a reply in time")
        .expect("read");
    let (got, whole) = packets(&buf[..n]);
    // Nothing more comes: the daemon waits for the next command.
    let segments = data_segments_in(&m.stream) - segments_before;
    let kinds: String = got.iter().map(|(k, _)| *k as char).collect();
    assert!(whole, "the read ends inside a packet: {kinds:?}");
    let headers = got.iter().filter(|(k, _)| *k == ADD_HEADER).count();
    assert_eq!(
        headers, 2,
        "both added headers in the first read: {kinds:?}"
    );
    assert_eq!(
        got.last().map(|(k, _)| *k as char),
        Some(CONTINUE as char),
        "the final reply in the same read: {kinds:?}"
    );
    assert_eq!(
        segments, 1,
        "end of message's replies in one segment: {kinds:?}"
    );
    d.shutdown().await;
}
