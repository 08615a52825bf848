//! Replies to the MTA, encoded into the caller's buffer so that the several
//! replies of an end of message leave in one write. Each reply is checked
//! against what the MTAs accept before a byte is written; a refused reply
//! leaves the buffer as it was.

use super::flags::{Actions, ProtocolOptions};

/// `SMFIR_ADDRCPT`.
const ADDRCPT: u8 = b'+';
/// `SMFIR_DELRCPT`.
const DELRCPT: u8 = b'-';
/// `SMFIR_ADDRCPT_PAR`.
const ADDRCPT_PAR: u8 = b'2';
/// `SMFIR_ACCEPT`.
const ACCEPT: u8 = b'a';
/// `SMFIR_REPLBODY`.
const REPLBODY: u8 = b'b';
/// `SMFIR_CONTINUE`.
const CONTINUE: u8 = b'c';
/// `SMFIR_DISCARD`.
const DISCARD: u8 = b'd';
/// `SMFIR_CHGFROM`.
const CHGFROM: u8 = b'e';
/// `SMFIR_ADDHEADER`.
const ADDHEADER: u8 = b'h';
/// `SMFIR_INSHEADER`.
const INSHEADER: u8 = b'i';
/// `SMFIR_CHGHEADER`.
const CHGHEADER: u8 = b'm';
/// `SMFIR_PROGRESS`.
const PROGRESS: u8 = b'p';
/// `SMFIR_QUARANTINE`.
const QUARANTINE: u8 = b'q';
/// `SMFIR_REJECT`.
const REJECT: u8 = b'r';
/// `SMFIR_SKIP`.
const SKIP: u8 = b's';
/// `SMFIR_TEMPFAIL`.
const TEMPFAIL: u8 = b't';
/// `SMFIR_REPLYCODE`.
const REPLYCODE: u8 = b'y';
/// `SMFIC_OPTNEG`: the negotiation reply uses the command's letter.
const OPTNEG: u8 = b'O';

/// The most data one reply frame may carry: Sendmail refuses a longer
/// reply (`MILTER_MAX_DATA_SIZE`, unless a larger size was negotiated) and
/// libmilter splits a replaced body into chunks of this size
/// (`MILTER_CHUNK_SIZE`). Postfix takes longer ones, but nothing we send
/// needs them.
pub const MAX_REPLY_DATA: usize = 65535;

/// The most lines of a multi-line SMTP reply (libmilter's `MAXREPLIES`).
pub const MAX_REPLY_LINES: usize = 32;

/// The longest text of one reply line (libmilter's `MAXREPLYLEN`).
pub const MAX_REPLY_LINE_LEN: usize = 980;

/// The index a header edit may carry: the wire holds 32 bits, but both
/// libmilter and Postfix read it as a signed `int`.
pub const MAX_HEADER_INDEX: u32 = i32::MAX as u32;

/// The stages a negotiation reply may ask macros for (`SMFIM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MacroStage {
    /// `SMFIM_CONNECT`.
    Connect = 0,
    /// `SMFIM_HELO`.
    Helo = 1,
    /// `SMFIM_ENVFROM`: MAIL.
    Mail = 2,
    /// `SMFIM_ENVRCPT`: RCPT.
    Rcpt = 3,
    /// `SMFIM_DATA`.
    Data = 4,
    /// `SMFIM_EOM`: end of message.
    EndOfMessage = 5,
    /// `SMFIM_EOH`: end of headers.
    EndOfHeaders = 6,
}

/// The negotiation reply: what the milter takes of what the MTA offered,
/// and the macros it wants per stage instead of the MTA's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiation<'a> {
    /// The protocol version (at most the MTA's).
    pub version: u32,
    /// The actions the milter may take.
    pub actions: Actions,
    /// The protocol options the milter wants.
    pub protocol: ProtocolOptions,
    /// Macro names per stage (`j`, `{daemon_name}`); needs
    /// [`Actions::SETSYMLIST`]. A stage not listed keeps the MTA's list.
    pub macros: &'a [(MacroStage, &'a [&'a str])],
}

/// A custom SMTP reply (`SMFIR_REPLYCODE`): code, enhanced status code and
/// one or more lines of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmtpReply<'a> {
    /// 4xx or 5xx.
    pub code: u16,
    /// The RFC 3463 enhanced status code, whose class agrees with the code.
    pub status: &'a str,
    /// The text, one entry per line (at least one, at most 32).
    pub lines: &'a [&'a [u8]],
}

/// One reply to the MTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `c`: go on.
    Continue,
    /// `a`: accept; at a stage after HELO it ends filtering of the message.
    Accept,
    /// `r`: reject with the MTA's default reply.
    Reject,
    /// `t`: tempfail with the MTA's default reply.
    Tempfail,
    /// `d`: accept and discard the message.
    Discard,
    /// `y`: reject or tempfail with this reply.
    ReplyCode(SmtpReply<'a>),
    /// `s`: skip the rest of the body chunks (needs `SMFIP_SKIP`).
    Skip,
    /// `p`: still working; restarts the MTA's timeout.
    Progress,
    /// `q`: put the message on hold, with a reason.
    Quarantine {
        /// Why; not empty.
        reason: &'a [u8],
    },
    /// `h`: append a header.
    AddHeader {
        /// The field name.
        name: &'a [u8],
        /// The value; folded with LF and white space.
        value: &'a [u8],
    },
    /// `i`: insert a header before the `index`th (0: first).
    InsertHeader {
        /// Where.
        index: u32,
        /// The field name.
        name: &'a [u8],
        /// The value; folded with LF and white space.
        value: &'a [u8],
    },
    /// `m`: replace the `index`th (1-based) header of this name; an empty
    /// value deletes it.
    ChangeHeader {
        /// Which instance of the name.
        index: u32,
        /// The field name.
        name: &'a [u8],
        /// The value; empty deletes.
        value: &'a [u8],
    },
    /// `+`: add a recipient.
    AddRcpt {
        /// The address.
        rcpt: &'a [u8],
    },
    /// `2`: add a recipient with ESMTP parameters (needs
    /// `SMFIF_ADDRCPT_PAR`).
    AddRcptWithArgs {
        /// The address.
        rcpt: &'a [u8],
        /// The parameters, space-separated (`NOTIFY=NEVER`).
        args: Option<&'a [u8]>,
    },
    /// `-`: delete a recipient, as the MTA sent it at RCPT.
    DeleteRcpt {
        /// The address.
        rcpt: &'a [u8],
    },
    /// `e`: change the envelope sender.
    ChangeFrom {
        /// The address.
        from: &'a [u8],
        /// ESMTP parameters, space-separated.
        args: Option<&'a [u8]>,
    },
    /// `b`: the new body, or a part of it (sent in as many frames as it
    /// needs; the parts of one body must follow each other).
    ReplaceBody(&'a [u8]),
    /// `O`: the answer to the MTA's negotiation.
    Negotiate(Negotiation<'a>),
}

/// Why a reply was not written: the MTA would refuse it, or it would say
/// something other than meant (a NUL cuts a string short; a line break
/// starts a new header).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A string that may not be empty is.
    #[error("milter reply: {what} is empty")]
    Empty {
        /// Which string.
        what: &'static str,
    },
    /// A NUL inside a string would end it early.
    #[error("milter reply: {what} contains a NUL")]
    Nul {
        /// Which string.
        what: &'static str,
    },
    /// Not a header field name (RFC 5322 §3.6.8: printable ASCII but `:`).
    #[error("milter reply: invalid header name")]
    HeaderName,
    /// A CR, or an LF not followed by white space (which would start a new
    /// header), or a value ending in a line break.
    #[error(
        "milter reply: header value has a line break that is not folding (LF then space or tab)"
    )]
    HeaderLineBreak,
    /// An index past what the MTAs read.
    #[error("milter reply: header index {index} is larger than {MAX_HEADER_INDEX}")]
    HeaderIndex {
        /// The index.
        index: u32,
    },
    /// Not 4xx or 5xx.
    #[error("milter reply: reply code {code} is not 4xx or 5xx")]
    ReplyCode {
        /// The code.
        code: u16,
    },
    /// Not `X.Y.Z` with the class of the reply code (RFC 3463).
    #[error("milter reply: enhanced status \"{status}\" does not fit reply code {code}")]
    EnhancedStatus {
        /// The reply code.
        code: u16,
        /// The status as given.
        status: String,
    },
    /// No line, or more than the MTAs take.
    #[error("milter reply: {lines} reply lines (1 to {MAX_REPLY_LINES})")]
    ReplyLines {
        /// How many.
        lines: usize,
    },
    /// A reply line with CR, LF or NUL, or longer than the MTAs take.
    #[error(
        "milter reply: reply line {line} is longer than {MAX_REPLY_LINE_LEN} bytes or has CR, LF or NUL"
    )]
    ReplyLine {
        /// Which line, from 1.
        line: usize,
    },
    /// A macro name that is empty or has a space or NUL.
    #[error("milter reply: invalid macro name in the negotiation reply")]
    MacroName,
    /// Macro lists without the action that lets the MTA read them.
    #[error("milter reply: macro lists need the SETSYMLIST action")]
    MacrosWithoutSetSymList,
    /// More data than one frame may carry.
    #[error("milter reply: {len} bytes of data, more than {MAX_REPLY_DATA}")]
    TooLong {
        /// The data length.
        len: usize,
    },
}

impl Reply<'_> {
    /// Append this reply's frame (or frames, for a long body) to `out`. On
    /// error nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ReplyError> {
        let mark = out.len();
        let result = self.write_frames(out);
        if result.is_err() {
            out.truncate(mark);
        }
        result
    }

    /// The reply's letter.
    pub fn code(&self) -> u8 {
        match self {
            Reply::Continue => CONTINUE,
            Reply::Accept => ACCEPT,
            Reply::Reject => REJECT,
            Reply::Tempfail => TEMPFAIL,
            Reply::Discard => DISCARD,
            Reply::ReplyCode(_) => REPLYCODE,
            Reply::Skip => SKIP,
            Reply::Progress => PROGRESS,
            Reply::Quarantine { .. } => QUARANTINE,
            Reply::AddHeader { .. } => ADDHEADER,
            Reply::InsertHeader { .. } => INSHEADER,
            Reply::ChangeHeader { .. } => CHGHEADER,
            Reply::AddRcpt { .. } => ADDRCPT,
            Reply::AddRcptWithArgs { .. } => ADDRCPT_PAR,
            Reply::DeleteRcpt { .. } => DELRCPT,
            Reply::ChangeFrom { .. } => CHGFROM,
            Reply::ReplaceBody(_) => REPLBODY,
            Reply::Negotiate(_) => OPTNEG,
        }
    }

    /// Write, possibly leaving a partial frame on error (the caller
    /// truncates).
    fn write_frames(&self, out: &mut Vec<u8>) -> Result<(), ReplyError> {
        let code = self.code();
        match *self {
            Reply::Continue
            | Reply::Accept
            | Reply::Reject
            | Reply::Tempfail
            | Reply::Discard
            | Reply::Skip
            | Reply::Progress => {
                let f = open(out, code);
                close(out, f)
            }
            Reply::ReplyCode(reply) => {
                let f = open(out, code);
                smtp_reply(out, &reply)?;
                out.push(0);
                close(out, f)
            }
            Reply::Quarantine { reason } => {
                let f = open(out, code);
                string(out, "quarantine reason", reason, false)?;
                close(out, f)
            }
            Reply::AddHeader { name, value } => {
                let f = open(out, code);
                header(out, name, value)?;
                close(out, f)
            }
            Reply::InsertHeader { index, name, value }
            | Reply::ChangeHeader { index, name, value } => {
                if index > MAX_HEADER_INDEX {
                    return Err(ReplyError::HeaderIndex { index });
                }
                let f = open(out, code);
                out.extend_from_slice(&index.to_be_bytes());
                header(out, name, value)?;
                close(out, f)
            }
            Reply::AddRcpt { rcpt } | Reply::DeleteRcpt { rcpt } => {
                let f = open(out, code);
                string(out, "recipient", rcpt, false)?;
                close(out, f)
            }
            Reply::AddRcptWithArgs { rcpt, args } => {
                let f = open(out, code);
                string(out, "recipient", rcpt, false)?;
                if let Some(args) = args {
                    string(out, "ESMTP parameters", args, true)?;
                }
                close(out, f)
            }
            Reply::ChangeFrom { from, args } => {
                let f = open(out, code);
                string(out, "sender", from, false)?;
                if let Some(args) = args {
                    string(out, "ESMTP parameters", args, true)?;
                }
                close(out, f)
            }
            Reply::ReplaceBody(body) => {
                // An empty body is one empty chunk, as libmilter sends it.
                let mut chunks = body.chunks(MAX_REPLY_DATA).peekable();
                if chunks.peek().is_none() {
                    let f = open(out, code);
                    return close(out, f);
                }
                for chunk in chunks {
                    let f = open(out, code);
                    out.extend_from_slice(chunk);
                    close(out, f)?;
                }
                Ok(())
            }
            Reply::Negotiate(n) => {
                if !n.macros.is_empty() && !n.actions.contains(Actions::SETSYMLIST) {
                    return Err(ReplyError::MacrosWithoutSetSymList);
                }
                let f = open(out, code);
                out.extend_from_slice(&n.version.to_be_bytes());
                out.extend_from_slice(&n.actions.bits().to_be_bytes());
                out.extend_from_slice(&n.protocol.bits().to_be_bytes());
                for &(stage, names) in n.macros {
                    out.extend_from_slice(&(stage as u32).to_be_bytes());
                    for (i, name) in names.iter().enumerate() {
                        if name.is_empty() || name.bytes().any(|b| b == 0 || b == b' ') {
                            return Err(ReplyError::MacroName);
                        }
                        if i > 0 {
                            out.push(b' ');
                        }
                        out.extend_from_slice(name.as_bytes());
                    }
                    out.push(0);
                }
                close(out, f)
            }
        }
    }
}

/// Start a frame: a length field to fill in, and the letter. Returns where
/// the frame starts.
fn open(out: &mut Vec<u8>, code: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, code]);
    at
}

/// Fill in the length field of the frame that starts at `at`.
fn close(out: &mut [u8], at: usize) -> Result<(), ReplyError> {
    let data = out.len() - at - 5;
    if data > MAX_REPLY_DATA {
        return Err(ReplyError::TooLong { len: data });
    }
    // data + 1 <= 65536: fits in u32.
    let len = (data + 1) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A NUL-terminated string without NULs inside; empty only if allowed.
fn string(
    out: &mut Vec<u8>,
    what: &'static str,
    s: &[u8],
    may_be_empty: bool,
) -> Result<(), ReplyError> {
    if s.is_empty() && !may_be_empty {
        return Err(ReplyError::Empty { what });
    }
    if s.contains(&0) {
        return Err(ReplyError::Nul { what });
    }
    out.extend_from_slice(s);
    out.push(0);
    Ok(())
}

/// A header's name and value, both NUL-terminated.
fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Result<(), ReplyError> {
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b) && b != b':') {
        return Err(ReplyError::HeaderName);
    }
    if value.contains(&0) {
        return Err(ReplyError::Nul {
            what: "header value",
        });
    }
    // Folding is LF then white space (the MTAs write CRLF themselves);
    // anything else would end the header early or start a new one.
    let folded = value.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => false,
        b'\n' => matches!(value.get(i + 1), Some(b' ' | b'\t')),
        _ => true,
    });
    if !folded {
        return Err(ReplyError::HeaderLineBreak);
    }
    out.extend_from_slice(name);
    out.push(0);
    out.extend_from_slice(value);
    out.push(0);
    Ok(())
}

/// `550 5.7.1 text`, or `550-5.7.1 first\r\n550 5.7.1 last` for several
/// lines, without the NUL. A `%` is written `%%`: Sendmail uses the text as
/// a format string and Postfix turns `%%` back into `%`.
fn smtp_reply(out: &mut Vec<u8>, r: &SmtpReply<'_>) -> Result<(), ReplyError> {
    if !(400..600).contains(&r.code) {
        return Err(ReplyError::ReplyCode { code: r.code });
    }
    let class = b'0' + (r.code / 100) as u8;
    if !enhanced_status_ok(r.status, class) {
        return Err(ReplyError::EnhancedStatus {
            code: r.code,
            status: r.status.to_string(),
        });
    }
    if r.lines.is_empty() || r.lines.len() > MAX_REPLY_LINES {
        return Err(ReplyError::ReplyLines {
            lines: r.lines.len(),
        });
    }
    let code = r.code.to_string();
    for (i, line) in r.lines.iter().enumerate() {
        if line.len() > MAX_REPLY_LINE_LEN || line.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(ReplyError::ReplyLine { line: i + 1 });
        }
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(code.as_bytes());
        out.push(if i + 1 == r.lines.len() { b' ' } else { b'-' });
        out.extend_from_slice(r.status.as_bytes());
        if !line.is_empty() {
            out.push(b' ');
            for &b in *line {
                if b == b'%' {
                    out.push(b'%');
                }
                out.push(b);
            }
        }
    }
    Ok(())
}

/// `C.S.D` (RFC 3463 §2): class as given, subject and detail of one to
/// three digits.
fn enhanced_status_ok(status: &str, class: u8) -> bool {
    let mut parts = status.split('.');
    let number = |p: Option<&str>| {
        p.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    parts.next().map(str::as_bytes) == Some(&[class][..])
        && number(parts.next())
        && number(parts.next())
        && parts.next().is_none()
}
