//! The connection under a [`super::SyncSession`]: a buffered [`MailStream`] whose line
//! reads are cancel-safe (a partly received line stays in the buffer, so IDLE can stop
//! waiting at any moment without losing data), literals read in bounded chunks (a large
//! message never needs one read to finish within the timeout, and bytes beyond the caller's
//! limit are discarded as they arrive), and every wait bounded.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::response::{Literal, RawResponse};
use crate::imap::parse::literal_len;
use crate::net::MailStream;

/// Read buffer sizes. A session starts with the small one and doubles it, up to the large
/// one, while reads fill it (a bulk fetch: fewer, larger reads); waiting for a response with
/// a deadline (IDLE) it holds the smallest, enough for the short lines a server sends then
/// (`* 12 EXISTS`; a longer response is read in several pieces), so thousands of idle
/// sessions do not each hold a large one.
const IDLE_BUF: usize = 512;
const MIN_BUF: usize = 8 * 1024;
const MAX_BUF: usize = 128 * 1024;
/// Largest chunk written at once (each chunk has its own timeout).
const WRITE_CHUNK: usize = 256 * 1024;

/// Why a read or write did not complete.
#[derive(Debug)]
pub enum WireError {
    /// No data within the inactivity timeout.
    TimedOut,
    /// No response started before the [`Wait::Until`] deadline (nothing was consumed).
    Deadline,
    /// The server closed the connection.
    Closed,
    /// A line, or the lines of one response together, longer than allowed.
    TooLong,
    /// More literals in one response than allowed.
    TooManyLiterals,
    /// Literals of one response announced with more bytes together than allowed (this many).
    LiteralsTooLarge(u64),
    Io(io::Error),
}

/// What one response may hold; anything beyond fails the read before it is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of text: every line, and all the lines of the response together.
    pub text: usize,
    /// Literals in the response.
    pub literals: usize,
    /// Bytes of all the response's literals together, as the server announces them.
    pub literal_bytes: u64,
    /// Bytes of each literal kept; the rest is read and dropped.
    pub keep: usize,
}

/// How long a read may wait.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Up to the connection's timeout for each chunk of data (inactivity).
    Inactivity,
    /// Until this moment for the first data, then the inactivity timeout.
    Until(Instant),
}

#[derive(Debug)]
pub struct Conn {
    stream: MailStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The last read filled the buffer: the next one gets a larger buffer.
    filled: bool,
    /// The part of a line received so far (kept here, not in a future, for cancel safety).
    line: Vec<u8>,
    pub timeout: Duration,
}

impl Conn {
    pub fn new(stream: MailStream, timeout: Duration) -> Self {
        Conn {
            stream,
            buf: vec![0; MIN_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            filled: false,
            line: Vec::new(),
            timeout,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Reads more data into the empty buffer. Cancel-safe.
    async fn fill(&mut self, wait: Wait) -> Result<(), WireError> {
        debug_assert_eq!(self.start, self.end);
        self.start = 0;
        self.end = 0;
        // The buffer is empty: it can be resized for free.
        let size = match wait {
            Wait::Until(_) => IDLE_BUF,
            Wait::Inactivity if self.filled => (self.buf.len() * 2).clamp(MIN_BUF, MAX_BUF),
            Wait::Inactivity => self.buf.len().max(MIN_BUF),
        };
        if size != self.buf.len() {
            self.buf = vec![0; size].into_boxed_slice();
        }
        let read = self.stream.read(&mut self.buf);
        let (n, expired) = match wait {
            Wait::Inactivity => (
                tokio::time::timeout(self.timeout, read).await,
                WireError::TimedOut,
            ),
            Wait::Until(at) => (tokio::time::timeout_at(at, read).await, WireError::Deadline),
        };
        match n {
            Err(_) => Err(expired),
            Ok(Err(e)) => Err(classify_io(e)),
            Ok(Ok(0)) => Err(WireError::Closed),
            Ok(Ok(n)) => {
                self.end = n;
                self.filled = n == self.buf.len();
                Ok(())
            }
        }
    }

    /// One line without its CR LF. Cancel-safe: data of a partly received line is kept.
    pub async fn read_line(&mut self, max: usize, wait: Wait) -> Result<Vec<u8>, WireError> {
        let mut first = true;
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(pos) = avail.iter().position(|&b| b == b'\n') {
                self.line.extend_from_slice(&avail[..pos]);
                self.start += pos + 1;
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > max {
                    return Err(WireError::TooLong);
                }
                return Ok(line);
            }
            self.line.extend_from_slice(avail);
            self.start = self.end;
            if self.line.len() > max {
                self.line.clear();
                return Err(WireError::TooLong);
            }
            // Only the wait for the start of a response follows a deadline; once data flows,
            // the inactivity timeout applies.
            let w = if first && self.line.is_empty() {
                wait
            } else {
                Wait::Inactivity
            };
            first = false;
            self.fill(w).await?;
        }
    }

    /// A literal of `n` bytes, keeping at most `keep` of them (the rest is read and
    /// dropped). Each chunk waits at most the inactivity timeout.
    pub async fn read_literal(&mut self, n: u64, keep: usize) -> Result<Literal, WireError> {
        let keep_n = (keep as u64).min(n) as usize;
        let mut data = Vec::with_capacity(keep_n);
        let mut left = n;
        while left > 0 {
            if self.start == self.end {
                self.fill(Wait::Inactivity).await?;
            }
            let avail = (self.end - self.start) as u64;
            let take = avail.min(left) as usize;
            let room = keep_n - data.len();
            let copy = take.min(room);
            data.extend_from_slice(&self.buf[self.start..self.start + copy]);
            self.start += take;
            left -= take as u64;
        }
        Ok(Literal { data, announced: n })
    }

    /// One whole response within `limits`: its first line (waiting as `wait` says), then
    /// each literal and the line after it. A literal announced over the limits fails before
    /// any of it is read.
    pub async fn read_response(
        &mut self,
        limits: Limits,
        wait: Wait,
    ) -> Result<RawResponse, WireError> {
        let first = self.read_line(limits.text, wait).await?;
        let mut text = first.len();
        let mut announced = 0u64;
        let mut raw = RawResponse {
            pieces: vec![first],
            literals: Vec::new(),
        };
        while let Some(n) = raw.pieces.last().and_then(|l| literal_len(l)) {
            if raw.literals.len() >= limits.literals {
                return Err(WireError::TooManyLiterals);
            }
            announced = announced.saturating_add(n as u64);
            if announced > limits.literal_bytes {
                return Err(WireError::LiteralsTooLarge(announced));
            }
            let lit = self.read_literal(n as u64, limits.keep).await?;
            raw.literals.push(lit);
            let next = self.read_line(limits.text - text, Wait::Inactivity).await?;
            text += next.len();
            raw.pieces.push(next);
        }
        Ok(raw)
    }

    /// Writes everything and flushes; each chunk waits at most the timeout.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), WireError> {
        for chunk in data.chunks(WRITE_CHUNK) {
            match tokio::time::timeout(self.timeout, self.stream.write_all(chunk)).await {
                Err(_) => return Err(WireError::TimedOut),
                Ok(Err(e)) => return Err(classify_io(e)),
                Ok(Ok(())) => {}
            }
        }
        match tokio::time::timeout(self.timeout, self.stream.flush()).await {
            Err(_) => Err(WireError::TimedOut),
            Ok(Err(e)) => Err(classify_io(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Best-effort close (TLS close_notify, TCP FIN), bounded by a short timeout.
    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }
}

fn classify_io(e: io::Error) -> WireError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => WireError::Closed,
        _ => WireError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            Conn::new(MailStream::Plain(client.unwrap()), Duration::from_secs(5)),
            server.unwrap().0,
        )
    }

    #[tokio::test]
    async fn a_deadline_during_a_partial_line_loses_nothing() {
        let (mut conn, mut server) = pair().await;
        server.write_all(b"* 3 EXI").await.unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        // The first bytes arrive before the deadline; the rest never does within the
        // (cancelled) wait: the partial line must survive the cancellation.
        let r = tokio::time::timeout_at(soon, conn.read_line(1000, Wait::Until(soon))).await;
        assert!(r.is_err(), "the wait must have been cancelled: {r:?}");
        server.write_all(b"STS\r\n* 4 EXISTS\r\n").await.unwrap();
        let line = conn.read_line(1000, Wait::Inactivity).await.unwrap();
        assert_eq!(line, b"* 3 EXISTS");
        let line = conn.read_line(1000, Wait::Inactivity).await.unwrap();
        assert_eq!(line, b"* 4 EXISTS");
    }

    #[tokio::test]
    async fn a_long_response_to_a_waiting_session_arrives_whole_and_waiting_holds_a_small_buffer() {
        let (mut conn, mut server) = pair().await;
        let flags: Vec<String> = (0..400).map(|i| format!("$Label{i}")).collect();
        let long = format!("* 1 FETCH (UID 7 FLAGS ({}))", flags.join(" "));
        assert!(long.len() > 4 * IDLE_BUF);
        server
            .write_all(format!("{long}\r\n* 2 EXISTS\r\n").as_bytes())
            .await
            .unwrap();
        let until = || Wait::Until(Instant::now() + Duration::from_secs(5));
        let line = conn.read_line(1 << 20, until()).await.unwrap();
        assert_eq!(line, long.as_bytes());
        let line = conn.read_line(1000, until()).await.unwrap();
        assert_eq!(line, b"* 2 EXISTS");
        // Nothing more comes: the session waits holding only the idle buffer.
        let r =
            tokio::time::timeout(Duration::from_millis(50), conn.read_line(1000, until())).await;
        assert!(r.is_err(), "nothing was sent: {r:?}");
        assert_eq!(conn.buf.len(), IDLE_BUF);
        // A bulk read afterwards gets the larger buffer back.
        server.write_all(&vec![b'x'; 40_000]).await.unwrap();
        server.write_all(b"\r\n").await.unwrap();
        let line = conn.read_line(1 << 20, Wait::Inactivity).await.unwrap();
        assert_eq!(line.len(), 40_000);
        assert!(conn.buf.len() > MIN_BUF, "buffer {}", conn.buf.len());
    }

    #[tokio::test]
    async fn literals_are_cut_at_the_limit_and_the_stream_stays_in_step() {
        let (mut conn, mut server) = pair().await;
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut data = format!("* 1 FETCH (UID 1 BODY[] {{{}}}\r\n", body.len()).into_bytes();
        data.extend_from_slice(&body);
        data.extend_from_slice(b")\r\nA1 OK done\r\n");
        tokio::spawn(async move {
            server.write_all(&data).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let limits = Limits {
            text: 1 << 20,
            literals: 4,
            literal_bytes: 300_000,
            keep: 1000,
        };
        let raw = conn.read_response(limits, Wait::Inactivity).await.unwrap();
        assert_eq!(raw.literals[0].data, body[..1000]);
        assert_eq!(raw.literals[0].announced, 300_000);
        assert_eq!(raw.pieces[1], b")");
        let line = conn.read_line(1000, Wait::Inactivity).await.unwrap();
        assert_eq!(line, b"A1 OK done");
    }

    #[tokio::test]
    async fn closed_and_too_long() {
        let (mut conn, mut server) = pair().await;
        server.write_all(&[b'x'; 5000]).await.unwrap();
        server.write_all(b"\r\n").await.unwrap();
        drop(server);
        assert!(matches!(
            conn.read_line(1000, Wait::Inactivity).await,
            Err(WireError::TooLong)
        ));
        let mut conn2 = pair().await;
        drop(conn2.1);
        assert!(matches!(
            conn2.0.read_line(1000, Wait::Inactivity).await,
            Err(WireError::Closed)
        ));
    }
}
