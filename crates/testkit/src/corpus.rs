//! A seeded corpus of real-world message shapes for intake and sync tests: plain mail and
//! replies, RFC 2047 encoded words, attachments (one over a small attachment limit), non-UTF-8
//! charsets (ISO-8859-1, windows-1252, Shift_JIS, ISO-2022-JP) and malformed messages (no
//! header/body separator, a broken MIME boundary, no header fields, binary garbage).
//!
//! Every message can be stored by a real server (IMAP APPEND, then read over IMAP or POP3):
//! CR LF line endings, no NUL bytes. Each message that has a Message-ID has its own, of the
//! form `<NAME@corpus.example.test>` ([`message_id`]). What a test should expect of each shape
//! is in the comments here and in `crates/engine/tests/intake.rs`. Dated messages were sent
//! yesterday, relative to the run, so no test depends on the calendar.

/// The attachment limit (KB) the corpus is built around: the `attachments` message carries a
/// 3 KB attachment, over it, and a 9-byte one, under it.
pub const ATTACHMENT_LIMIT_KB: u32 = 2;

/// The Message-ID (without angle brackets) of corpus message `name`, for those that have one.
pub fn message_id(name: &str) -> String {
    format!("{name}@corpus.example.test")
}

/// The day every dated corpus message was sent: yesterday (UTC), in RFC 5322 form, so the
/// corpus is always inside a "process email from" window of the last days, whatever the date
/// of the run (`too-old` keeps its fixed date in 2001).
fn sent_day() -> String {
    (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%a, %-d %b %Y")
        .to_string()
}

fn msg(name: &str, headers: &str, body: &[u8], day: &str) -> Vec<u8> {
    let headers = headers.replace("{day}", day);
    let mut m = format!("Message-ID: <{}>\r\n{headers}\r\n\r\n", message_id(name)).into_bytes();
    m.extend_from_slice(body);
    m
}

/// The corpus, in a fixed order: `(name, raw message)`. Names are unique.
pub fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let day = sent_day();
    let msg = |name: &str, headers: &str, body: &[u8]| msg(name, headers, body, &day);
    // 3 KB of base64 → a 3 KB attachment, over the 2 KB limit.
    let big = "QUFB".repeat(1024);
    // Binary garbage without NUL (servers refuse NUL in a message) and with CR LF only where
    // it is a line break, so the server hands back exactly these bytes.
    let garbage: Vec<u8> = (1u8..=255)
        .filter(|b| *b != b'\r' && *b != b'\n')
        .cycle()
        .take(4000)
        .collect::<Vec<u8>>()
        .chunks(80)
        .flat_map(|line| line.iter().copied().chain(*b"\r\n"))
        .collect();
    vec![
        // Stored; the subject, sender and body read as sent.
        (
            "plain",
            msg(
                "plain",
                "From: Ann <ann@example.test>\r\nTo: bob@example.test\r\nSubject: Hello\r\nDate: {day} 09:00:00 +0000",
                b"Hi Bob\r\n",
            ),
        ),
        // Stored; In-Reply-To and References point at `plain`.
        (
            "reply",
            msg(
                "reply",
                &format!(
                    "From: bob@example.test\r\nTo: ann@example.test\r\nSubject: Re: Hello\r\nIn-Reply-To: <{0}>\r\nReferences: <{0}>\r\nDate: {day} 10:00:00 +0000",
                    message_id("plain")
                ),
                b"Hi Ann\r\n\r\n> Hi Bob\r\n",
            ),
        ),
        // Stored; subject "Привет und Grüße" (UTF-8 B and ISO-8859-1 Q encoded words).
        (
            "encoded-words",
            msg(
                "encoded-words",
                "From: =?ISO-8859-1?Q?J=F6rg?= <joerg@example.test>\r\nTo: bob@example.test\r\nSubject: =?UTF-8?B?0J/RgNC40LLQtdGC?= =?ISO-8859-1?Q?_und_Gr=FC=DFe?=\r\nDate: {day} 11:00:00 +0000",
                b"x\r\n",
            ),
        ),
        // Stored; body "Grüße aus Köln" (8-bit ISO-8859-1).
        (
            "iso-8859-1",
            msg(
                "iso-8859-1",
                "From: a@example.test\r\nTo: b@example.test\r\nSubject: latin1\r\nDate: {day} 11:30:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit",
                b"Gr\xfc\xdfe aus K\xf6ln\r\n",
            ),
        ),
        // Stored; body "Café € 10" (windows-1252, where 0x80 is the euro sign).
        (
            "windows-1252",
            msg(
                "windows-1252",
                "From: a@example.test\r\nTo: b@example.test\r\nSubject: cp1252\r\nDate: {day} 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit",
                b"Caf\xe9 \x80 10\r\n",
            ),
        ),
        // Stored; subject "見積もり", body "こんにちは" (Shift_JIS).
        (
            "shift-jis",
            msg(
                "shift-jis",
                "From: a@example.test\r\nTo: b@example.test\r\nSubject: =?Shift_JIS?B?jKmQz4Lggug=?=\r\nDate: {day} 12:15:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=Shift_JIS\r\nContent-Transfer-Encoding: 8bit",
                b"\x82\xb1\x82\xf1\x82\xc9\x82\xbf\x82\xcd\r\n",
            ),
        ),
        // Stored; subject and body "こんにちは" (ISO-2022-JP, 7-bit with escapes).
        (
            "iso-2022-jp",
            msg(
                "iso-2022-jp",
                "From: a@example.test\r\nTo: b@example.test\r\nSubject: =?ISO-2022-JP?B?GyRCJDMkcyRLJEEkTxsoQg==?=\r\nDate: {day} 12:30:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP",
                b"\x1b$B$3$s$K$A$O\x1b(B\r\n",
            ),
        ),
        // Stored; small.pdf ("%PDF-1.4\n") kept, big.bin (3 KB) over a 2 KB limit dropped
        // with the reason, and then the raw message is not kept.
        (
            "attachments",
            msg(
                "attachments",
                "From: a@example.test\r\nTo: b@example.test\r\nSubject: files\r\nDate: {day} 13:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX",
                format!(
                    "--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=small.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{big}\r\n--XX--\r\n"
                )
                .as_bytes(),
            ),
        ),
        // Stored despite a boundary that never appears (the body is read as it is).
        (
            "broken-mime",
            msg(
                "broken-mime",
                "From: a@example.test\r\nTo: b@example.test\r\nSubject: broken\r\nDate: {day} 14:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=NEVER",
                b"--OTHER\r\nContent-Type: text/plain\r\n\r\nno closing boundary\r\n",
            ),
        ),
        // Header lines running straight into body text without the blank line between: still
        // stored, from what can be read.
        (
            "no-separator",
            format!(
                "Message-ID: <{}>\r\nFrom: a@example.test\r\nTo: b@example.test\r\nSubject: no separator\r\nDate: {day} 14:30:00 +0000\r\nthis line is body text, not a header field\r\nand so is this one\r\n",
                message_id("no-separator")
            )
            .into_bytes(),
        ),
        // Before any "process email from" date of the last 30 days: skipped, by its Date and
        // Received fields (a server's INTERNALDATE for it should be set to 2001 as well).
        (
            "too-old",
            msg(
                "too-old",
                "Received: from mx.example.test by mail.example.test; Mon, 1 Jan 2001 00:00:05 +0000\r\nFrom: a@example.test\r\nTo: b@example.test\r\nSubject: old\r\nDate: Mon, 1 Jan 2001 00:00:00 +0000",
                b"old\r\n",
            ),
        ),
        // No header fields at all: failed (cannot be parsed), kept raw.
        ("no-headers-at-all", b"\r\n\r\n   \r\n".to_vec()),
        // Binary garbage: no Message-ID; recorded, nothing lost.
        ("binary-garbage", garbage),
    ]
}
