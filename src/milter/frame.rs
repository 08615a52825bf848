//! Frames as they arrive: `len: u32` big-endian (the command byte plus the
//! payload), the command byte, the payload. The reader keeps one buffer per
//! connection, lets the caller read from the socket straight into it, and
//! hands out each complete frame as a slice of that buffer.

/// The largest frame the reader accepts by default, in bytes of the length
/// field (command byte and payload).
///
/// What the MTAs send: body chunks of at most 65,535 bytes
/// (`MILTER_CHUNK_SIZE` in Sendmail and Postfix); Sendmail's libmilter
/// refuses any command with more than 65,535 bytes of data
/// (`MILTER_MAX_DATA_SIZE`) unless a larger size is negotiated
/// (`SMFIP_MDS_256K`, `SMFIP_MDS_1M`, which we never ask for). Postfix has no
/// such limit of its own and sends each header as one frame, so its largest
/// frame is a header of up to `header_size_limit` bytes (102,400 by
/// default), plus the name and two NULs. 256 KiB takes that with room for an
/// administrator who raised `header_size_limit` to twice its default, and is
/// a quarter of the 1 MiB that indymilter allows. A connection's buffer
/// grows only to its largest frame, so the figure is a bound, not a cost.
pub const DEFAULT_FRAME_LIMIT: usize = 256 * 1024;

/// Bytes of the length field before each frame.
const LEN_BYTES: usize = 4;

/// The buffer a reader starts with: every command but body chunks and long
/// headers fits, so most connections never grow it.
const INITIAL_CAPACITY: usize = 8 * 1024;

/// One complete frame, borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The command byte (`SMFIC_*` from the MTA).
    pub code: u8,
    /// Everything after the command byte.
    pub payload: &'a [u8],
}

/// Why the byte stream is not a sequence of frames. The stream cannot be
/// resynchronised after one: close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length of 0 leaves no room for the command byte.
    #[error("milter frame of length 0 has no command byte")]
    Empty,
    /// Longer than the reader's limit.
    #[error("milter frame of {len} bytes is longer than the limit of {limit}")]
    TooLong {
        /// The length the frame announced.
        len: u32,
        /// The reader's limit.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection ended inside a milter frame ({buffered} bytes of it received)")]
    Truncated {
        /// The bytes of the unfinished frame that did arrive.
        buffered: usize,
    },
}

/// An incremental frame reader over one reusable buffer.
///
/// The loop of a connection: [`FrameReader::read_space`], read from the
/// socket into it, [`FrameReader::filled`] with the count, then
/// [`FrameReader::next_frame`] until it returns `Ok(None)`. The buffer is
/// zeroed only when it grows, never per command, and never holds more than
/// the limit plus the 4-byte length field.
#[derive(Debug)]
pub struct FrameReader {
    /// The bytes; `buf.len()` is the capacity in use.
    buf: Vec<u8>,
    /// The first byte not yet handed out in a frame.
    start: usize,
    /// The end of the bytes received.
    end: usize,
    /// The largest value of the length field accepted.
    limit: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader with [`DEFAULT_FRAME_LIMIT`].
    pub fn new() -> FrameReader {
        FrameReader::with_limit(DEFAULT_FRAME_LIMIT)
    }

    /// A reader that refuses frames longer than `limit` bytes (command byte
    /// and payload; at least 1, at most `u32::MAX`).
    pub fn with_limit(limit: usize) -> FrameReader {
        let limit = limit.clamp(1, u32::MAX as usize);
        FrameReader {
            buf: vec![0; INITIAL_CAPACITY.min(LEN_BYTES + limit)],
            start: 0,
            end: 0,
            limit,
        }
    }

    /// The largest frame accepted.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The size of the buffer: at most the limit plus the length field.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes received and not yet handed out in a frame. Non-zero when the
    /// peer closes means the stream ended inside a frame
    /// ([`FrameReader::finish`]).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Where the next read from the socket goes: never empty unless a
    /// complete frame is waiting (take it with [`FrameReader::next_frame`]
    /// first) or the next frame is already known to be refused. Room is made
    /// for the whole of the frame being received, so a body chunk arrives in
    /// as few reads as the socket allows.
    pub fn read_space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let need = self.pending_frame_size();
        if self.buf.len() - self.start < need || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need {
            // Grow once to the frame's size (bounded by the limit), not in
            // steps: each step would copy and zero again.
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Record that `n` bytes were read into [`FrameReader::read_space`].
    /// More than the space offered is taken as the space offered.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copy as much of `bytes` as there is room for (as a read would) and
    /// return how many were taken; 0 means take frames first.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let space = self.read_space();
        let n = space.len().min(bytes.len());
        space[..n].copy_from_slice(&bytes[..n]);
        self.filled(n);
        n
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or why
    /// the stream is broken (as soon as the length field shows it, before
    /// the payload is read). An error repeats on every later call.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let Some(len) = self.announced_len()? else {
            return Ok(None);
        };
        let total = LEN_BYTES + len;
        if self.buffered() < total {
            return Ok(None);
        }
        let at = self.start;
        self.start += total;
        Ok(Some(Frame {
            code: self.buf[at + LEN_BYTES],
            payload: &self.buf[at + LEN_BYTES + 1..at + total],
        }))
    }

    /// At the end of the stream: `Ok` if it ended between frames.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }

    /// The length field of the frame being received, once its 4 bytes are
    /// in and it is valid.
    fn announced_len(&self) -> Result<Option<usize>, FrameError> {
        let Some(field) = self.buf[self.start..self.end].first_chunk::<LEN_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*field);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len as usize > self.limit {
            return Err(FrameError::TooLong {
                len,
                limit: self.limit,
            });
        }
        Ok(Some(len as usize))
    }

    /// The bytes the frame being received needs in the buffer: all of it
    /// once its length is known and valid, else its length field.
    fn pending_frame_size(&self) -> usize {
        match self.announced_len() {
            Ok(Some(len)) => LEN_BYTES + len,
            Ok(None) | Err(_) => LEN_BYTES,
        }
    }
}
