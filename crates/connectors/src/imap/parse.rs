//! IMAP response lines (RFC 9051 / 3501 `response`), pure: status responses with their
//! response codes, CAPABILITY lists, the mailbox data of SELECT/EXAMINE, and how a refusal
//! is classified (RFC 5530 response codes → step and kind).

use serversync_model::{ErrorKind, FailureStep};

/// The status of a status response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    Preauth,
}

impl Status {
    fn parse(word: &str) -> Option<Status> {
        Some(match word.to_ascii_uppercase().as_str() {
            "OK" => Status::Ok,
            "NO" => Status::No,
            "BAD" => Status::Bad,
            "BYE" => Status::Bye,
            "PREAUTH" => Status::Preauth,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Bye => "BYE",
            Status::Preauth => "PREAUTH",
        }
    }
}

/// A response code: `[AUTHENTICATIONFAILED]`, `[UIDVALIDITY 3857529045]`, `[CAPABILITY …]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCode {
    /// The code's name, upper-cased.
    pub name: String,
    /// Whatever follows the name inside the brackets.
    pub args: String,
}

/// `OK`/`NO`/`BAD`/`BYE`/`PREAUTH` with its optional code and human text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusResponse {
    pub status: Status,
    pub code: Option<ResponseCode>,
    pub text: String,
}

impl StatusResponse {
    pub fn code_name(&self) -> Option<&str> {
        self.code.as_ref().map(|c| c.name.as_str())
    }

    /// `NO [AUTHENTICATIONFAILED] Authentication failed.` (for messages).
    pub fn display(&self) -> String {
        let mut s = self.status.as_str().to_string();
        if let Some(code) = &self.code {
            s.push_str(" [");
            s.push_str(&code.name);
            if !code.args.is_empty() {
                s.push(' ');
                s.push_str(&code.args);
            }
            s.push(']');
        }
        if !self.text.is_empty() {
            s.push(' ');
            s.push_str(&self.text);
        }
        shorten(&s, 300)
    }

    /// The capability list carried in a `[CAPABILITY …]` code.
    pub fn capabilities(&self) -> Option<Vec<String>> {
        match &self.code {
            Some(c) if c.name == "CAPABILITY" => Some(words(&c.args)),
            _ => None,
        }
    }
}

/// Untagged (`*`) responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untagged {
    Status(StatusResponse),
    Capability(Vec<String>),
    /// Anything else, e.g. `3 EXISTS`, `FLAGS (\Seen)`, `LIST (…) "/" INBOX`.
    Data(String),
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseLine {
    Tagged {
        tag: String,
        status: StatusResponse,
    },
    Untagged(Untagged),
    /// `+ text`: the server waits for more of the command (literal, SASL step).
    Continuation(String),
}

/// Parses one response line (after its literals were read into it).
pub fn parse_line(line: &[u8]) -> Result<ResponseLine, String> {
    let text = String::from_utf8_lossy(line);
    let text = text.as_ref();
    if let Some(rest) = text.strip_prefix('+') {
        return Ok(ResponseLine::Continuation(
            rest.strip_prefix(' ').unwrap_or(rest).to_string(),
        ));
    }
    if let Some(rest) = text.strip_prefix("* ") {
        let (word, tail) = split_word(rest);
        if let Some(status) = Status::parse(word) {
            return Ok(ResponseLine::Untagged(Untagged::Status(parse_resp_text(
                status, tail,
            ))));
        }
        if word.eq_ignore_ascii_case("CAPABILITY") {
            return Ok(ResponseLine::Untagged(Untagged::Capability(words(tail))));
        }
        if word.is_empty() {
            return Err(format!("empty untagged response: {}", shorten(text, 120)));
        }
        return Ok(ResponseLine::Untagged(Untagged::Data(rest.to_string())));
    }
    let (tag, rest) = split_word(text);
    let tag_ok = !tag.is_empty()
        && tag
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b));
    if !tag_ok {
        return Err(format!("not an IMAP response: {}", shorten(text, 120)));
    }
    let (word, tail) = split_word(rest);
    match Status::parse(word) {
        Some(status @ (Status::Ok | Status::No | Status::Bad)) => Ok(ResponseLine::Tagged {
            tag: tag.to_string(),
            status: parse_resp_text(status, tail),
        }),
        _ => Err(format!(
            "tagged response without OK/NO/BAD: {}",
            shorten(text, 120)
        )),
    }
}

/// `resp-text = ["[" resp-text-code "]" SP] text`.
fn parse_resp_text(status: Status, rest: &str) -> StatusResponse {
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('[')
        && let Some(end) = inner.find(']')
    {
        let (name, args) = split_word(&inner[..end]);
        return StatusResponse {
            status,
            code: Some(ResponseCode {
                name: name.to_ascii_uppercase(),
                args: args.trim().to_string(),
            }),
            text: inner[end + 1..].trim().to_string(),
        };
    }
    StatusResponse {
        status,
        code: None,
        text: rest.trim_end().to_string(),
    }
}

/// The byte count of a literal announced at the end of a line: `{123}` or `{123+}`.
pub fn literal_len(line: &[u8]) -> Option<usize> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Finds an RFC 5530 style `[CODE]` in free text (for errors reported by async-imap, which
/// keeps codes it does not know in the text).
pub fn code_in_text(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(start) = rest.find('[') {
        let after = &rest[start + 1..];
        let end = after.find([']', ' ']).unwrap_or(after.len());
        let name = &after[..end];
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '/')
        {
            return Some(name.to_string());
        }
        rest = after;
    }
    None
}

/// What the connection was doing when the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Capability,
    StartTls,
    Login,
    Examine,
    Logout,
    Command,
}

/// The step and kind of a refusal (`NO`, `BAD`, `BYE`) in `phase`: RFC 5530 codes decide
/// the kind where present; otherwise the phase's default.
pub fn classify(phase: Phase, status: Status, code: Option<&str>) -> (FailureStep, ErrorKind) {
    let step = match (phase, code) {
        (_, Some("PRIVACYREQUIRED")) => FailureStep::Tls,
        (Phase::Greeting | Phase::Capability | Phase::Logout | Phase::Command, _) => {
            FailureStep::Protocol
        }
        (Phase::StartTls, _) => FailureStep::Tls,
        (Phase::Login, _) if status == Status::Bad => FailureStep::Protocol,
        (Phase::Login, _) => FailureStep::Authentication,
        (Phase::Examine, _) if status == Status::Bad => FailureStep::Protocol,
        (Phase::Examine, _) => FailureStep::Permission,
    };
    let by_code = code.and_then(|c| {
        Some(match c {
            "UNAVAILABLE" | "SERVERBUG" | "INUSE" | "CORRUPTION" | "EXPUNGEISSUED" => {
                ErrorKind::Transient
            }
            "LIMIT" | "THROTTLED" => ErrorKind::Throttled,
            "AUTHENTICATIONFAILED" | "EXPIRED" => ErrorKind::Auth,
            "AUTHORIZATIONFAILED" | "CONTACTADMIN" | "NOPERM" => ErrorKind::Permission,
            "PRIVACYREQUIRED" | "NONEXISTENT" => ErrorKind::Config,
            "OVERQUOTA" | "ALREADYEXISTS" | "CANNOT" => ErrorKind::Permanent,
            "CLIENTBUG" => ErrorKind::Bug,
            _ => return None,
        })
    });
    let kind = by_code.unwrap_or(match (phase, status) {
        (_, Status::Bye) => ErrorKind::Transient,
        (Phase::Login, Status::No) => ErrorKind::Auth,
        (Phase::Examine, Status::No) => ErrorKind::Permission,
        (Phase::StartTls, _) => ErrorKind::Config,
        _ => ErrorKind::Permanent,
    });
    (step, kind)
}

/// SELECT / EXAMINE results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxInfo {
    pub exists: Option<u32>,
    pub uid_validity: Option<u32>,
    pub uid_next: Option<u32>,
    /// CONDSTORE: absent when the server does not support it (or `[NOMODSEQ]`).
    pub highest_modseq: Option<u64>,
    pub read_only: bool,
}

impl MailboxInfo {
    /// Collects the mailbox data of a SELECT/EXAMINE: untagged responses and the final OK.
    pub fn from_responses<'a>(
        untagged: impl IntoIterator<Item = &'a Untagged>,
        done: &StatusResponse,
    ) -> MailboxInfo {
        let mut info = MailboxInfo::default();
        let apply_code = |info: &mut MailboxInfo, code: &ResponseCode| match code.name.as_str() {
            "UIDVALIDITY" => info.uid_validity = code.args.parse().ok(),
            "UIDNEXT" => info.uid_next = code.args.parse().ok(),
            "HIGHESTMODSEQ" => info.highest_modseq = code.args.parse().ok(),
            "READ-ONLY" => info.read_only = true,
            "READ-WRITE" => info.read_only = false,
            _ => {}
        };
        for u in untagged {
            match u {
                Untagged::Status(s) => {
                    if let Some(code) = &s.code {
                        apply_code(&mut info, code);
                    }
                }
                Untagged::Data(d) => {
                    let (n, word) = split_word(d);
                    if split_word(word).0.eq_ignore_ascii_case("EXISTS") {
                        info.exists = n.parse().ok();
                    }
                }
                Untagged::Capability(_) => {}
            }
        }
        if let Some(code) = &done.code {
            apply_code(&mut info, code);
        }
        info
    }
}

fn split_word(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_string).collect()
}

pub(crate) fn shorten(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(line: &str) -> (String, StatusResponse) {
        match parse_line(line.as_bytes()).unwrap() {
            ResponseLine::Tagged { tag, status } => (tag, status),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn parses_status_responses_with_codes() {
        let (tag, st) = tagged("A0002 NO [AUTHENTICATIONFAILED] Authentication failed.");
        assert_eq!(tag, "A0002");
        assert_eq!(st.status, Status::No);
        assert_eq!(st.code_name(), Some("AUTHENTICATIONFAILED"));
        assert_eq!(st.text, "Authentication failed.");
        assert_eq!(
            st.display(),
            "NO [AUTHENTICATIONFAILED] Authentication failed."
        );

        let (_, st) = tagged("a1 ok [CAPABILITY IMAP4rev1 IDLE CONDSTORE] Logged in");
        assert_eq!(st.status, Status::Ok);
        assert_eq!(
            st.capabilities().unwrap(),
            vec!["IMAP4rev1", "IDLE", "CONDSTORE"]
        );

        let (_, st) = tagged("A3 OK");
        assert_eq!((st.code, st.text.as_str()), (None, ""));

        match parse_line(b"* OK [UIDVALIDITY 1700000000] UIDs valid").unwrap() {
            ResponseLine::Untagged(Untagged::Status(s)) => {
                assert_eq!(s.code.unwrap().args, "1700000000")
            }
            other => panic!("{other:?}"),
        }
        match parse_line(b"* BYE [UNAVAILABLE] Server shutting down").unwrap() {
            ResponseLine::Untagged(Untagged::Status(s)) => {
                assert_eq!(
                    (s.status, s.code_name()),
                    (Status::Bye, Some("UNAVAILABLE"))
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_line(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN").unwrap(),
            ResponseLine::Untagged(Untagged::Capability(vec![
                "IMAP4rev1".into(),
                "STARTTLS".into(),
                "AUTH=PLAIN".into()
            ]))
        );
        assert_eq!(
            parse_line(b"+ ").unwrap(),
            ResponseLine::Continuation(String::new())
        );
        assert_eq!(
            parse_line(b"+ eyJzdGF0dXMiOiI0MDEifQ==").unwrap(),
            ResponseLine::Continuation("eyJzdGF0dXMiOiI0MDEifQ==".into())
        );
    }

    #[test]
    fn rejects_garbage() {
        for line in [
            &b"220 localhost ESMTP Postfix"[..],
            b"",
            b"* ",
            b"A1 MAYBE fine",
        ] {
            assert!(
                parse_line(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn literals() {
        assert_eq!(literal_len(b"* LIST () \"/\" {5}"), Some(5));
        assert_eq!(literal_len(b"A1 LOGIN {12+}"), Some(12));
        assert_eq!(literal_len(b"* OK {not}"), None);
        assert_eq!(literal_len(b"* OK {}"), None);
        assert_eq!(literal_len(b"* OK done"), None);
    }

    #[test]
    fn codes_in_free_text() {
        assert_eq!(
            code_in_text(
                "code: None, info: Some(\"[AUTHENTICATIONFAILED] Authentication failed.\")"
            )
            .as_deref(),
            Some("AUTHENTICATIONFAILED")
        );
        assert_eq!(
            code_in_text("info: Some(\"[LIMIT] Too many\")").as_deref(),
            Some("LIMIT")
        );
        assert_eq!(code_in_text("no code [at all here"), None);
    }

    #[test]
    fn classification_table() {
        use ErrorKind as K;
        use FailureStep as S;
        use Phase as P;
        let cases: &[(Phase, Status, Option<&str>, FailureStep, ErrorKind)] = &[
            (
                P::Login,
                Status::No,
                Some("AUTHENTICATIONFAILED"),
                S::Authentication,
                K::Auth,
            ),
            (P::Login, Status::No, None, S::Authentication, K::Auth),
            (
                P::Login,
                Status::No,
                Some("UNAVAILABLE"),
                S::Authentication,
                K::Transient,
            ),
            (
                P::Login,
                Status::No,
                Some("LIMIT"),
                S::Authentication,
                K::Throttled,
            ),
            (
                P::Login,
                Status::No,
                Some("EXPIRED"),
                S::Authentication,
                K::Auth,
            ),
            (
                P::Login,
                Status::No,
                Some("AUTHORIZATIONFAILED"),
                S::Authentication,
                K::Permission,
            ),
            (
                P::Login,
                Status::No,
                Some("CONTACTADMIN"),
                S::Authentication,
                K::Permission,
            ),
            (
                P::Login,
                Status::No,
                Some("PRIVACYREQUIRED"),
                S::Tls,
                K::Config,
            ),
            (
                P::Login,
                Status::No,
                Some("SERVERBUG"),
                S::Authentication,
                K::Transient,
            ),
            (P::Login, Status::Bad, None, S::Protocol, K::Permanent),
            (P::Login, Status::Bye, None, S::Authentication, K::Transient),
            (P::Examine, Status::No, None, S::Permission, K::Permission),
            (
                P::Examine,
                Status::No,
                Some("NOPERM"),
                S::Permission,
                K::Permission,
            ),
            (
                P::Examine,
                Status::No,
                Some("NONEXISTENT"),
                S::Permission,
                K::Config,
            ),
            (
                P::Examine,
                Status::No,
                Some("INUSE"),
                S::Permission,
                K::Transient,
            ),
            (
                P::Examine,
                Status::No,
                Some("LIMIT"),
                S::Permission,
                K::Throttled,
            ),
            (P::StartTls, Status::Bad, None, S::Tls, K::Config),
            (
                P::StartTls,
                Status::No,
                Some("UNAVAILABLE"),
                S::Tls,
                K::Transient,
            ),
            (P::Greeting, Status::Bye, None, S::Protocol, K::Transient),
            (
                P::Greeting,
                Status::Bye,
                Some("UNAVAILABLE"),
                S::Protocol,
                K::Transient,
            ),
            (P::Capability, Status::Bad, None, S::Protocol, K::Permanent),
            (
                P::Command,
                Status::No,
                Some("OVERQUOTA"),
                S::Protocol,
                K::Permanent,
            ),
            (
                P::Command,
                Status::Bad,
                Some("CLIENTBUG"),
                S::Protocol,
                K::Bug,
            ),
        ];
        for &(phase, status, code, step, kind) in cases {
            assert_eq!(
                classify(phase, status, code),
                (step, kind),
                "{phase:?} {status:?} {code:?}"
            );
        }
    }

    #[test]
    fn mailbox_info_from_examine() {
        let lines = [
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
            "* OK [PERMANENTFLAGS ()] Read-only mailbox.",
            "* 4 EXISTS",
            "* 0 RECENT",
            "* OK [UIDVALIDITY 1763831234] UIDs valid",
            "* OK [UIDNEXT 5] Predicted next UID",
            "* OK [HIGHESTMODSEQ 9] Highest",
        ];
        let untagged: Vec<Untagged> = lines
            .iter()
            .map(|l| match parse_line(l.as_bytes()).unwrap() {
                ResponseLine::Untagged(u) => u,
                other => panic!("{other:?}"),
            })
            .collect();
        let (_, done) = tagged("A4 OK [READ-ONLY] Examine completed (0.001 + 0.000 secs).");
        let info = MailboxInfo::from_responses(&untagged, &done);
        assert_eq!(
            info,
            MailboxInfo {
                exists: Some(4),
                uid_validity: Some(1763831234),
                uid_next: Some(5),
                highest_modseq: Some(9),
                read_only: true,
            }
        );
    }
}
