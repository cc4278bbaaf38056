//! Server bytes → the SMTP client's reply parsing (`connectors::smtp::parse`): lines as the
//! client reads them into `ReplyParser`, then what the client makes of each reply (EHLO
//! keywords, AUTH mechanisms, throttling, the failure class of every phase).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_connectors::smtp::parse::{
    Phase, ReplyParser, auth_mechanisms, classify, ehlo_capabilities, enhanced_code, is_throttling,
    parse_reply_line,
};

/// The lines of `data` as the client reads them (split at LF, one CR before it dropped).
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..pos];
        out.push(line.strip_suffix(b"\r").unwrap_or(line));
        rest = &rest[pos + 1..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut parser = ReplyParser::new();
    let mut lines_in_reply = 0usize;
    for line in lines(data) {
        if let Ok((code, last, text)) = parse_reply_line(line) {
            assert!((200..600).contains(&code));
            assert_eq!(text, text.trim_end());
            // The line the client would send back for it parses to the same.
            let again = format!("{code}{}{text}", if last { ' ' } else { '-' });
            assert_eq!(
                parse_reply_line(again.as_bytes()),
                Ok((code, last, text.clone()))
            );
        }
        lines_in_reply += 1;
        let reply = match parser.push_line(line) {
            Ok(Some(reply)) => reply,
            Ok(None) => continue,
            Err(_) => {
                // The client fails the exchange here; start afresh as a new connection would.
                parser = ReplyParser::new();
                lines_in_reply = 0;
                continue;
            }
        };
        assert!((200..600).contains(&reply.code));
        assert_eq!(reply.lines.len(), lines_in_reply);
        assert!(reply.lines.len() <= 1001, "{} lines", reply.lines.len());
        lines_in_reply = 0;
        if let Some(e) = &reply.enhanced {
            assert_eq!(e.as_bytes()[0] - b'0', (reply.code / 100) as u8, "{e}");
            assert_eq!(enhanced_code(reply.code, e).as_deref(), Some(e.as_str()));
        }
        let shown = reply.display();
        assert!(shown.chars().count() <= 301, "{shown:?}");
        assert!(shown.starts_with(&reply.code.to_string()));
        let caps = ehlo_capabilities(&reply);
        assert!(caps.iter().all(|c| !c.is_empty() && c.trim() == c));
        let mechanisms = auth_mechanisms(&caps);
        for (i, m) in mechanisms.iter().enumerate() {
            assert!(!m.is_empty() && !m.contains(' ') && *m == m.to_ascii_uppercase());
            assert!(!mechanisms[..i].contains(m), "{m} twice");
        }
        let throttled = is_throttling(&reply);
        assert!(!throttled || reply.is_transient_negative());
        for phase in [
            Phase::Greeting,
            Phase::Ehlo,
            Phase::StartTls,
            Phase::Auth,
            Phase::MailFrom,
            Phase::Command,
        ] {
            let _ = classify(phase, &reply);
        }
    }
});
