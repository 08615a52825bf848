//! The milter protocol by hand, for what indymilter-test cannot send
//! (QUIT_NC) and for watching a connection the daemon closes at once.
//! Every packet is a 4-byte big-endian length, a command byte and its data;
//! strings are NUL-terminated.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any one reply may take.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

/// Commands (MTA to milter).
pub const OPTNEG: u8 = b'O';
pub const MACRO: u8 = b'D';
pub const CONNECT: u8 = b'C';
pub const HELO: u8 = b'H';
pub const MAIL: u8 = b'M';
pub const RCPT: u8 = b'R';
pub const HEADER: u8 = b'L';
pub const EOH: u8 = b'N';
pub const BODY: u8 = b'B';
pub const EOM: u8 = b'E';
pub const QUIT: u8 = b'Q';
pub const QUIT_NC: u8 = b'K';

/// Replies (milter to MTA) that end a command's answer.
pub const CONTINUE: u8 = b'c';
pub const ACCEPT: u8 = b'a';
pub const REJECT: u8 = b'r';
pub const TEMPFAIL: u8 = b't';
pub const DISCARD: u8 = b'd';
pub const REPLYCODE: u8 = b'y';
/// Actions at end of message (answered by one of the above after them).
pub const ADD_HEADER: u8 = b'h';
pub const PROGRESS: u8 = b'p';

/// Every action of protocol version 6, and no protocol options: the milter
/// then answers every command but MACRO, QUIT and QUIT_NC with one reply.
pub const ALL_ACTIONS: u32 = 0x1ff;

pub struct RawMilter {
    pub stream: TcpStream,
}

/// NUL-terminated strings, one after the other.
pub fn strings(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

impl RawMilter {
    pub async fn connect(addr: SocketAddr) -> io::Result<RawMilter> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawMilter { stream })
    }

    pub async fn send(&mut self, command: u8, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too long"))?;
        let mut packet = len.to_be_bytes().to_vec();
        packet.push(command);
        packet.extend_from_slice(data);
        self.stream.write_all(&packet).await
    }

    /// One packet from the milter, within [`REPLY_WAIT`].
    pub async fn read(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let read = async {
            let len = self.stream.read_u32().await? as usize;
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "empty packet"));
            }
            let mut packet = vec![0; len];
            self.stream.read_exact(&mut packet).await?;
            let data = packet.split_off(1);
            Ok((packet[0], data))
        };
        tokio::time::timeout(REPLY_WAIT, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply from the milter"))?
    }

    /// Send a command and read its one reply.
    pub async fn command(&mut self, command: u8, data: &[u8]) -> io::Result<(u8, Vec<u8>)> {
        self.send(command, data).await?;
        self.read().await
    }

    /// Negotiate version 6 with `actions` and no protocol options; returns
    /// the milter's version, actions and options.
    pub async fn negotiate(&mut self, actions: u32) -> io::Result<(u32, u32, u32)> {
        self.negotiate_offering(actions, 0).await
    }

    /// Negotiate version 6 offering `actions` and the protocol options
    /// `opts`; returns the milter's version, actions and options.
    pub async fn negotiate_offering(
        &mut self,
        actions: u32,
        opts: u32,
    ) -> io::Result<(u32, u32, u32)> {
        let mut data = 6u32.to_be_bytes().to_vec();
        data.extend_from_slice(&actions.to_be_bytes());
        data.extend_from_slice(&opts.to_be_bytes());
        let (code, reply) = self.command(OPTNEG, &data).await?;
        if code != OPTNEG || reply.len() < 12 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a negotiation reply: {:?} {reply:?}", code as char),
            ));
        }
        let word =
            |i: usize| u32::from_be_bytes([reply[i], reply[i + 1], reply[i + 2], reply[i + 3]]);
        Ok((word(0), word(4), word(8)))
    }

    /// Macros for a stage (`b'C'` connect, `b'M'` MAIL, ...): no reply.
    pub async fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) -> io::Result<()> {
        let mut data = vec![stage];
        for (k, v) in pairs {
            data.extend(strings(&[k, v]));
        }
        self.send(MACRO, &data).await
    }

    /// CONNECT from an IPv4 client.
    pub async fn connect_from(&mut self, host: &str, ip: &str) -> io::Result<(u8, Vec<u8>)> {
        let mut data = strings(&[host]);
        data.push(b'4');
        data.extend_from_slice(&25u16.to_be_bytes());
        data.extend(strings(&[ip]));
        self.command(CONNECT, &data).await
    }

    /// End of message: the actions, then the final reply.
    pub async fn eom(&mut self) -> io::Result<(Vec<(u8, Vec<u8>)>, (u8, Vec<u8>))> {
        self.send(EOM, &[]).await?;
        let mut actions = Vec::new();
        loop {
            let (code, data) = self.read().await?;
            match code {
                CONTINUE | ACCEPT | REJECT | TEMPFAIL | DISCARD | REPLYCODE => {
                    return Ok((actions, (code, data)));
                }
                PROGRESS => {}
                _ => actions.push((code, data)),
            }
        }
    }

    /// Reads until the milter closes the connection (end of file or a
    /// reset, which is what closing a socket with unread data sends);
    /// returns the bytes read before that, or an error if it stays open
    /// longer than `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> io::Result<Vec<u8>> {
        let mut seen = Vec::new();
        let read = async {
            let mut buf = [0u8; 512];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(())) => Ok(seen),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("still open after {wait:?}"),
            )),
        }
    }
}
