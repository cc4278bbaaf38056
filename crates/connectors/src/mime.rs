//! Raw RFC 5322 / MIME message → the fields serversync keeps (mail-parser 0.11; 1.0 needs a
//! newer compiler). Pure: no I/O. Lenient like mail-parser itself, but every irregularity is
//! reported in `problems` so the decision trace can say what was wrong.

pub mod build;

use chrono::{DateTime, Utc};
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedAttachment {
    pub file_name: Option<String>,
    pub content_type: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedMail {
    /// Without angle brackets.
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub date: Option<DateTime<Utc>>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<ParsedAttachment>,
    /// Irregularities found (missing headers, undecodable parts…).
    pub problems: Vec<String>,
}

/// The addresses of a header field, trimmed and lowercased. One with a control character
/// (a bare CR that mail-parser leaves inside, a NUL) is not an address: it is left out, so
/// it never becomes a party that someone replies to.
fn addresses(a: Option<&Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .filter_map(|x| x.address())
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty() && !s.contains(char::is_control))
            .collect()
    })
    .unwrap_or_default()
}

fn text_list(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.trim().to_owned()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.trim().to_owned()).collect(),
        _ => Vec::new(),
    }
}

/// The declared charset of the first part of a body.
fn body_charset<'x>(msg: &'x mail_parser::Message<'x>, ids: &[u32]) -> Option<&'x str> {
    let part = msg.parts.get(*ids.first()? as usize)?;
    part.content_type()?.attribute("charset")
}

/// Stateful 7-bit charsets (ISO-2022-JP, ISO-2022-KR, UTF-7…) are all ASCII on the wire, and
/// mail-parser passes such text through undecoded: decode it with the declared charset.
fn fix_7bit_charset(text: String, charset: Option<&str>) -> String {
    let Some(enc) = charset.and_then(|c| encoding_rs::Encoding::for_label(c.trim().as_bytes()))
    else {
        return text;
    };
    if enc == encoding_rs::UTF_8 || !text.is_ascii() || !text.contains('\u{1b}') {
        return text;
    }
    let (decoded, _, _) = enc.decode(text.as_bytes());
    decoded.into_owned()
}

/// RFC 5322 allows no NUL in a header field, and PostgreSQL cannot store one in a text
/// column (the Message-ID, the subject's key and the conversation are columns): header values
/// lose their NUL characters, and an identifier or address left empty is dropped. Noted in
/// `problems`. Bodies are stored as JSON, where a NUL is escaped, and keep theirs.
fn remove_nul_from_headers(p: &mut ParsedMail) {
    let mut found = false;
    let mut fix = |s: &mut String| {
        if s.contains('\0') {
            s.retain(|c| c != '\0');
            found = true;
        }
    };
    for s in [
        &mut p.message_id,
        &mut p.subject,
        &mut p.from,
        &mut p.in_reply_to,
    ]
    .into_iter()
    .flatten()
    {
        fix(s);
    }
    for s in p.to.iter_mut().chain(&mut p.cc).chain(&mut p.references) {
        fix(s);
    }
    if !found {
        return;
    }
    // Brackets and white space behind a NUL were not trimmed before: trim identifiers again.
    let ids = [&mut p.message_id, &mut p.in_reply_to]
        .into_iter()
        .flatten();
    for s in ids.chain(&mut p.references) {
        *s = s.trim().trim_matches(['<', '>']).to_owned();
    }
    for o in [&mut p.message_id, &mut p.from, &mut p.in_reply_to] {
        if o.as_deref().is_some_and(str::is_empty) {
            *o = None;
        }
    }
    for v in [&mut p.to, &mut p.cc, &mut p.references] {
        v.retain(|s| !s.is_empty());
    }
    p.problems
        .push("NUL characters removed from header fields".into());
}

/// Parses a raw message. `Err` only when there is nothing that looks like a message at all,
/// or when mail-parser panics on it (see [`guarded`]).
pub fn parse(raw: &[u8]) -> Result<ParsedMail, String> {
    guarded(|| parse_unguarded(raw)).unwrap_or_else(|| {
        Err("the MIME structure cannot be read (the MIME parser failed on it)".into())
    })
}

/// Runs code that reads a message with mail-parser; `None` if it panicked. mail-parser has
/// `debug_assert!`s that malformed multiparts reach (found by fuzzing): in a debug build a
/// message like that would end the sync worker or the tracker reading it, every time it is
/// read again. Treated as an unreadable message instead; the panic is still printed.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    std::panic::catch_unwind(f).ok()
}

fn parse_unguarded(raw: &[u8]) -> Result<ParsedMail, String> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("the message is empty".into());
    }
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| "no RFC 5322 message could be read".to_owned())?;
    if msg.headers().is_empty() {
        return Err("the message has no header fields".into());
    }
    let mut p = ParsedMail {
        message_id: msg
            .message_id()
            .map(|s| s.trim().trim_matches(['<', '>']).to_owned())
            .filter(|s| !s.is_empty()),
        // Encoded words in ISO-2022-JP come out of mail-parser still in their 7-bit form.
        subject: msg
            .subject()
            .map(|t| fix_7bit_charset(t.to_owned(), Some("ISO-2022-JP"))),
        from: addresses(msg.from()).into_iter().next(),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        in_reply_to: text_list(msg.in_reply_to())
            .into_iter()
            .next()
            .map(|s| s.trim_matches(['<', '>']).to_owned()),
        references: text_list(msg.references())
            .into_iter()
            .map(|s| s.trim_matches(['<', '>']).to_owned())
            .collect(),
        date: msg
            .date()
            .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0)),
        text_body: msg
            .body_text(0)
            .map(|c| fix_7bit_charset(c.into_owned(), body_charset(&msg, &msg.text_body))),
        html_body: msg
            .body_html(0)
            .map(|c| fix_7bit_charset(c.into_owned(), body_charset(&msg, &msg.html_body))),
        attachments: Vec::new(),
        problems: Vec::new(),
    };
    for part in msg.attachments() {
        let content_type = part
            .content_type()
            .map(|c| match c.subtype() {
                Some(sub) => format!("{}/{}", c.ctype(), sub),
                None => c.ctype().to_owned(),
            })
            .unwrap_or_else(|| "application/octet-stream".into());
        p.attachments.push(ParsedAttachment {
            file_name: part.attachment_name().map(str::to_owned),
            content_type,
            data: part.contents().to_vec(),
        });
    }
    remove_nul_from_headers(&mut p);
    if p.message_id.is_none() {
        p.problems.push("no Message-ID header".into());
    }
    if p.from.is_none() {
        p.problems.push("no readable From address".into());
    }
    if p.date.is_none() {
        p.problems.push("no readable Date header".into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_bodies_and_attachments() {
        let raw = b"Message-ID: <a1@example.test>\r\nFrom: \"Ann\" <Ann@Example.test>\r\nTo: bob@example.test, carol@example.test\r\n\
Cc: dan@example.test\r\nSubject: =?UTF-8?B?w5xiZXIgZGFzIEFuZ2Vib3Q=?=\r\nIn-Reply-To: <x0@example.test>\r\nReferences: <r1@example.test> <x0@example.test>\r\n\
Date: Tue, 3 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n--b\r\nContent-Type: application/pdf; name=q.pdf\r\nContent-Disposition: attachment; filename=q.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";
        let p = parse(raw).unwrap();
        assert_eq!(p.message_id.as_deref(), Some("a1@example.test"));
        assert_eq!(p.subject.as_deref(), Some("Über das Angebot"));
        assert_eq!(p.from.as_deref(), Some("ann@example.test"));
        assert_eq!(p.to, ["bob@example.test", "carol@example.test"]);
        assert_eq!(p.in_reply_to.as_deref(), Some("x0@example.test"));
        assert_eq!(p.references, ["r1@example.test", "x0@example.test"]);
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("Grüße"));
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].file_name.as_deref(), Some("q.pdf"));
        assert_eq!(p.attachments[0].content_type, "application/pdf");
        assert_eq!(p.attachments[0].data, b"%PDF-1.4\n");
        assert_eq!(p.date.unwrap().to_rfc3339(), "2026-11-03T09:00:00+00:00");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    /// Found by the fuzz target `mime_to_activity` (fuzz/corpus/mime_to_activity/
    /// nul-in-message-id): a NUL in the Message-ID reached the `message_id` column, which
    /// PostgreSQL refuses, so the message could never be stored.
    #[test]
    fn nul_characters_are_removed_from_header_fields() {
        let raw = b"Message-ID: <encoded-words@copartie\0\0\0\0srusp.example.test>\r\nFrom: =?$SO-6865-1?Q?J=F6rg?= <joerg@example.test>\r\nTo: bob@example.test\r\nSubject: =?UTF-7?B?0J/RgNC40LLQtdGC?= =?ISO-8859-1?Q?_und_Gr=FC=DFe?=\r\nDate: Mon, 2tdGC?= =?ISO-8859-1+0000\rM\n\r\nx\r\n";
        let p = parse(raw).unwrap();
        assert_eq!(
            p.message_id.as_deref(),
            Some("encoded-words@copartiesrusp.example.test")
        );
        let p = parse(b"Message-ID: <\0>\r\nSubject: a\0b\r\nIn-Reply-To: <x\0@y>\r\nReferences: <\0> <r@y>\r\nTo: \"\0\" <c\0@d>\r\n\r\nbody \0").unwrap();
        let fields = [&p.message_id, &p.subject, &p.from, &p.in_reply_to];
        for f in fields
            .into_iter()
            .flatten()
            .chain(&p.to)
            .chain(&p.references)
        {
            assert!(!f.contains('\0') && !f.is_empty(), "{f:?} in {p:?}");
        }
        assert_eq!(p.subject.as_deref(), Some("ab"));
        assert_eq!(
            p.text_body.as_deref(),
            Some("body \0"),
            "bodies keep theirs"
        );
        assert!(
            p.problems.iter().any(|x| x.contains("NUL")),
            "{:?}",
            p.problems
        );
    }

    /// Found by the fuzz target `mime_to_activity` (fuzz/corpus/mime_to_activity/
    /// nul-around-message-id): a `>` before trailing NULs stayed in the Message-ID once the
    /// NULs were removed.
    #[test]
    fn identifiers_are_trimmed_after_removing_nul() {
        let raw = include_bytes!("../tests/data/nul-around-message-id.eml");
        let p = parse(raw).unwrap();
        for id in p
            .message_id
            .iter()
            .chain(&p.in_reply_to)
            .chain(&p.references)
        {
            assert!(!id.is_empty() && !id.contains('\0'), "{id:?}");
            assert!(
                !id.starts_with(['<', '>']) && !id.ends_with(['<', '>']),
                "{id:?}"
            );
        }
        let p = parse(b"Message-ID: <a@b>\0\r\nIn-Reply-To: \0<c@d>\r\n\r\n").unwrap();
        assert_eq!(p.message_id.as_deref(), Some("a@b"));
        assert_eq!(p.in_reply_to.as_deref(), Some("c@d"));
    }

    /// Found by the fuzz target `mime_to_activity` (fuzz/corpus/mime_to_activity/
    /// cr-in-from): a bare CR inside an address was kept, so the sender's address carried a
    /// line break (and would have in a reply's RCPT TO).
    #[test]
    fn addresses_with_control_characters_are_left_out() {
        let raw = b"Message-ID: <a@b.test>\r\nFrom: =?$SO-6865-1?Q?J=F6rg?= <joeded-words@corpus.\0\0: =?UTF-8?B?0J/RgNC40LLQtdGC?= dGC?=\0\x03859-1+0000\rM\n\r\nx\r\n";
        let p = parse(raw).unwrap();
        assert_eq!(p.from, None, "{p:?}");
        assert!(
            p.problems.iter().any(|x| x.contains("From")),
            "{:?}",
            p.problems
        );
        let p = parse(b"From: a@b.test\r\nTo: x\ry@b.test, c@d.test\r\nCc: e\x01@f.test\r\n\r\n")
            .unwrap();
        assert_eq!(p.from.as_deref(), Some("a@b.test"));
        assert_eq!(p.to, ["c@d.test"]);
        assert!(p.cc.is_empty(), "{:?}", p.cc);
    }

    /// Found by the fuzz target `mime_to_activity` (fuzz/corpus/mime_to_activity/
    /// parser-debug-assert): mail-parser's `debug_assert!(false, "Invalid part ID, could not
    /// find multipart.")` fires on this message, so a debug build panicked. Now the message
    /// is unreadable (kept raw as failed) in a debug build and read as usual in a release
    /// build.
    #[test]
    fn a_panic_in_mail_parser_is_an_unreadable_message() {
        let raw = include_bytes!("../tests/data/mail-parser-debug-assert.eml");
        let result = parse(raw);
        if cfg!(debug_assertions) {
            let e = result.expect_err("mail-parser's debug assertion fires in a debug build");
            assert!(e.contains("MIME parser failed"), "{e}");
        }
        let _ = crate::dsn::parse_bounce(raw, Some("bounce"));
    }

    #[test]
    fn malformed_input_is_reported_not_lost() {
        assert!(parse(b"").is_err());
        assert!(parse(b"  \r\n").is_err());
        let p = parse(b"Subject: only a subject\r\n\r\nbody").unwrap();
        assert_eq!(p.problems.len(), 3, "{:?}", p.problems);
    }
}

#[cfg(test)]
mod charset_tests {
    #[test]
    fn iso_2022_jp_bodies_are_decoded() {
        let mut m = b"Message-ID: <jis@example.test>\r\nFrom: a@example.test\r\nSubject: x\r\nDate: Mon, 2 Nov 2026 12:30:00 +0000\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n\r\n".to_vec();
        m.extend_from_slice(b"\x1b$B$3$s$K$A$O\x1b(B\r\n");
        let msg = mail_parser::MessageParser::default().parse(&m).unwrap();
        let cs = super::body_charset(&msg, &msg.text_body);
        assert_eq!(cs, Some("ISO-2022-JP"), "text_body {:?}", msg.text_body);
        let p = super::parse(&m).unwrap();
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("こんにちは"));
        let s =
            super::parse(b"Subject: =?ISO-2022-JP?B?GyRCJDMkcyRLJEEkTxsoQg==?=\r\n\r\nx").unwrap();
        assert_eq!(s.subject.as_deref(), Some("こんにちは"));
    }
}
