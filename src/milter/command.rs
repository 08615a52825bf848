//! The commands an MTA sends, parsed from a frame without copying: every
//! string is a slice of the frame's payload, as bytes (an SMTP client's
//! HELO name or header need not be UTF-8). Strings are NUL-terminated on
//! the wire; a missing NUL, a short field or bytes left over is an error,
//! never a panic and never a guess.

use super::flags::{Actions, ProtocolOptions};
use super::frame::Frame;
use std::net::IpAddr;

/// `SMFIC_ABORT`: abort the current message.
const ABORT: u8 = b'A';
/// `SMFIC_BODY`: a body chunk.
const BODY: u8 = b'B';
/// `SMFIC_CONNECT`: connection information.
const CONNECT: u8 = b'C';
/// `SMFIC_MACRO`: macros for the command that follows.
const MACRO: u8 = b'D';
/// `SMFIC_BODYEOB`: end of the body.
const BODYEOB: u8 = b'E';
/// `SMFIC_HELO`: HELO or EHLO.
const HELO: u8 = b'H';
/// `SMFIC_QUIT_NC`: quit, a new connection follows on this socket.
const QUIT_NC: u8 = b'K';
/// `SMFIC_HEADER`: one header field.
const HEADER: u8 = b'L';
/// `SMFIC_MAIL`: MAIL FROM.
const MAIL: u8 = b'M';
/// `SMFIC_EOH`: end of headers.
const EOH: u8 = b'N';
/// `SMFIC_OPTNEG`: option negotiation.
const OPTNEG: u8 = b'O';
/// `SMFIC_QUIT`: close the connection.
const QUIT: u8 = b'Q';
/// `SMFIC_RCPT`: RCPT TO.
const RCPT: u8 = b'R';
/// `SMFIC_DATA`: DATA.
const DATA: u8 = b'T';
/// `SMFIC_UNKNOWN`: an SMTP command the MTA does not know.
const UNKNOWN: u8 = b'U';

/// One command from the MTA, borrowing its strings from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `A`: forget the current message; the connection goes on.
    Abort,
    /// `B`: a chunk of the body, as received (CRLF line ends).
    Body(&'a [u8]),
    /// `C`: the SMTP client's host name and address.
    Connect(Connect<'a>),
    /// `D`: macros for the command that follows.
    Macros(Macros<'a>),
    /// `E`: end of the body; libmilter allows a last chunk with it
    /// (Postfix and Sendmail send none).
    EndOfBody(&'a [u8]),
    /// `H`: the HELO or EHLO argument.
    Helo(&'a [u8]),
    /// `K`: the SMTP session ended; the MTA will use this connection for
    /// another one, starting with connect.
    QuitNewConnection,
    /// `L`: one header field.
    Header(Header<'a>),
    /// `M`: MAIL FROM: the address, then its ESMTP parameters.
    Mail(Args<'a>),
    /// `N`: end of headers.
    EndOfHeaders,
    /// `O`: the MTA's protocol version, actions and options.
    Negotiate(Negotiate),
    /// `Q`: close the connection.
    Quit,
    /// `R`: RCPT TO: the address, then its ESMTP parameters.
    Rcpt(Args<'a>),
    /// `T`: DATA.
    Data,
    /// `U`: an SMTP command the MTA does not know, as the client sent it.
    Unknown(&'a [u8]),
}

/// The connect command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The client's host name, or `[address]` when it has none (Postfix).
    pub hostname: &'a [u8],
    /// How the client is connected.
    pub address: ConnectAddress<'a>,
}

/// The client's address family and address (`SMFIA_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectAddress<'a> {
    /// `U`: not known (mail from the local submission program).
    Unknown,
    /// `4`: IPv4, the port and the address as text.
    Inet {
        /// The client's port.
        port: u16,
        /// The address as text (`192.0.2.1`).
        address: &'a [u8],
    },
    /// `6`: IPv6, the port and the address as text.
    Inet6 {
        /// The client's port.
        port: u16,
        /// The address as text (`2001:db8::1`).
        address: &'a [u8],
    },
    /// `L`: a UNIX socket and its path.
    Unix {
        /// The socket's path.
        path: &'a [u8],
    },
}

impl ConnectAddress<'_> {
    /// The IP address, if the family is IPv4 or IPv6 and the text is one.
    /// An `IPv6:` prefix (the form of RFC 5321 address literals) is
    /// allowed.
    pub fn ip(&self) -> Option<IpAddr> {
        let text = match *self {
            ConnectAddress::Inet { address, .. } => address,
            ConnectAddress::Inet6 { address, .. } => match address.get(..5) {
                Some(prefix) if prefix.eq_ignore_ascii_case(b"IPv6:") => &address[5..],
                _ => address,
            },
            ConnectAddress::Unknown | ConnectAddress::Unix { .. } => return None,
        };
        let ip: IpAddr = std::str::from_utf8(text).ok()?.parse().ok()?;
        match (self, ip) {
            (ConnectAddress::Inet { .. }, IpAddr::V4(_))
            | (ConnectAddress::Inet6 { .. }, IpAddr::V6(_)) => Some(ip),
            _ => None,
        }
    }
}

/// One header field, name and value as the MTA sent them (with
/// `SMFIP_HDR_LEADSPC`, the value keeps the white space after the colon).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The field name, not empty.
    pub name: &'a [u8],
    /// The field value, folded lines joined by LF or CRLF as the MTA sends.
    pub value: &'a [u8],
}

/// The option negotiation command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiate {
    /// The MTA's protocol version (6 for Postfix 2.6+ and Sendmail 8.14+).
    pub version: u32,
    /// The actions the MTA offers, unknown bits kept.
    pub actions: Actions,
    /// The protocol options the MTA offers, unknown bits kept.
    pub protocol: ProtocolOptions,
}

/// The arguments of MAIL or RCPT: the address, then ESMTP parameters, each
/// NUL-terminated; checked when parsed, so iterating cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Args<'a> {
    /// The address, as the client wrote it (usually with angle brackets).
    pub address: &'a [u8],
    /// The parameters after the address (NUL-terminated strings).
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    /// The ESMTP parameters (`SIZE=1000`, `BODY=8BITMIME`), in order.
    pub fn esmtp(&self) -> Strings<'a> {
        Strings { rest: self.rest }
    }
}

/// NUL-terminated strings of a payload checked when parsed, in order.
#[derive(Clone, Debug)]
pub struct Strings<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Strings<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (s, rest) = split_nul(self.rest)?;
        self.rest = rest;
        Some(s)
    }
}

/// The macros command: the command letter they belong to and name/value
/// pairs, checked when parsed (every string NUL-terminated, an even count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Macros<'a> {
    /// The command the macros are for (`C`, `H`, `M`, `R`, `T`, `N`, `E`,
    /// `U`), as sent.
    pub stage: u8,
    /// The pairs.
    pairs: &'a [u8],
}

impl<'a> Macros<'a> {
    /// The (name, value) pairs in the order sent. Names come without
    /// braces: the MTA may send `{daemon_name}` or `daemon_name`, `j` or
    /// `{j}`, and all of them are the same macro.
    pub fn iter(&self) -> MacroIter<'a> {
        MacroIter {
            strings: Strings { rest: self.pairs },
        }
    }

    /// The value of a macro, named with or without braces (or as
    /// [`Macros::iter`] shows it); the last one sent wins if a name repeats.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        let bare = bare_macro_name(name);
        self.iter()
            .filter(|(n, _)| *n == bare || *n == name)
            .last()
            .map(|(_, v)| v)
    }

    /// Whether no pair was sent (Postfix sends the command letter alone
    /// when no macro of a stage has a value).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// The (name, value) pairs of a macros command; names without braces.
#[derive(Clone, Debug)]
pub struct MacroIter<'a> {
    strings: Strings<'a>,
}

impl<'a> Iterator for MacroIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let name = self.strings.next()?;
        let value = self.strings.next()?;
        Some((bare_macro_name(name), value))
    }
}

/// `{name}` as `name`; anything else as it is.
pub fn bare_macro_name(name: &[u8]) -> &[u8] {
    match name {
        [b'{', inner @ .., b'}'] => inner,
        _ => name,
    }
}

/// Why a frame is not a valid command. The connection cannot go on after
/// one: the MTA and the milter no longer agree on the state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A command letter the protocol does not define.
    #[error("unknown milter command {:?}", char::from(*.code))]
    UnknownCommand {
        /// The command byte.
        code: u8,
    },
    /// A string without its terminating NUL.
    #[error("milter command {:?}: a string has no terminating NUL", char::from(*.code))]
    MissingNul {
        /// The command byte.
        code: u8,
    },
    /// Shorter than its fixed fields.
    #[error("milter command {:?} is too short", char::from(*.code))]
    Truncated {
        /// The command byte.
        code: u8,
    },
    /// Bytes after the last field.
    #[error("milter command {:?} has {extra} bytes after its last field", char::from(*.code))]
    TrailingBytes {
        /// The command byte.
        code: u8,
        /// How many.
        extra: usize,
    },
    /// An address family other than `U`, `L`, `4` and `6`.
    #[error("milter connect: unknown address family {:?}", char::from(*.family))]
    UnknownFamily {
        /// The family byte.
        family: u8,
    },
    /// A macro name without a value.
    #[error("milter macros: a name has no value")]
    MacroWithoutValue,
    /// A header without a name.
    #[error("milter header with an empty name")]
    EmptyHeaderName,
}

impl<'a> Command<'a> {
    /// Parse a frame into a command.
    pub fn parse(frame: Frame<'a>) -> Result<Command<'a>, CommandError> {
        let code = frame.code;
        let p = frame.payload;
        let missing_nul = CommandError::MissingNul { code };
        Ok(match code {
            ABORT => none(code, p, Command::Abort)?,
            BODY => Command::Body(p),
            CONNECT => Command::Connect(parse_connect(p)?),
            MACRO => {
                let (&stage, pairs) = p.split_first().ok_or(CommandError::Truncated { code })?;
                if !pairs.is_empty() && pairs.last() != Some(&0) {
                    return Err(missing_nul);
                }
                if pairs.iter().filter(|&&b| b == 0).count() % 2 != 0 {
                    return Err(CommandError::MacroWithoutValue);
                }
                Command::Macros(Macros { stage, pairs })
            }
            BODYEOB => Command::EndOfBody(p),
            HELO => Command::Helo(one_string(code, p)?),
            QUIT_NC => none(code, p, Command::QuitNewConnection)?,
            HEADER => {
                let (name, rest) = split_nul(p).ok_or(missing_nul.clone())?;
                let (value, rest) = split_nul(rest).ok_or(missing_nul)?;
                ends(code, rest)?;
                if name.is_empty() {
                    return Err(CommandError::EmptyHeaderName);
                }
                Command::Header(Header { name, value })
            }
            MAIL => Command::Mail(parse_args(code, p)?),
            EOH => none(code, p, Command::EndOfHeaders)?,
            OPTNEG => {
                let (fields, rest) = p
                    .split_first_chunk::<12>()
                    .ok_or(CommandError::Truncated { code })?;
                ends(code, rest)?;
                let word = |i: usize| {
                    u32::from_be_bytes([fields[i], fields[i + 1], fields[i + 2], fields[i + 3]])
                };
                Command::Negotiate(Negotiate {
                    version: word(0),
                    actions: Actions::from_bits_retain(word(4)),
                    protocol: ProtocolOptions::from_bits_retain(word(8)),
                })
            }
            QUIT => none(code, p, Command::Quit)?,
            RCPT => Command::Rcpt(parse_args(code, p)?),
            DATA => none(code, p, Command::Data)?,
            UNKNOWN => Command::Unknown(one_string(code, p)?),
            _ => return Err(CommandError::UnknownCommand { code }),
        })
    }

    /// The command byte this command is sent with.
    pub fn code(&self) -> u8 {
        match self {
            Command::Abort => ABORT,
            Command::Body(_) => BODY,
            Command::Connect(_) => CONNECT,
            Command::Macros(_) => MACRO,
            Command::EndOfBody(_) => BODYEOB,
            Command::Helo(_) => HELO,
            Command::QuitNewConnection => QUIT_NC,
            Command::Header(_) => HEADER,
            Command::Mail(_) => MAIL,
            Command::EndOfHeaders => EOH,
            Command::Negotiate(_) => OPTNEG,
            Command::Quit => QUIT,
            Command::Rcpt(_) => RCPT,
            Command::Data => DATA,
            Command::Unknown(_) => UNKNOWN,
        }
    }
}

/// The string before the first NUL and what follows the NUL.
fn split_nul(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// Nothing may follow the last field.
fn ends(code: u8, rest: &[u8]) -> Result<(), CommandError> {
    match rest.len() {
        0 => Ok(()),
        extra => Err(CommandError::TrailingBytes { code, extra }),
    }
}

/// A command without a payload.
fn none<'a>(code: u8, p: &[u8], command: Command<'a>) -> Result<Command<'a>, CommandError> {
    ends(code, p).map(|()| command)
}

/// A payload of exactly one NUL-terminated string.
fn one_string(code: u8, p: &[u8]) -> Result<&[u8], CommandError> {
    let (s, rest) = split_nul(p).ok_or(CommandError::MissingNul { code })?;
    ends(code, rest)?;
    Ok(s)
}

/// MAIL and RCPT: at least the address, every string NUL-terminated.
fn parse_args(code: u8, p: &[u8]) -> Result<Args<'_>, CommandError> {
    let (address, rest) = split_nul(p).ok_or(CommandError::MissingNul { code })?;
    if !rest.is_empty() && rest.last() != Some(&0) {
        return Err(CommandError::MissingNul { code });
    }
    Ok(Args { address, rest })
}

fn parse_connect(p: &[u8]) -> Result<Connect<'_>, CommandError> {
    let code = CONNECT;
    let (hostname, rest) = split_nul(p).ok_or(CommandError::MissingNul { code })?;
    let (&family, rest) = rest.split_first().ok_or(CommandError::Truncated { code })?;
    let address = match family {
        b'U' => {
            ends(code, rest)?;
            ConnectAddress::Unknown
        }
        b'4' | b'6' | b'L' => {
            let (port, rest) = rest
                .split_first_chunk::<2>()
                .ok_or(CommandError::Truncated { code })?;
            let port = u16::from_be_bytes(*port);
            let text = one_string(code, rest)?;
            match family {
                b'4' => ConnectAddress::Inet {
                    port,
                    address: text,
                },
                b'6' => ConnectAddress::Inet6 {
                    port,
                    address: text,
                },
                _ => ConnectAddress::Unix { path: text },
            }
        }
        family => return Err(CommandError::UnknownFamily { family }),
    };
    Ok(Connect { hostname, address })
}
