//! The codec against bytes written by hand from the protocol's description
//! (Sendmail's `mfdef.h`, Postfix's `milter8.c`), and properties: a stream
//! split anywhere reads the same, random bytes never panic nor grow the
//! buffer past its limit, and what is encoded parses back the same.

use super::*;
use proptest::prelude::*;

/// A frame as the MTA writes it.
fn frame(code: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(code);
    out.extend_from_slice(payload);
    out
}

fn parse(code: u8, payload: &[u8]) -> Result<Command<'_>, CommandError> {
    Command::parse(Frame { code, payload })
}

/// A command encoded as an MTA would (test-only: the daemon never sends
/// commands).
fn encode_command(c: &Command<'_>, out: &mut Vec<u8>) {
    let mut p = Vec::new();
    let string = |p: &mut Vec<u8>, s: &[u8]| {
        p.extend_from_slice(s);
        p.push(0);
    };
    match c {
        Command::Abort
        | Command::QuitNewConnection
        | Command::EndOfHeaders
        | Command::Quit
        | Command::Data => {}
        Command::Body(b) | Command::EndOfBody(b) => p.extend_from_slice(b),
        Command::Helo(s) | Command::Unknown(s) => string(&mut p, s),
        Command::Connect(c) => {
            string(&mut p, c.hostname);
            match c.address {
                ConnectAddress::Unknown => p.push(b'U'),
                ConnectAddress::Inet { port, address }
                | ConnectAddress::Inet6 { port, address } => {
                    let family = if matches!(c.address, ConnectAddress::Inet { .. }) {
                        b'4'
                    } else {
                        b'6'
                    };
                    p.push(family);
                    p.extend_from_slice(&port.to_be_bytes());
                    string(&mut p, address);
                }
                ConnectAddress::Unix { path } => {
                    p.push(b'L');
                    p.extend_from_slice(&[0, 0]);
                    string(&mut p, path);
                }
            }
        }
        Command::Macros(m) => {
            p.push(m.stage);
            for (name, value) in m.iter() {
                string(&mut p, name);
                string(&mut p, value);
            }
        }
        Command::Header(h) => {
            string(&mut p, h.name);
            string(&mut p, h.value);
        }
        Command::Mail(a) | Command::Rcpt(a) => {
            string(&mut p, a.address);
            for arg in a.esmtp() {
                string(&mut p, arg);
            }
        }
        Command::Negotiate(n) => {
            p.extend_from_slice(&n.version.to_be_bytes());
            p.extend_from_slice(&n.actions.bits().to_be_bytes());
            p.extend_from_slice(&n.protocol.bits().to_be_bytes());
        }
    }
    out.extend_from_slice(&frame(c.code(), &p));
}

/// Every frame of `bytes`, fed in pieces of the given sizes (cycled), each
/// frame parsed and encoded again; the first error ends the stream.
fn feed(bytes: &[u8], pieces: &[usize], limit: usize) -> (Vec<u8>, Option<String>) {
    let mut reader = FrameReader::with_limit(limit);
    let mut again = Vec::new();
    let mut rest = bytes;
    let mut sizes = pieces.iter().copied().cycle();
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => match Command::parse(f) {
                    Ok(c) => encode_command(&c, &mut again),
                    Err(e) => return (again, Some(e.to_string())),
                },
                Ok(None) => break,
                Err(e) => return (again, Some(e.to_string())),
            }
        }
        assert!(
            reader.capacity() <= 4 + limit,
            "buffer {} > limit",
            reader.capacity()
        );
        if rest.is_empty() {
            return (again, reader.finish().err().map(|e| e.to_string()));
        }
        let want = sizes.next().unwrap_or(1).max(1).min(rest.len());
        let took = reader.push(&rest[..want]);
        assert!(took > 0, "room for more after all frames were taken");
        rest = &rest[took..];
    }
}

// ---- frames

#[test]
fn a_frame_is_length_command_payload() {
    let mut r = FrameReader::new();
    r.push(b"\0\0\0\x06Hmx.a\0\0\0\0\x01N");
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!((f.code, f.payload), (b'H', &b"mx.a\0"[..]));
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!((f.code, f.payload), (b'N', &b""[..]));
    assert_eq!(r.next_frame(), Ok(None));
    assert_eq!(r.finish(), Ok(()));
}

#[test]
fn a_partial_frame_waits_for_more() {
    let mut r = FrameReader::new();
    r.push(b"\0\0");
    assert_eq!(r.next_frame(), Ok(None));
    r.push(b"\0\x03Bx");
    assert_eq!(r.next_frame(), Ok(None));
    assert_eq!(
        r.finish(),
        Err(FrameError::Truncated { buffered: 6 }),
        "the stream ended inside a frame"
    );
    r.push(b"y");
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!((f.code, f.payload), (b'B', &b"xy"[..]));
}

#[test]
fn zero_length_and_too_long_frames_are_refused_from_the_length_field() {
    let mut r = FrameReader::new();
    r.push(b"\0\0\0\0");
    assert_eq!(r.next_frame(), Err(FrameError::Empty));
    assert_eq!(r.next_frame(), Err(FrameError::Empty), "the error repeats");

    let mut r = FrameReader::with_limit(100);
    r.push(&101u32.to_be_bytes());
    assert_eq!(
        r.next_frame(),
        Err(FrameError::TooLong {
            len: 101,
            limit: 100
        })
    );
    assert!(r.capacity() <= 104);

    let mut r = FrameReader::new();
    r.push(&u32::MAX.to_be_bytes());
    assert!(matches!(r.next_frame(), Err(FrameError::TooLong { .. })));
    assert!(r.capacity() <= 8 * 1024, "nothing was allocated for it");
}

#[test]
fn the_limit_is_the_length_field() {
    let mut r = FrameReader::with_limit(10);
    let ok = frame(b'B', &[7; 9]);
    assert_eq!(r.push(&ok), 14);
    assert_eq!(r.next_frame().unwrap().unwrap().payload, &[7; 9]);
    assert_eq!(r.capacity(), 14);
    r.push(&frame(b'B', &[7; 10]));
    assert_eq!(
        r.next_frame(),
        Err(FrameError::TooLong { len: 11, limit: 10 })
    );
}

#[test]
fn the_default_limit_takes_a_body_chunk_and_a_postfix_header() {
    assert_eq!(DEFAULT_FRAME_LIMIT, 256 * 1024);
    let mut r = FrameReader::new();
    let chunk = frame(b'B', &vec![b'x'; 65535]);
    let mut header = b"X-Long\0".to_vec();
    header.extend(vec![b'v'; 102_400]);
    header.push(0);
    let header = frame(b'L', &header);
    for bytes in [&chunk, &header] {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            rest = &rest[r.push(rest)..];
        }
        let f = r.next_frame().unwrap().unwrap();
        assert!(Command::parse(f).is_ok());
    }
}

#[test]
fn the_buffer_grows_to_the_frame_and_is_reused() {
    let mut r = FrameReader::new();
    let chunk = frame(b'B', &vec![b'x'; 40 * 1024]);
    r.push(&chunk[..4]);
    assert!(
        r.read_space().len() >= chunk.len() - 4,
        "room for the whole frame in one read"
    );
    r.push(&chunk[4..]);
    assert_eq!(r.next_frame().unwrap().unwrap().payload.len(), 40 * 1024);
    let capacity = r.capacity();
    for _ in 0..3 {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            rest = &rest[r.push(rest)..];
            while let Some(f) = r.next_frame().unwrap() {
                assert_eq!(f.payload.len(), 40 * 1024);
            }
        }
    }
    assert_eq!(r.capacity(), capacity, "no new buffer per message");
}

#[test]
fn read_space_is_empty_only_when_a_frame_waits() {
    let mut r = FrameReader::with_limit(8);
    let f = frame(b'B', b"1234567");
    assert_eq!(r.push(&f), 12);
    assert!(r.read_space().is_empty());
    assert!(r.next_frame().unwrap().is_some());
    assert!(!r.read_space().is_empty());
}

#[test]
fn filled_never_claims_more_than_the_space() {
    let mut r = FrameReader::with_limit(8);
    let space = r.read_space().len();
    r.filled(space + 1000);
    assert_eq!(r.buffered(), space);
}

// ---- commands

#[test]
fn commands_without_payload() {
    assert_eq!(parse(b'A', b""), Ok(Command::Abort));
    assert_eq!(parse(b'K', b""), Ok(Command::QuitNewConnection));
    assert_eq!(parse(b'N', b""), Ok(Command::EndOfHeaders));
    assert_eq!(parse(b'Q', b""), Ok(Command::Quit));
    assert_eq!(parse(b'T', b""), Ok(Command::Data));
    assert_eq!(
        parse(b'Q', b"x"),
        Err(CommandError::TrailingBytes {
            code: b'Q',
            extra: 1
        })
    );
}

#[test]
fn body_and_end_of_body() {
    assert_eq!(
        parse(b'B', b"line\r\n\0\xff"),
        Ok(Command::Body(b"line\r\n\0\xff"))
    );
    assert_eq!(parse(b'B', b""), Ok(Command::Body(b"")));
    assert_eq!(parse(b'E', b""), Ok(Command::EndOfBody(b"")));
    assert_eq!(parse(b'E', b"tail"), Ok(Command::EndOfBody(b"tail")));
}

#[test]
fn connect_in_each_family() {
    // hostname NUL, family, port (big-endian), address NUL (milter8.c).
    let c = parse(b'C', b"mx.example\x004\x1f\x90192.0.2.1\0").unwrap();
    let Command::Connect(c) = c else {
        panic!("{c:?}")
    };
    assert_eq!(c.hostname, b"mx.example");
    assert_eq!(
        c.address,
        ConnectAddress::Inet {
            port: 8080,
            address: b"192.0.2.1"
        }
    );
    assert_eq!(c.address.ip(), Some("192.0.2.1".parse().unwrap()));

    let Ok(Command::Connect(c)) = parse(b'C', b"[2001:db8::1]\x006\x00\x192001:db8::1\0") else {
        panic!()
    };
    assert_eq!(
        c.address,
        ConnectAddress::Inet6 {
            port: 25,
            address: b"2001:db8::1"
        }
    );
    assert_eq!(c.address.ip(), Some("2001:db8::1".parse().unwrap()));
    let v6 = ConnectAddress::Inet6 {
        port: 25,
        address: b"IPv6:2001:db8::2",
    };
    assert_eq!(v6.ip(), Some("2001:db8::2".parse().unwrap()));
    let wrong = ConnectAddress::Inet {
        port: 25,
        address: b"2001:db8::1",
    };
    assert_eq!(wrong.ip(), None, "an IPv6 text under family 4 is not taken");

    let Ok(Command::Connect(c)) = parse(b'C', b"localhost\0L\0\0/run/smtp.sock\0") else {
        panic!()
    };
    assert_eq!(
        c.address,
        ConnectAddress::Unix {
            path: b"/run/smtp.sock"
        }
    );
    assert_eq!(c.address.ip(), None);

    let Ok(Command::Connect(c)) = parse(b'C', b"localhost\0U") else {
        panic!()
    };
    assert_eq!(c.address, ConnectAddress::Unknown);
}

#[test]
fn broken_connects_are_typed_errors() {
    let e = |p: &[u8]| parse(b'C', p).unwrap_err();
    assert_eq!(e(b"host"), CommandError::MissingNul { code: b'C' });
    assert_eq!(e(b"host\0"), CommandError::Truncated { code: b'C' });
    assert_eq!(e(b"host\x004\x00"), CommandError::Truncated { code: b'C' });
    assert_eq!(
        e(b"host\x004\x00\x19192.0.2.1"),
        CommandError::MissingNul { code: b'C' }
    );
    assert_eq!(
        e(b"host\x004\x00\x19192.0.2.1\0x"),
        CommandError::TrailingBytes {
            code: b'C',
            extra: 1
        }
    );
    assert_eq!(e(b"host\0X"), CommandError::UnknownFamily { family: b'X' });
    assert_eq!(
        e(b"host\0Ux"),
        CommandError::TrailingBytes {
            code: b'C',
            extra: 1
        }
    );
}

#[test]
fn macros_with_and_without_braces() {
    let p = b"Cj\0mx.example\0{daemon_name}\0mx\0_\0client [192.0.2.1]\0{j}\0again\0";
    let Ok(Command::Macros(m)) = parse(b'D', p) else {
        panic!()
    };
    assert_eq!(m.stage, b'C');
    let pairs: Vec<_> = m.iter().collect();
    assert_eq!(
        pairs,
        [
            (&b"j"[..], &b"mx.example"[..]),
            (b"daemon_name", b"mx"),
            (b"_", b"client [192.0.2.1]"),
            (b"j", b"again"),
        ]
    );
    assert_eq!(m.get(b"{daemon_name}"), Some(&b"mx"[..]));
    assert_eq!(m.get(b"daemon_name"), Some(&b"mx"[..]));
    assert_eq!(m.get(b"j"), Some(&b"again"[..]), "the last one sent wins");
    assert_eq!(m.get(b"{i}"), None);
    assert!(!m.is_empty());

    // Postfix sends the stage letter alone when no macro has a value.
    let Ok(Command::Macros(m)) = parse(b'D', b"M") else {
        panic!()
    };
    assert!(m.is_empty());
    assert_eq!(m.iter().count(), 0);
    // An empty value is a value.
    let Ok(Command::Macros(m)) = parse(b'D', b"Mi\0\0") else {
        panic!()
    };
    assert_eq!(m.get(b"i"), Some(&b""[..]));
}

#[test]
fn broken_macros_are_typed_errors() {
    assert_eq!(
        parse(b'D', b""),
        Err(CommandError::Truncated { code: b'D' })
    );
    assert_eq!(
        parse(b'D', b"Cj\0v"),
        Err(CommandError::MissingNul { code: b'D' })
    );
    assert_eq!(parse(b'D', b"Cj\0"), Err(CommandError::MacroWithoutValue));
    assert_eq!(
        parse(b'D', b"Cj\0v\0k\0"),
        Err(CommandError::MacroWithoutValue)
    );
}

#[test]
fn helo_header_unknown() {
    assert_eq!(
        parse(b'H', b"mail.example\0"),
        Ok(Command::Helo(b"mail.example"))
    );
    assert_eq!(
        parse(b'H', b"\xff\xfe\0"),
        Ok(Command::Helo(b"\xff\xfe")),
        "not UTF-8"
    );
    assert_eq!(
        parse(b'H', b"x"),
        Err(CommandError::MissingNul { code: b'H' })
    );
    assert_eq!(
        parse(b'H', b"x\0y\0"),
        Err(CommandError::TrailingBytes {
            code: b'H',
            extra: 2
        })
    );
    assert_eq!(
        parse(b'L', b"Subject\0 hi\n\tthere\0"),
        Ok(Command::Header(Header {
            name: b"Subject",
            value: b" hi\n\tthere"
        }))
    );
    assert_eq!(
        parse(b'L', b"Subject\0hi"),
        Err(CommandError::MissingNul { code: b'L' })
    );
    assert_eq!(
        parse(b'L', b"Subject"),
        Err(CommandError::MissingNul { code: b'L' })
    );
    assert_eq!(parse(b'L', b"\0v\0"), Err(CommandError::EmptyHeaderName));
    assert_eq!(
        parse(b'U', b"XFOO bar\0"),
        Ok(Command::Unknown(b"XFOO bar"))
    );
}

#[test]
fn mail_and_rcpt_with_esmtp_parameters() {
    let Ok(Command::Mail(a)) = parse(b'M', b"<a@example.net>\0SIZE=100\0BODY=8BITMIME\0") else {
        panic!()
    };
    assert_eq!(a.address, b"<a@example.net>");
    assert_eq!(
        a.esmtp().collect::<Vec<_>>(),
        [&b"SIZE=100"[..], b"BODY=8BITMIME"]
    );
    let Ok(Command::Rcpt(a)) = parse(b'R', b"<b@example.org>\0") else {
        panic!()
    };
    assert_eq!(a.address, b"<b@example.org>");
    assert_eq!(a.esmtp().count(), 0);
    let Ok(Command::Mail(a)) = parse(b'M', b"<>\0") else {
        panic!()
    };
    assert_eq!(a.address, b"<>");
    assert_eq!(
        parse(b'M', b""),
        Err(CommandError::MissingNul { code: b'M' })
    );
    assert_eq!(
        parse(b'R', b"<b>\0X=1"),
        Err(CommandError::MissingNul { code: b'R' })
    );
}

#[test]
fn negotiation_from_the_mta() {
    // Postfix 3.x: version 6, every action, its event mask.
    let p = [0, 0, 0, 6, 0, 0, 0x01, 0xff, 0x00, 0x1f, 0xff, 0xff];
    let Ok(Command::Negotiate(n)) = parse(b'O', &p) else {
        panic!()
    };
    assert_eq!(n.version, 6);
    assert_eq!(n.actions, Actions::all());
    assert!(
        n.protocol
            .contains(ProtocolOptions::NR_CONN | ProtocolOptions::HDR_LEADSPC)
    );
    assert_eq!(n.protocol.bits(), 0x001f_ffff);
    let p = [0, 0, 0, 6, 0, 0, 0x80, 0, 0x40, 0, 0, 0];
    let Ok(Command::Negotiate(n)) = parse(b'O', &p) else {
        panic!()
    };
    assert_eq!(n.actions.bits(), 0x8000, "unknown bits are kept");
    assert_eq!(n.protocol.bits(), 0x4000_0000);
    assert_eq!(
        parse(b'O', &p[..11]),
        Err(CommandError::Truncated { code: b'O' })
    );
    let mut long = p.to_vec();
    long.push(0);
    assert_eq!(
        parse(b'O', &long),
        Err(CommandError::TrailingBytes {
            code: b'O',
            extra: 1
        })
    );
}

#[test]
fn unknown_command_letters_are_refused() {
    assert_eq!(
        parse(b'Z', b""),
        Err(CommandError::UnknownCommand { code: b'Z' })
    );
    assert_eq!(
        parse(b'c', b""),
        Err(CommandError::UnknownCommand { code: b'c' })
    );
}

#[test]
fn flag_values_are_the_protocols() {
    assert_eq!(Actions::ADDHDRS.bits(), 0x01);
    assert_eq!(Actions::CHGHDRS.bits(), 0x10);
    assert_eq!(Actions::SETSYMLIST.bits(), 0x100);
    assert_eq!(Actions::all().bits(), 0x1ff);
    assert_eq!(ProtocolOptions::NR_HDR.bits(), 1 << 7);
    assert_eq!(ProtocolOptions::NODATA.bits(), 1 << 9);
    assert_eq!(ProtocolOptions::NR_CONN.bits(), 1 << 12);
    assert_eq!(ProtocolOptions::NR_BODY.bits(), 1 << 19);
    assert_eq!(ProtocolOptions::HDR_LEADSPC.bits(), 1 << 20);
    assert_eq!(ProtocolOptions::MDS_1M.bits(), 0x2000_0000);
    assert_eq!(PROTOCOL_VERSION, 6);
}

// ---- replies

fn encoded(r: Reply<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    r.encode(&mut out).unwrap();
    out
}

fn refused(r: Reply<'_>) -> ReplyError {
    let mut out = b"kept".to_vec();
    let e = r.encode(&mut out).unwrap_err();
    assert_eq!(out, b"kept", "nothing written on error");
    e
}

#[test]
fn replies_without_data() {
    for (r, code) in [
        (Reply::Continue, b'c'),
        (Reply::Accept, b'a'),
        (Reply::Reject, b'r'),
        (Reply::Tempfail, b't'),
        (Reply::Discard, b'd'),
        (Reply::Skip, b's'),
        (Reply::Progress, b'p'),
    ] {
        assert_eq!(encoded(r), [0, 0, 0, 1, code]);
    }
}

#[test]
fn several_replies_in_one_buffer() {
    let mut out = Vec::new();
    Reply::AddHeader {
        name: b"X-A",
        value: b"1",
    }
    .encode(&mut out)
    .unwrap();
    Reply::Continue.encode(&mut out).unwrap();
    assert_eq!(out, b"\0\0\0\x07hX-A\x001\0\0\0\0\x01c");
}

#[test]
fn reply_codes_one_and_several_lines() {
    let r = |code, status, lines: &[&[u8]]| {
        let mut out = Vec::new();
        Reply::ReplyCode(SmtpReply {
            code,
            status,
            lines,
        })
        .encode(&mut out)
        .map(|()| out)
    };
    assert_eq!(
        r(550, "5.7.1", &[b"Rejected by policy"]).unwrap(),
        frame(b'y', b"550 5.7.1 Rejected by policy\0")
    );
    assert_eq!(
        r(451, "4.7.1", &[b"first", b"second", b"last"]).unwrap(),
        frame(
            b'y',
            b"451-4.7.1 first\r\n451-4.7.1 second\r\n451 4.7.1 last\0"
        )
    );
    assert_eq!(
        r(550, "5.7.1", &[b""]).unwrap(),
        frame(b'y', b"550 5.7.1\0")
    );
    assert_eq!(
        r(550, "5.7.1", &[b"100% spam"]).unwrap(),
        frame(b'y', b"550 5.7.1 100%% spam\0"),
        "Sendmail reads a format string; Postfix turns %% back into %"
    );
    let lines: Vec<&[u8]> = vec![b"x"; 32];
    assert!(r(550, "5.7.1", &lines).is_ok());
    let long = vec![b'x'; 980];
    assert!(r(550, "5.7.1", &[&long]).is_ok());
}

#[test]
fn reply_codes_the_mta_would_refuse() {
    let e = |code, status, lines: &[&[u8]]| {
        refused(Reply::ReplyCode(SmtpReply {
            code,
            status,
            lines,
        }))
    };
    assert_eq!(
        e(250, "2.0.0", &[b"ok"]),
        ReplyError::ReplyCode { code: 250 }
    );
    assert_eq!(
        e(600, "5.0.0", &[b"x"]),
        ReplyError::ReplyCode { code: 600 }
    );
    for status in [
        "4.7.1", "5.7", "5.7.1.1", "5..1", "5.7.1000", "5.a.1", "", "55.7.1",
    ] {
        assert!(
            matches!(e(550, status, &[b"x"]), ReplyError::EnhancedStatus { .. }),
            "{status}"
        );
    }
    assert_eq!(e(550, "5.7.1", &[]), ReplyError::ReplyLines { lines: 0 });
    let lines: Vec<&[u8]> = vec![b"x"; 33];
    assert_eq!(
        e(550, "5.7.1", &lines),
        ReplyError::ReplyLines { lines: 33 }
    );
    assert_eq!(
        e(550, "5.7.1", &[b"ok", b"a\r\nb"]),
        ReplyError::ReplyLine { line: 2 }
    );
    assert_eq!(
        e(550, "5.7.1", &[b"a\nb"]),
        ReplyError::ReplyLine { line: 1 }
    );
    assert_eq!(
        e(550, "5.7.1", &[b"a\0b"]),
        ReplyError::ReplyLine { line: 1 }
    );
    let long = vec![b'x'; 981];
    assert_eq!(e(550, "5.7.1", &[&long]), ReplyError::ReplyLine { line: 1 });
}

#[test]
fn quarantine_and_recipients() {
    assert_eq!(
        encoded(Reply::Quarantine { reason: b"spam" }),
        frame(b'q', b"spam\0")
    );
    assert_eq!(
        refused(Reply::Quarantine { reason: b"" }),
        ReplyError::Empty {
            what: "quarantine reason"
        }
    );
    assert_eq!(
        encoded(Reply::AddRcpt { rcpt: b"<a@b>" }),
        frame(b'+', b"<a@b>\0")
    );
    assert_eq!(
        encoded(Reply::DeleteRcpt { rcpt: b"<a@b>" }),
        frame(b'-', b"<a@b>\0")
    );
    assert_eq!(
        encoded(Reply::AddRcptWithArgs {
            rcpt: b"<a@b>",
            args: Some(b"NOTIFY=NEVER ORCPT=rfc822;a@b")
        }),
        frame(b'2', b"<a@b>\0NOTIFY=NEVER ORCPT=rfc822;a@b\0")
    );
    assert_eq!(
        encoded(Reply::AddRcptWithArgs {
            rcpt: b"<a@b>",
            args: None
        }),
        frame(b'2', b"<a@b>\0")
    );
    assert_eq!(
        encoded(Reply::ChangeFrom {
            from: b"<s@b>",
            args: Some(b"RET=HDRS")
        }),
        frame(b'e', b"<s@b>\0RET=HDRS\0")
    );
    assert_eq!(
        encoded(Reply::ChangeFrom {
            from: b"<>",
            args: None
        }),
        frame(b'e', b"<>\0")
    );
    assert_eq!(
        refused(Reply::AddRcpt { rcpt: b"" }),
        ReplyError::Empty { what: "recipient" }
    );
    assert_eq!(
        refused(Reply::DeleteRcpt { rcpt: b"a\0b" }),
        ReplyError::Nul { what: "recipient" }
    );
    assert_eq!(
        refused(Reply::ChangeFrom {
            from: b"<s>",
            args: Some(b"A\0")
        }),
        ReplyError::Nul {
            what: "ESMTP parameters"
        }
    );
}

#[test]
fn header_edits() {
    assert_eq!(
        encoded(Reply::AddHeader {
            name: b"X-Spam",
            value: b"yes\n\tfolded"
        }),
        frame(b'h', b"X-Spam\0yes\n\tfolded\0")
    );
    assert_eq!(
        encoded(Reply::InsertHeader {
            index: 0,
            name: b"Authentication-Results",
            value: b" mx; spf=pass"
        }),
        frame(b'i', b"\0\0\0\0Authentication-Results\0 mx; spf=pass\0")
    );
    assert_eq!(
        encoded(Reply::ChangeHeader {
            index: 2,
            name: b"Subject",
            value: b""
        }),
        frame(b'm', b"\0\0\0\x02Subject\0\0"),
        "an empty value deletes"
    );
    assert_eq!(
        refused(Reply::ChangeHeader {
            index: 1 << 31,
            name: b"Subject",
            value: b"x"
        }),
        ReplyError::HeaderIndex { index: 1 << 31 }
    );
    for name in [&b""[..], b"X:Y", b"X Y", b"X\0", b"X\xff", b"X\n"] {
        assert_eq!(
            refused(Reply::AddHeader { name, value: b"v" }),
            ReplyError::HeaderName,
            "{name:?}"
        );
    }
    for value in [&b"a\nBcc: x"[..], b"a\r\n b", b"a\n", b"a\rb"] {
        assert_eq!(
            refused(Reply::AddHeader { name: b"X", value }),
            ReplyError::HeaderLineBreak,
            "{value:?}"
        );
    }
    assert_eq!(
        refused(Reply::AddHeader {
            name: b"X",
            value: b"a\0b"
        }),
        ReplyError::Nul {
            what: "header value"
        }
    );
    let long = vec![b'v'; MAX_REPLY_DATA];
    assert!(matches!(
        refused(Reply::AddHeader {
            name: b"X",
            value: &long
        }),
        ReplyError::TooLong { .. }
    ));
}

#[test]
fn a_body_goes_in_chunks_of_65535() {
    assert_eq!(encoded(Reply::ReplaceBody(b"")), frame(b'b', b""));
    assert_eq!(
        encoded(Reply::ReplaceBody(b"new\r\n")),
        frame(b'b', b"new\r\n")
    );
    let body = vec![b'x'; 2 * 65535 + 1];
    let out = encoded(Reply::ReplaceBody(&body));
    let mut expected = frame(b'b', &body[..65535]);
    expected.extend(frame(b'b', &body[65535..2 * 65535]));
    expected.extend(frame(b'b', b"x"));
    assert_eq!(out, expected);
}

#[test]
fn negotiation_reply() {
    let n = Negotiation {
        version: 6,
        actions: Actions::ADDHDRS | Actions::CHGHDRS | Actions::SETSYMLIST,
        protocol: ProtocolOptions::NR_CONN | ProtocolOptions::HDR_LEADSPC,
        macros: &[
            (MacroStage::Connect, &["j", "{daemon_name}"]),
            (MacroStage::EndOfMessage, &["i"]),
        ],
    };
    let mut p = vec![0, 0, 0, 6, 0, 0, 0x01, 0x11, 0x00, 0x10, 0x10, 0x00];
    p.extend_from_slice(b"\0\0\0\0j {daemon_name}\0\0\0\0\x05i\0");
    assert_eq!(encoded(Reply::Negotiate(n)), frame(b'O', &p));

    let plain = Negotiation {
        version: 6,
        actions: Actions::empty(),
        protocol: ProtocolOptions::empty(),
        macros: &[],
    };
    assert_eq!(
        encoded(Reply::Negotiate(plain)),
        frame(b'O', &[0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0])
    );
    assert_eq!(
        refused(Reply::Negotiate(Negotiation {
            actions: Actions::ADDHDRS,
            ..n
        })),
        ReplyError::MacrosWithoutSetSymList
    );
    for bad in ["", "a b", "a\0"] {
        let macros = [(MacroStage::Helo, &[bad][..])];
        assert_eq!(
            refused(Reply::Negotiate(Negotiation {
                macros: &macros,
                ..n
            })),
            ReplyError::MacroName
        );
    }
}

// ---- properties

/// One valid command as the MTA sends it.
fn command_frame() -> impl Strategy<Value = Vec<u8>> {
    let string = || prop::collection::vec(1u8..=255, 0..20);
    let nonempty = || prop::collection::vec(1u8..=255, 1..20);
    let join = |parts: Vec<Vec<u8>>| {
        parts.into_iter().flat_map(|mut p| {
            p.push(0);
            p
        })
    };
    prop_oneof![
        prop::sample::select(&b"AKNQT"[..]).prop_map(|c| frame(c, b"")),
        (
            prop::sample::select(&b"BE"[..]),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(c, p)| frame(c, &p)),
        (prop::sample::select(&b"HU"[..]), string())
            .prop_map(move |(c, s)| frame(c, &[s, vec![0]].concat())),
        (nonempty(), string())
            .prop_map(move |(n, v)| frame(b'L', &join(vec![n, v]).collect::<Vec<_>>())),
        (
            prop::sample::select(&b"MR"[..]),
            prop::collection::vec(string(), 1..4)
        )
            .prop_map(move |(c, args)| frame(c, &join(args).collect::<Vec<_>>())),
        (
            any::<u8>(),
            prop::collection::vec((string(), string()), 0..4)
        )
            .prop_map(move |(stage, pairs)| {
                // Braces are dropped when read; write names without them so the
                // re-encoded bytes are the same.
                let mut p = vec![stage];
                for (mut n, v) in pairs {
                    if n.first() == Some(&b'{') && n.last() == Some(&b'}') {
                        n.insert(0, b'x');
                    }
                    p.extend(join(vec![n, v]));
                }
                frame(b'D', &p)
            }),
        (any::<[u8; 12]>()).prop_map(|p| frame(b'O', &p)),
        (
            string(),
            any::<u16>(),
            string(),
            prop::sample::select(&b"46L"[..])
        )
            .prop_map(|(host, port, addr, family)| {
                let port = if family == b'L' { 0 } else { port };
                let mut p = host;
                p.push(0);
                p.push(family);
                p.extend_from_slice(&port.to_be_bytes());
                p.extend(addr);
                p.push(0);
                frame(b'C', &p)
            }),
        string().prop_map(|host| frame(b'C', &[host, b"\0U".to_vec()].concat())),
    ]
}

proptest! {
    /// Frames split at any points read the same as whole, and each command
    /// encodes back to its own bytes.
    #[test]
    fn a_stream_split_anywhere_reads_the_same(
        frames in prop::collection::vec(command_frame(), 1..12),
        pieces in prop::collection::vec(1usize..64, 1..8),
    ) {
        let stream = frames.concat();
        let (whole, error) = feed(&stream, &[stream.len()], DEFAULT_FRAME_LIMIT);
        prop_assert_eq!(error, None);
        prop_assert_eq!(&whole, &stream);
        let (split, error) = feed(&stream, &pieces, DEFAULT_FRAME_LIMIT);
        prop_assert_eq!(error, None);
        prop_assert_eq!(&split, &stream);
        let (one_by_one, _) = feed(&stream, &[1], DEFAULT_FRAME_LIMIT);
        prop_assert_eq!(&one_by_one, &stream);
    }

    /// Random bytes: no panic, the buffer stays within the limit, and the
    /// same frames come out however the bytes are split.
    #[test]
    fn random_bytes_never_panic_nor_grow_past_the_limit(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        pieces in prop::collection::vec(1usize..300, 1..8),
        limit in 1usize..1500,
    ) {
        let whole = feed(&bytes, &[bytes.len().max(1)], limit);
        let split = feed(&bytes, &pieces, limit);
        prop_assert_eq!(whole, split);
    }

    /// Small frames with plausible lengths reach the command parser.
    #[test]
    fn random_payloads_never_panic_the_parser(
        code in prop::sample::select(&b"ABCDEHKLMNOQRTUZ"[..]),
        payload in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..40),
    ) {
        if let Ok(c) = Command::parse(Frame { code, payload: &payload }) {
            let mut again = Vec::new();
            encode_command(&c, &mut again);
            // Braces in macro names are dropped, nothing else changes.
            if code != b'D' {
                prop_assert_eq!(again, frame(code, &payload));
            }
        }
    }

    /// A header edit or recipient reply reads back as written.
    #[test]
    fn replies_parse_back(
        name in "[!-9;-~]{1,20}",
        value in "[ -~]{0,40}",
        index in 0u32..=MAX_HEADER_INDEX,
        rcpt in prop::collection::vec(1u8..=255, 1..30),
        args in prop::option::of(prop::collection::vec(1u8..=255, 0..30)),
    ) {
        let mut out = Vec::new();
        let replies = [
            Reply::AddHeader { name: name.as_bytes(), value: value.as_bytes() },
            Reply::InsertHeader { index, name: name.as_bytes(), value: value.as_bytes() },
            Reply::ChangeHeader { index, name: name.as_bytes(), value: value.as_bytes() },
            Reply::AddRcpt { rcpt: &rcpt },
            Reply::AddRcptWithArgs { rcpt: &rcpt, args: args.as_deref() },
            Reply::DeleteRcpt { rcpt: &rcpt },
            Reply::ChangeFrom { from: &rcpt, args: args.as_deref() },
            Reply::Quarantine { reason: &rcpt },
        ];
        for r in &replies {
            r.encode(&mut out).unwrap();
        }
        let mut reader = FrameReader::new();
        prop_assert_eq!(reader.push(&out), out.len());
        for r in &replies {
            let f = reader.next_frame().unwrap().unwrap();
            prop_assert_eq!(f.code, r.code());
            prop_assert_eq!(decode_reply(f), *r);
        }
        prop_assert_eq!(reader.next_frame(), Ok(None));
    }

    /// A reply text with any printable bytes and `%` comes out as lines of
    /// `CODE-STATUS text` joined by CRLF, `%` doubled.
    #[test]
    fn reply_code_lines(lines in prop::collection::vec("[ -~]{0,50}", 1..=32)) {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let out = encoded(Reply::ReplyCode(SmtpReply { code: 554, status: "5.7.0", lines: &lines }));
        let text = &out[5..out.len() - 1];
        let got: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        prop_assert_eq!(got.len(), lines.len());
        for (i, (got, line)) in got.iter().zip(&lines).enumerate() {
            let last = i + 1 == lines.len();
            let mut want = format!("554{}5.7.0", if last { ' ' } else { '-' }).into_bytes();
            if !line.is_empty() {
                want.push(b' ');
                want.extend(String::from_utf8_lossy(line).replace('%', "%%").bytes());
            }
            if !last {
                want.push(b'\r');
            }
            prop_assert_eq!(got.to_vec(), want);
        }
    }
}

/// Test-only: the replies with plain fields, read back from a frame.
fn decode_reply(f: Frame<'_>) -> Reply<'_> {
    let strings: Vec<&[u8]> = match f.code {
        b'i' | b'm' => f.payload[4..].split(|&b| b == 0).collect(),
        _ => f.payload.split(|&b| b == 0).collect(),
    };
    // Every string ends in a NUL, so the split leaves one empty piece last.
    assert_eq!(strings.last(), Some(&&b""[..]));
    let s = &strings[..strings.len() - 1];
    let index = || u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
    match f.code {
        b'h' => Reply::AddHeader {
            name: s[0],
            value: s[1],
        },
        b'i' => Reply::InsertHeader {
            index: index(),
            name: s[0],
            value: s[1],
        },
        b'm' => Reply::ChangeHeader {
            index: index(),
            name: s[0],
            value: s[1],
        },
        b'+' => Reply::AddRcpt { rcpt: s[0] },
        b'2' => Reply::AddRcptWithArgs {
            rcpt: s[0],
            args: s.get(1).copied(),
        },
        b'-' => Reply::DeleteRcpt { rcpt: s[0] },
        b'e' => Reply::ChangeFrom {
            from: s[0],
            args: s.get(1).copied(),
        },
        b'q' => Reply::Quarantine { reason: s[0] },
        other => panic!("not decoded here: {other}"),
    }
}
