//! The milter wire protocol, as bytes: frames read from the MTA into one
//! reusable buffer, commands parsed from them without copying, replies
//! encoded into the caller's buffer. No I/O, no session state, nothing of
//! the policy: the server layer above drives it.
//!
//! Why our own: with an empty policy the daemon spent about 333k
//! instructions per message (callgrind, issue 18), some 60 % of them in
//! indymilter's machinery: a task per connection with a channel hop for
//! every read and write, three read calls per command and three writes per
//! reply, a freshly zeroed buffer for every command (46k instructions per
//! message with 40 KiB bodies), a C string copy of every macro and header
//! and a hash map for macros. Here a command is a view into the buffer it
//! arrived in, and a reply is a few bytes appended to the write buffer.
//!
//! The format (Sendmail's `mfdef.h`, Postfix's `milter8.c`): every frame is
//! a 4-byte big-endian length (the command byte and the payload), the
//! command byte, the payload; strings are NUL-terminated, numbers
//! big-endian.

mod command;
mod flags;
mod frame;
mod reply;
#[cfg(test)]
mod tests;

pub use command::{
    Args, Command, CommandError, Connect, ConnectAddress, Header, MacroIter, Macros, Negotiate,
    Strings, bare_macro_name,
};
pub use flags::{Actions, PROTOCOL_VERSION, ProtocolOptions};
pub use frame::{DEFAULT_FRAME_LIMIT, Frame, FrameError, FrameReader};
pub use reply::{
    MAX_HEADER_INDEX, MAX_REPLY_DATA, MAX_REPLY_LINE_LEN, MAX_REPLY_LINES, MacroStage, Negotiation,
    Reply, ReplyError, SmtpReply,
};
