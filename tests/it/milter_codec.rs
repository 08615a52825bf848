//! Our milter codec (src/milter) against indymilter's, which the daemon and
//! the load generator speak today: commands written by indymilter's
//! encoder (as the load generator plays the MTA) parse to the same fields,
//! and replies we encode parse in indymilter's reader (the same reader the
//! load generator uses) to the replies meant. The flag values agree.

use dispatch_milter::milter::{
    Actions, Command, ConnectAddress, FrameReader, MacroStage, Negotiation, ProtocolOptions, Reply,
    SmtpReply,
};
use indymilter::message::command::{
    Command as IndyCommand, ConnInfoPayload, EnvAddrPayload, HeaderPayload, HeloPayload,
    MacroPayload, OptNegPayload, UnknownPayload,
};
use indymilter::message::reply::Reply as IndyReply;
use indymilter::{Actions as IndyActions, MacroStage as IndyStage, ProtoOpts, SocketInfo};
use std::ffi::CString;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// indymilter's bytes for a sequence of commands.
async fn indy_bytes(commands: Vec<IndyCommand>) -> Vec<u8> {
    let mut out = Vec::new();
    for command in commands {
        indymilter::message::write(&mut out, command.into_message())
            .await
            .unwrap();
    }
    out
}

/// indymilter's reading of replies we encoded.
async fn indy_replies(mut bytes: &[u8]) -> Vec<IndyReply> {
    let mut replies = Vec::new();
    while !bytes.is_empty() {
        let msg = indymilter::message::read(&mut bytes).await.unwrap();
        replies.push(IndyReply::parse_reply(msg).unwrap());
    }
    replies
}

#[tokio::test]
async fn commands_from_indymilters_encoder_parse_the_same() {
    let bytes = indy_bytes(vec![
        IndyCommand::OptNeg(OptNegPayload {
            version: 6,
            actions: IndyActions::all(),
            opts: ProtoOpts::all(),
        }),
        IndyCommand::DefMacros(MacroPayload {
            stage: IndyStage::Connect,
            macros: vec![c("j"), c("mx.example"), c("{daemon_name}"), c("mx")],
        }),
        IndyCommand::ConnInfo(ConnInfoPayload {
            hostname: c("client.example"),
            socket_info: SocketInfo::Inet("192.0.2.7:4711".parse().unwrap()),
        }),
        IndyCommand::ConnInfo(ConnInfoPayload {
            hostname: c("[2001:db8::7]"),
            socket_info: SocketInfo::Inet("[2001:db8::7]:25".parse().unwrap()),
        }),
        IndyCommand::ConnInfo(ConnInfoPayload {
            hostname: c("localhost"),
            socket_info: SocketInfo::Unix(c("/run/s")),
        }),
        IndyCommand::ConnInfo(ConnInfoPayload {
            hostname: c("localhost"),
            socket_info: SocketInfo::Unknown,
        }),
        IndyCommand::Helo(HeloPayload {
            hostname: c("helo.example"),
        }),
        IndyCommand::Mail(EnvAddrPayload {
            args: vec![c("<a@example.net>"), c("SIZE=10")],
        }),
        IndyCommand::Rcpt(EnvAddrPayload {
            args: vec![c("<b@example.org>")],
        }),
        IndyCommand::Data,
        IndyCommand::Header(HeaderPayload {
            name: c("Subject"),
            value: c(" hello"),
        }),
        IndyCommand::Eoh,
        IndyCommand::BodyChunk(vec![b'x'; 65535].into()),
        IndyCommand::BodyEnd(Default::default()),
        IndyCommand::Unknown(UnknownPayload { arg: c("XYZZY") }),
        IndyCommand::Abort,
        IndyCommand::QuitNc,
        IndyCommand::Quit,
    ])
    .await;

    let mut reader = FrameReader::new();
    let mut rest = &bytes[..];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        rest = &rest[reader.push(rest)..];
        while let Some(frame) = reader.next_frame().unwrap() {
            let command = Command::parse(frame).unwrap();
            seen.push(describe(&command));
        }
    }
    reader.finish().unwrap();
    assert_eq!(
        seen,
        [
            "negotiate 6 1ff 1fffff".to_string(),
            "macros C j=mx.example daemon_name=mx".into(),
            "connect client.example 192.0.2.7 port 4711".into(),
            "connect [2001:db8::7] 2001:db8::7 port 25".into(),
            "connect localhost unix /run/s".into(),
            "connect localhost unknown".into(),
            "helo helo.example".into(),
            "mail <a@example.net> SIZE=10".into(),
            "rcpt <b@example.org>".into(),
            "data".into(),
            "header Subject= hello".into(),
            "eoh".into(),
            "body 65535".into(),
            "eob 0".into(),
            "unknown XYZZY".into(),
            "abort".into(),
            "quit_nc".into(),
            "quit".into(),
        ]
    );
}

fn describe(c: &Command<'_>) -> String {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match c {
        Command::Negotiate(n) => format!(
            "negotiate {} {:x} {:x}",
            n.version,
            n.actions.bits(),
            n.protocol.bits()
        ),
        Command::Macros(m) => {
            let pairs: Vec<String> = m
                .iter()
                .map(|(n, v)| format!("{}={}", s(n), s(v)))
                .collect();
            format!("macros {} {}", char::from(m.stage), pairs.join(" "))
        }
        Command::Connect(c) => {
            let addr = match c.address {
                ConnectAddress::Inet { port, .. } | ConnectAddress::Inet6 { port, .. } => {
                    format!("{} port {port}", c.address.ip().unwrap())
                }
                ConnectAddress::Unix { path } => format!("unix {}", s(path)),
                ConnectAddress::Unknown => "unknown".into(),
            };
            format!("connect {} {addr}", s(c.hostname))
        }
        Command::Helo(h) => format!("helo {}", s(h)),
        Command::Mail(a) | Command::Rcpt(a) => {
            let word = if matches!(c, Command::Mail(_)) {
                "mail"
            } else {
                "rcpt"
            };
            let mut out = format!("{word} {}", s(a.address));
            for arg in a.esmtp() {
                out.push(' ');
                out.push_str(&s(arg));
            }
            out
        }
        Command::Data => "data".into(),
        Command::Header(h) => format!("header {}={}", s(h.name), s(h.value)),
        Command::EndOfHeaders => "eoh".into(),
        Command::Body(b) => format!("body {}", b.len()),
        Command::EndOfBody(b) => format!("eob {}", b.len()),
        Command::Unknown(u) => format!("unknown {}", s(u)),
        Command::Abort => "abort".into(),
        Command::QuitNewConnection => "quit_nc".into(),
        Command::Quit => "quit".into(),
    }
}

#[tokio::test]
async fn replies_we_encode_parse_in_indymilter() {
    let lines: [&[u8]; 2] = [b"first", b"100% sure"];
    let macros: [(MacroStage, &[&str]); 2] = [
        (MacroStage::Connect, &["j", "{daemon_name}"]),
        (MacroStage::EndOfMessage, &["i"]),
    ];
    let replies = [
        Reply::Negotiate(Negotiation {
            version: 6,
            actions: Actions::ADDHDRS | Actions::SETSYMLIST,
            protocol: ProtocolOptions::NR_CONN | ProtocolOptions::HDR_LEADSPC,
            macros: &macros,
        }),
        Reply::Continue,
        Reply::Accept,
        Reply::Reject,
        Reply::Tempfail,
        Reply::Discard,
        Reply::Skip,
        Reply::Progress,
        Reply::ReplyCode(SmtpReply {
            code: 550,
            status: "5.7.1",
            lines: &lines,
        }),
        Reply::Quarantine { reason: b"spam" },
        Reply::AddHeader {
            name: b"X-A",
            value: b" one\n\ttwo",
        },
        Reply::InsertHeader {
            index: 0,
            name: b"X-B",
            value: b"b",
        },
        Reply::ChangeHeader {
            index: 2,
            name: b"Subject",
            value: b"",
        },
        Reply::AddRcpt { rcpt: b"<c@d>" },
        Reply::AddRcptWithArgs {
            rcpt: b"<c@d>",
            args: Some(b"NOTIFY=NEVER"),
        },
        Reply::DeleteRcpt { rcpt: b"<e@f>" },
        Reply::ChangeFrom {
            from: b"<s@t>",
            args: None,
        },
        Reply::ReplaceBody(b"new body\r\n"),
    ];
    let mut out = Vec::new();
    for r in &replies {
        r.encode(&mut out).unwrap();
    }
    let got = indy_replies(&out).await;
    let expected = vec![
        IndyReply::OptNeg {
            version: 6,
            actions: IndyActions::ADD_HEADER | IndyActions::REQUEST_MACROS,
            opts: ProtoOpts::NOREPLY_CONNECT | ProtoOpts::LEADING_SPACE,
            macros: [
                (IndyStage::Connect, c("j {daemon_name}")),
                (IndyStage::Eom, c("i")),
            ]
            .into_iter()
            .collect(),
        },
        IndyReply::Continue,
        IndyReply::Accept,
        IndyReply::Reject,
        IndyReply::Tempfail,
        IndyReply::Discard,
        IndyReply::Skip,
        IndyReply::Progress,
        IndyReply::ReplyCode {
            reply: c("550-5.7.1 first\r\n550 5.7.1 100%% sure"),
        },
        IndyReply::Quarantine { reason: c("spam") },
        IndyReply::AddHeader {
            name: c("X-A"),
            value: c(" one\n\ttwo"),
        },
        IndyReply::InsertHeader {
            index: 0,
            name: c("X-B"),
            value: c("b"),
        },
        IndyReply::ChangeHeader {
            name: c("Subject"),
            index: 2,
            value: c(""),
        },
        IndyReply::AddRcpt { rcpt: c("<c@d>") },
        IndyReply::AddRcptExt {
            rcpt: c("<c@d>"),
            args: Some(c("NOTIFY=NEVER")),
        },
        IndyReply::DeleteRcpt { rcpt: c("<e@f>") },
        IndyReply::ChangeSender {
            mail: c("<s@t>"),
            args: None,
        },
        IndyReply::ReplaceBody {
            chunk: b"new body\r\n".to_vec().into(),
        },
    ];
    assert_eq!(got, expected);
}

#[test]
fn flag_bits_agree_with_indymilter() {
    let actions = [
        (Actions::ADDHDRS, IndyActions::ADD_HEADER),
        (Actions::CHGBODY, IndyActions::REPLACE_BODY),
        (Actions::ADDRCPT, IndyActions::ADD_RCPT),
        (Actions::DELRCPT, IndyActions::DELETE_RCPT),
        (Actions::CHGHDRS, IndyActions::CHANGE_HEADER),
        (Actions::QUARANTINE, IndyActions::QUARANTINE),
        (Actions::CHGFROM, IndyActions::CHANGE_SENDER),
        (Actions::ADDRCPT_PAR, IndyActions::ADD_RCPT_EXT),
        (Actions::SETSYMLIST, IndyActions::REQUEST_MACROS),
    ];
    for (ours, theirs) in actions {
        assert_eq!(ours.bits(), theirs.bits(), "{ours:?}");
    }
    assert_eq!(Actions::all().bits(), IndyActions::all().bits());
    let options = [
        (ProtocolOptions::NOCONNECT, ProtoOpts::NO_CONNECT),
        (ProtocolOptions::NOHELO, ProtoOpts::NO_HELO),
        (ProtocolOptions::NOMAIL, ProtoOpts::NO_MAIL),
        (ProtocolOptions::NORCPT, ProtoOpts::NO_RCPT),
        (ProtocolOptions::NOBODY, ProtoOpts::NO_BODY),
        (ProtocolOptions::NOHDRS, ProtoOpts::NO_HEADER),
        (ProtocolOptions::NOEOH, ProtoOpts::NO_EOH),
        (ProtocolOptions::NR_HDR, ProtoOpts::NOREPLY_HEADER),
        (ProtocolOptions::NOUNKNOWN, ProtoOpts::NO_UNKNOWN),
        (ProtocolOptions::NODATA, ProtoOpts::NO_DATA),
        (ProtocolOptions::SKIP, ProtoOpts::SKIP),
        (ProtocolOptions::RCPT_REJ, ProtoOpts::REJECTED_RCPT),
        (ProtocolOptions::NR_CONN, ProtoOpts::NOREPLY_CONNECT),
        (ProtocolOptions::NR_HELO, ProtoOpts::NOREPLY_HELO),
        (ProtocolOptions::NR_MAIL, ProtoOpts::NOREPLY_MAIL),
        (ProtocolOptions::NR_RCPT, ProtoOpts::NOREPLY_RCPT),
        (ProtocolOptions::NR_DATA, ProtoOpts::NOREPLY_DATA),
        (ProtocolOptions::NR_UNKN, ProtoOpts::NOREPLY_UNKNOWN),
        (ProtocolOptions::NR_EOH, ProtoOpts::NOREPLY_EOH),
        (ProtocolOptions::NR_BODY, ProtoOpts::NOREPLY_BODY),
        (ProtocolOptions::HDR_LEADSPC, ProtoOpts::LEADING_SPACE),
    ];
    for (ours, theirs) in options {
        assert_eq!(ours.bits(), theirs.bits(), "{ours:?}");
    }
}
