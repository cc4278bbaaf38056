//! POP3 responses (RFC 1939, RESP-CODES RFC 2449 / 3206), pure: status lines, multi-line
//! bodies with dot-unstuffing and a size limit, STAT/LIST/UIDL lines, and how a `-ERR` is
//! classified.

use serversync_model::{ErrorKind, FailureStep};

/// `+OK …` or `-ERR [CODE] …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Status {
    pub ok: bool,
    /// RFC 2449 response code, upper-cased (`AUTH`, `IN-USE`, `SYS/TEMP`, `LOGIN-DELAY`…).
    pub code: Option<String>,
    pub text: String,
}

impl Pop3Status {
    /// `-ERR [AUTH] Authentication failed.` (for messages).
    pub fn display(&self) -> String {
        let mut s = String::from(if self.ok { "+OK" } else { "-ERR" });
        if let Some(code) = &self.code {
            s.push_str(&format!(" [{code}]"));
        }
        if !self.text.is_empty() {
            s.push(' ');
            s.push_str(&self.text);
        }
        crate::imap::parse::shorten(&s, 300)
    }
}

/// A line during SASL authentication: a status, or a `+ ` continuation (challenge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthLine {
    Status(Pop3Status),
    Continuation(String),
}

/// Parses a status line. Anything but `+OK`/`-ERR` (followed by a space or the end) is
/// malformed.
pub fn parse_status(line: &[u8]) -> Result<Pop3Status, String> {
    let text = String::from_utf8_lossy(line);
    let (ok, rest) = if let Some(rest) = strip_token(&text, "+OK") {
        (true, rest)
    } else if let Some(rest) = strip_token(&text, "-ERR") {
        (false, rest)
    } else {
        return Err(format!(
            "not a POP3 status line: \"{}\"",
            crate::imap::parse::shorten(&text, 120)
        ));
    };
    let rest = rest.trim();
    if let Some(inner) = rest.strip_prefix('[')
        && let Some(end) = inner.find(']')
    {
        let code = inner[..end].trim();
        if !code.is_empty() && !code.contains(' ') {
            return Ok(Pop3Status {
                ok,
                code: Some(code.to_ascii_uppercase()),
                text: inner[end + 1..].trim().to_string(),
            });
        }
    }
    Ok(Pop3Status {
        ok,
        code: None,
        text: rest.to_string(),
    })
}

/// Parses a line read during `AUTH`.
pub fn parse_auth_line(line: &[u8]) -> Result<AuthLine, String> {
    if line == b"+" || line.starts_with(b"+ ") {
        let text = String::from_utf8_lossy(&line[1..]).trim().to_string();
        return Ok(AuthLine::Continuation(text));
    }
    parse_status(line).map(AuthLine::Status)
}

fn strip_token<'a>(text: &'a str, token: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(token)?;
    if rest.is_empty() || rest.starts_with(' ') {
        Some(rest)
    } else {
        None
    }
}

/// Why a multi-line body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultilineError {
    /// The body grew past the limit (bytes).
    TooLarge(usize),
    /// The data ended before the terminating `.` line.
    Unterminated,
}

/// Decodes a multi-line response body line by line: the `.` line ends it, a leading `.` is
/// removed from every other line (dot-unstuffing, RFC 1939 §3), lines are joined with CR LF.
#[derive(Debug)]
pub struct MultilineDecoder {
    max: usize,
    out: Vec<u8>,
    done: bool,
}

impl MultilineDecoder {
    /// `max` bounds the decoded size in bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            out: Vec::new(),
            done: false,
        }
    }

    /// Feeds one line without its line ending; `Ok(true)` once the terminator was seen.
    pub fn push_line(&mut self, line: &[u8]) -> Result<bool, MultilineError> {
        if self.done {
            return Ok(true);
        }
        if line == b"." {
            self.done = true;
            return Ok(true);
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        if self.out.len() + line.len() + 2 > self.max {
            return Err(MultilineError::TooLarge(self.max));
        }
        self.out.extend_from_slice(line);
        self.out.extend_from_slice(b"\r\n");
        Ok(false)
    }

    /// The decoded body; an error if the terminator never came.
    pub fn finish(self) -> Result<Vec<u8>, MultilineError> {
        if self.done {
            Ok(self.out)
        } else {
            Err(MultilineError::Unterminated)
        }
    }
}

/// Decodes a whole multi-line body (everything after the `+OK` line); lines may end in
/// CR LF or a bare LF.
pub fn decode_multiline(data: &[u8], max: usize) -> Result<Vec<u8>, MultilineError> {
    let mut decoder = MultilineDecoder::new(max);
    let mut rest = data;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        let mut line = &rest[..pos];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        rest = &rest[pos + 1..];
        if decoder.push_line(line)? {
            break;
        }
    }
    decoder.finish()
}

/// `+OK 2 320` → (2, 320).
pub fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let mut it = text.split_ascii_whitespace();
    let count = it.next()?.parse().ok()?;
    let size = it.next()?.parse().ok()?;
    Some((count, size))
}

/// A LIST line `1 120` → (1, 120).
pub fn parse_scan_line(line: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    parse_stat(text)
}

/// A UIDL line `1 whqtswO00WBw418f9t5JxYwZ` → (1, uid). The unique-id is 1–70 characters
/// 0x21–0x7E (RFC 1939 §7).
pub fn parse_uidl_line(line: &[u8]) -> Option<(u32, String)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut it = text.split_ascii_whitespace();
    let n = it.next()?.parse().ok()?;
    let uid = it.next()?;
    if uid.is_empty() || uid.len() > 70 || !uid.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return None;
    }
    Some((n, uid.to_string()))
}

/// What the client was doing when the server answered `-ERR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Stls,
    Login,
    /// STAT right after login: can the maildrop be read.
    Stat,
    /// Any other command in the transaction state.
    Command,
}

/// The step and kind of a `-ERR` in `phase`, by its RESP-CODE where present.
pub fn classify(phase: Phase, code: Option<&str>) -> (FailureStep, ErrorKind) {
    let step = match phase {
        Phase::Greeting | Phase::Command => FailureStep::Protocol,
        Phase::Stls => FailureStep::Tls,
        Phase::Login => FailureStep::Authentication,
        Phase::Stat => FailureStep::Permission,
    };
    let kind = match code {
        Some("IN-USE") | Some("SYS/TEMP") => ErrorKind::Transient,
        Some("LOGIN-DELAY") => ErrorKind::Throttled,
        Some("SYS/PERM") => ErrorKind::Permanent,
        Some("AUTH") => ErrorKind::Auth,
        _ => match phase {
            Phase::Greeting => ErrorKind::Transient,
            Phase::Stls => ErrorKind::Config,
            Phase::Login => ErrorKind::Auth,
            Phase::Stat => ErrorKind::Permission,
            Phase::Command => ErrorKind::Permanent,
        },
    };
    (step, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"+OK Dovecot ready.").unwrap(),
            Pop3Status {
                ok: true,
                code: None,
                text: "Dovecot ready.".into()
            }
        );
        assert_eq!(
            parse_status(b"+OK").unwrap(),
            Pop3Status {
                ok: true,
                code: None,
                text: String::new()
            }
        );
        let e = parse_status(b"-ERR [AUTH] Authentication failed.").unwrap();
        assert_eq!(
            (e.ok, e.code.as_deref(), e.text.as_str()),
            (false, Some("AUTH"), "Authentication failed.")
        );
        let e = parse_status(b"-ERR [sys/temp] try later").unwrap();
        assert_eq!(e.code.as_deref(), Some("SYS/TEMP"));
        assert_eq!(e.display(), "-ERR [SYS/TEMP] try later");
        let e = parse_status(b"-ERR [not a code] x").unwrap();
        assert_eq!((e.code, e.text.as_str()), (None, "[not a code] x"));
        let e = parse_status(b"-ERR").unwrap();
        assert!(!e.ok && e.text.is_empty());
    }

    #[test]
    fn malformed_status_lines() {
        for line in [
            &b""[..],
            b"OK fine",
            b"+OKAY",
            b"-ERROR",
            b"* OK IMAP4rev1",
            b"220 smtp.example.com ESMTP",
            b"\xff\xfe",
        ] {
            assert!(
                parse_status(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn auth_lines() {
        assert_eq!(
            parse_auth_line(b"+ ").unwrap(),
            AuthLine::Continuation(String::new())
        );
        assert_eq!(
            parse_auth_line(b"+ eyJzdGF0dXMiOiI0MDEifQ==").unwrap(),
            AuthLine::Continuation("eyJzdGF0dXMiOiI0MDEifQ==".into())
        );
        assert!(matches!(
            parse_auth_line(b"+OK Logged in.").unwrap(),
            AuthLine::Status(Pop3Status { ok: true, .. })
        ));
    }

    #[test]
    fn multiline_dot_unstuffing() {
        let body = b"Subject: x\r\n\r\n..leading dot\r\n.\tdot tab\r\n. \r\nplain\r\n..\r\n.\r\n";
        let out = decode_multiline(body, 1 << 20).unwrap();
        assert_eq!(
            out,
            b"Subject: x\r\n\r\n.leading dot\r\n\tdot tab\r\n \r\nplain\r\n.\r\n".to_vec()
        );
        // An empty body; bare LF line endings are tolerated.
        assert_eq!(decode_multiline(b".\r\n", 10).unwrap(), Vec::<u8>::new());
        assert_eq!(decode_multiline(b"a\nb\n.\n", 100).unwrap(), b"a\r\nb\r\n");
        // Data after the terminator belongs to the next response: ignored here.
        assert_eq!(
            decode_multiline(b"a\r\n.\r\n+OK next\r\n", 100).unwrap(),
            b"a\r\n"
        );
    }

    #[test]
    fn multiline_errors() {
        assert_eq!(
            decode_multiline(b"line one\r\nline two\r\n", 100),
            Err(MultilineError::Unterminated)
        );
        assert_eq!(
            decode_multiline(b"0123456789\r\n0123456789\r\n.\r\n", 15),
            Err(MultilineError::TooLarge(15))
        );
        // Exactly at the limit is fine.
        assert_eq!(decode_multiline(b"0123\r\n.\r\n", 6).unwrap(), b"0123\r\n");
    }

    #[test]
    fn listings() {
        assert_eq!(parse_stat("2 320"), Some((2, 320)));
        assert_eq!(parse_stat("2"), None);
        assert_eq!(parse_stat("x 1"), None);
        assert_eq!(parse_scan_line(b"1 120"), Some((1, 120)));
        assert_eq!(
            parse_uidl_line(b"1 whqtswO00WBw418f9t5JxYwZ"),
            Some((1, "whqtswO00WBw418f9t5JxYwZ".into()))
        );
        assert_eq!(parse_uidl_line(b"1"), None);
        assert_eq!(parse_uidl_line(b"one abc"), None);
        assert_eq!(parse_uidl_line("1 ünïcode".as_bytes()), None);
        assert_eq!(
            parse_uidl_line(format!("1 {}", "a".repeat(71)).as_bytes()),
            None
        );
    }

    #[test]
    fn classification_table() {
        use ErrorKind as K;
        use FailureStep as S;
        let cases = [
            (Phase::Login, Some("AUTH"), S::Authentication, K::Auth),
            (Phase::Login, None, S::Authentication, K::Auth),
            (
                Phase::Login,
                Some("IN-USE"),
                S::Authentication,
                K::Transient,
            ),
            (
                Phase::Login,
                Some("SYS/TEMP"),
                S::Authentication,
                K::Transient,
            ),
            (
                Phase::Login,
                Some("SYS/PERM"),
                S::Authentication,
                K::Permanent,
            ),
            (
                Phase::Login,
                Some("LOGIN-DELAY"),
                S::Authentication,
                K::Throttled,
            ),
            (Phase::Stls, None, S::Tls, K::Config),
            (Phase::Stat, None, S::Permission, K::Permission),
            (Phase::Stat, Some("SYS/TEMP"), S::Permission, K::Transient),
            (Phase::Greeting, None, S::Protocol, K::Transient),
            (Phase::Command, None, S::Protocol, K::Permanent),
        ];
        for (phase, code, step, kind) in cases {
            assert_eq!(classify(phase, code), (step, kind), "{phase:?} {code:?}");
        }
    }
}
