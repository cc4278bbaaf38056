//! SMTP replies (RFC 5321 §4.2, enhanced status codes RFC 3463), pure: multi-line replies,
//! EHLO keywords, AUTH mechanisms, and how a refusal is classified.

use serversync_model::{ErrorKind, FailureStep};

use crate::imap::parse::shorten;

/// A complete reply: the code, the enhanced status code if the text starts with one, and
/// the text of each line (without code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `5.7.8` (RFC 3463), when the first line carries one of the reply's class.
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient_negative(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// `535 5.7.8 Error: authentication failed` (lines joined with ` / `, shortened).
    pub fn display(&self) -> String {
        let text = self.lines.join(" / ");
        if text.is_empty() {
            self.code.to_string()
        } else {
            shorten(&format!("{} {text}", self.code), 300)
        }
    }
}

/// Accumulates the lines of one (possibly multi-line) reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line (without CR LF); `Ok(Some(reply))` after the last line.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, String> {
        let (code, last, text) = parse_reply_line(line)?;
        match self.code {
            Some(c) if c != code => {
                return Err(format!(
                    "reply code changed from {c} to {code} within one reply"
                ));
            }
            _ => self.code = Some(code),
        }
        self.lines.push(text);
        if !last {
            if self.lines.len() > 1000 {
                return Err("reply longer than 1000 lines".into());
            }
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        self.code = None;
        let enhanced = lines.first().and_then(|l| enhanced_code(code, l));
        Ok(Some(Reply {
            code,
            enhanced,
            lines,
        }))
    }
}

/// `250-SIZE 1000` → (250, false, "SIZE 1000"); `250 OK` → (250, true, "OK"); `250` alone is
/// a last line with empty text.
pub fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, String), String> {
    let shown = || shorten(&String::from_utf8_lossy(line), 120);
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(format!("not an SMTP reply: \"{}\"", shown()));
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if !(200..600).contains(&code) {
        return Err(format!("reply code out of range: \"{}\"", shown()));
    }
    let (last, text) = match line.get(3) {
        None => (true, &line[3..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(format!("not an SMTP reply: \"{}\"", shown())),
    };
    Ok((
        code,
        last,
        String::from_utf8_lossy(text).trim_end().to_string(),
    ))
}

/// The enhanced status code at the start of `text`, if its class matches the reply's.
pub fn enhanced_code(code: u16, text: &str) -> Option<String> {
    let token = text.split_ascii_whitespace().next()?;
    let mut parts = token.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let numeric = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !(matches!(class, "2" | "4" | "5") && numeric(subject, 3) && numeric(detail, 3)) {
        return None;
    }
    if class.as_bytes()[0] - b'0' != (code / 100) as u8 {
        return None;
    }
    Some(token.to_string())
}

/// The EHLO keywords with their parameters (`PIPELINING`, `SIZE 52428800`, `AUTH PLAIN
/// LOGIN`…): every line after the first (which greets).
pub fn ehlo_capabilities(reply: &Reply) -> Vec<String> {
    reply
        .lines
        .iter()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// AUTH mechanisms from EHLO keywords (`AUTH PLAIN LOGIN`, and the old `AUTH=PLAIN LOGIN`).
pub fn auth_mechanisms(capabilities: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cap in capabilities {
        let upper = cap.to_ascii_uppercase();
        let rest = if let Some(r) = upper.strip_prefix("AUTH ") {
            r
        } else if let Some(r) = upper.strip_prefix("AUTH=") {
            r
        } else {
            continue;
        };
        for m in rest.split_ascii_whitespace() {
            if !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        }
    }
    out
}

/// What the client was doing when the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    MailFrom,
    /// RSET, NOOP, QUIT and other commands.
    Command,
}

/// Whether a 4xx reply asks us to slow down rather than reporting a passing problem.
pub fn is_throttling(reply: &Reply) -> bool {
    if !reply.is_transient_negative() {
        return false;
    }
    if reply.enhanced.as_deref() == Some("4.7.28") {
        return true;
    }
    let text = reply.lines.join(" ").to_ascii_lowercase();
    [
        "rate limit",
        "ratelimit",
        "rate-limit",
        "sending rate",
        "too many",
        "throttl",
        "slow down",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// The step and kind of a negative reply in `phase`: 4xx is transient (or throttled), 5xx
/// depends on the phase and code (535 = credentials rejected).
pub fn classify(phase: Phase, reply: &Reply) -> (FailureStep, ErrorKind) {
    let code = reply.code;
    let enhanced = reply.enhanced.as_deref();
    let phase_step = match phase {
        Phase::Greeting | Phase::Ehlo | Phase::Command => FailureStep::Protocol,
        Phase::StartTls => FailureStep::Tls,
        Phase::Auth => FailureStep::Authentication,
        Phase::MailFrom => FailureStep::Permission,
    };
    if reply.is_transient_negative() {
        let kind = if is_throttling(reply) {
            ErrorKind::Throttled
        } else {
            ErrorKind::Transient
        };
        return (phase_step, kind);
    }
    match phase {
        Phase::Auth => match code {
            535 | 534 => (FailureStep::Authentication, ErrorKind::Auth),
            _ if enhanced == Some("5.7.8") => (FailureStep::Authentication, ErrorKind::Auth),
            530 | 538 => (FailureStep::Tls, ErrorKind::Config),
            504 => (FailureStep::Authentication, ErrorKind::Config),
            500..=503 => (FailureStep::Protocol, ErrorKind::Permanent),
            _ => (FailureStep::Authentication, ErrorKind::Auth),
        },
        Phase::MailFrom => match code {
            530 => (FailureStep::Authentication, ErrorKind::Config),
            501 | 553 if enhanced != Some("5.7.1") => (FailureStep::Permission, ErrorKind::Config),
            500 | 502 | 503 | 555 => (FailureStep::Protocol, ErrorKind::Permanent),
            _ => (FailureStep::Permission, ErrorKind::Permission),
        },
        Phase::StartTls => (FailureStep::Tls, ErrorKind::Config),
        Phase::Greeting | Phase::Ehlo | Phase::Command => {
            (FailureStep::Protocol, ErrorKind::Permanent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        let mut p = ReplyParser::new();
        let mut out = None;
        for (i, l) in lines.iter().enumerate() {
            out = p.push_line(l.as_bytes()).unwrap();
            assert_eq!(out.is_some(), i == lines.len() - 1, "{l}");
        }
        out.unwrap()
    }

    #[test]
    fn multi_line_replies_and_ehlo_keywords() {
        let r = reply(&[
            "250-localhost",
            "250-PIPELINING",
            "250-SIZE 52428800",
            "250-STARTTLS",
            "250-AUTH PLAIN LOGIN",
            "250-AUTH=PLAIN LOGIN",
            "250-ENHANCEDSTATUSCODES",
            "250-DSN",
            "250 SMTPUTF8",
        ]);
        assert_eq!(r.code, 250);
        assert!(r.is_positive());
        let caps = ehlo_capabilities(&r);
        assert_eq!(caps[0], "PIPELINING");
        assert!(caps.contains(&"SIZE 52428800".to_string()));
        assert_eq!(auth_mechanisms(&caps), vec!["PLAIN", "LOGIN"]);
    }

    #[test]
    fn enhanced_codes() {
        let r = reply(&["535 5.7.8 Error: authentication failed: authentication failure"]);
        assert_eq!(r.enhanced.as_deref(), Some("5.7.8"));
        assert_eq!(
            r.display(),
            "535 5.7.8 Error: authentication failed: authentication failure"
        );
        assert_eq!(enhanced_code(250, "2.1.0 Ok"), Some("2.1.0".into()));
        assert_eq!(enhanced_code(250, "5.1.0 mismatch"), None);
        assert_eq!(enhanced_code(250, "2.1 short"), None);
        assert_eq!(enhanced_code(220, "localhost ESMTP"), None);
        assert_eq!(reply(&["250"]).lines, vec![String::new()]);
    }

    #[test]
    fn malformed_replies() {
        for line in [
            &b""[..],
            b"25",
            b"abc def",
            b"250xOK",
            b"+OK ready",
            b"* OK",
            b"199 low",
            b"600 high",
        ] {
            assert!(
                parse_reply_line(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let mut p = ReplyParser::new();
        assert_eq!(p.push_line(b"250-first").unwrap(), None);
        assert!(p.push_line(b"251 second").is_err());
    }

    #[test]
    fn classification_table() {
        use ErrorKind as K;
        use FailureStep as S;
        use Phase as P;
        let cases: &[(Phase, &str, FailureStep, ErrorKind)] = &[
            (
                P::Auth,
                "535 5.7.8 Error: authentication failed",
                S::Authentication,
                K::Auth,
            ),
            (
                P::Auth,
                "534 5.7.9 Application-specific password required",
                S::Authentication,
                K::Auth,
            ),
            (
                P::Auth,
                "454 4.7.0 Temporary authentication failure",
                S::Authentication,
                K::Transient,
            ),
            (P::Auth, "538 5.7.11 Encryption required", S::Tls, K::Config),
            (
                P::Auth,
                "504 5.5.4 Unrecognized authentication type",
                S::Authentication,
                K::Config,
            ),
            (P::Auth, "501 5.5.2 Syntax error", S::Protocol, K::Permanent),
            (
                P::MailFrom,
                "553 5.7.1 Sender address rejected: not owned by user",
                S::Permission,
                K::Permission,
            ),
            (
                P::MailFrom,
                "550 5.7.1 Not allowed",
                S::Permission,
                K::Permission,
            ),
            (
                P::MailFrom,
                "501 5.1.7 Bad sender address syntax",
                S::Permission,
                K::Config,
            ),
            (
                P::MailFrom,
                "530 5.7.0 Authentication required",
                S::Authentication,
                K::Config,
            ),
            (
                P::MailFrom,
                "451 4.3.0 Temporary lookup failure",
                S::Permission,
                K::Transient,
            ),
            (
                P::MailFrom,
                "450 4.7.1 Sending rate limit exceeded",
                S::Permission,
                K::Throttled,
            ),
            (
                P::Greeting,
                "421 4.7.0 Too many connections from your IP",
                S::Protocol,
                K::Throttled,
            ),
            (
                P::Greeting,
                "421 4.3.2 Service shutting down",
                S::Protocol,
                K::Transient,
            ),
            (
                P::Greeting,
                "554 5.7.1 No SMTP service here",
                S::Protocol,
                K::Permanent,
            ),
            (
                P::StartTls,
                "454 4.7.0 TLS not available due to local problem",
                S::Tls,
                K::Transient,
            ),
            (P::StartTls, "502 5.5.1 Not implemented", S::Tls, K::Config),
            (
                P::Command,
                "421-4.7.28 unusually high rate",
                S::Protocol,
                K::Throttled,
            ),
        ];
        for (phase, line, step, kind) in cases {
            let mut line = line.to_string();
            if line.as_bytes()[3] == b'-' {
                line.replace_range(3..4, " ");
            }
            let r = reply(&[&line]);
            assert_eq!(classify(*phase, &r), (*step, *kind), "{phase:?} {line}");
        }
    }
}
