//! Bounces: what a delivery status notification says about a message we sent. Pure: no I/O.
//!
//! [`parse_bounce`] reads a raw message (with mail-parser, like [`crate::mime`]) and returns a
//! [`Bounce`] when it is a bounce, `None` otherwise. Two kinds of bounce are understood:
//!
//! # Standard DSNs (RFC 3464, RFC 6533)
//!
//! A delivery status notification is a `multipart/report; report-type=delivery-status`
//! (RFC 3462, now RFC 6522) with three parts: a human-readable explanation, a
//! machine-readable `message/delivery-status` part (`message/global-delivery-status` for
//! internationalized addresses, RFC 6533), and optionally the returned message
//! (`message/rfc822`, `message/global`) or only its headers (`text/rfc822-headers`,
//! `message/global-headers`).
//!
//! mail-parser keeps `message/delivery-status` as an opaque (transfer-decoded) body, so its
//! fields are read here: groups of header-like fields separated by blank lines, the first
//! group about the message (`Reporting-MTA`, `Original-Envelope-Id`, `Arrival-Date`…),
//! each further group about one recipient (`Final-Recipient`,
//! `Original-Recipient`, `Action`, `Status`, `Remote-MTA`, `Diagnostic-Code`…). Field names
//! are case-insensitive and values may be folded over several lines. Any top-level part with
//! a delivery-status type makes the message a DSN, even without the `multipart/report`
//! wrapper (some gateways nest the report in a `multipart/mixed`); a DSN forwarded as an
//! attachment (inside `message/rfc822`) is not one. A report whose delivery-status part names
//! no recipient (truncated, malformed) is read as a non-standard bounce instead.
//!
//! A DSN is also returned when no recipient failed (`Action: delayed`, `delivered`,
//! `relayed`, `expanded`): [`Bounce::failed`] tells the two apart.
//!
//! # Non-standard bounces
//!
//! Some MTAs still send plain text (qmail's "Hi. This is the qmail-send program", Exim's
//! "This message was created automatically by mail delivery software", old Sendmail and
//! Postfix, Exchange "Undeliverable:"). These are recognised by a deliberately conservative
//! heuristic; all of the following must hold:
//!
//! - the sender is a mail system: the `From` address is `MAILER-DAEMON`, `postmaster`,
//!   `Mail Delivery System/Subsystem`… **or** the `Return-Path` is null (`<>`);
//! - the subject reads like a bounce ("Undelivered Mail Returned to Sender", "Mail delivery
//!   failed", "failure notice", "Delivery Status Notification (Failure)", "Returned mail: see
//!   transcript for details", "Undeliverable:", delay warnings…);
//! - unless the sender is a mail system, it is not an auto-reply (out-of-office subject,
//!   `X-Autoreply`, `Auto-Submitted: auto-replied`): RFC 3834 auto-replies also use a null
//!   return path, while MTAs put `Auto-Submitted` on their bounces too;
//! - the text (or the `X-Failed-Recipients` header) names at least one recipient, or the
//!   original message is returned.
//!
//! Failed recipients are read from the first text body, up to the copy of the original
//! message: a line that starts with an address (`<bob@example.test>:` for qmail and Postfix,
//! `<bob@example.test>` for Sendmail, `  bob@example.test` alone for Exim), the lines after it
//! up to a blank line being its details, plus the `X-Failed-Recipients` header (Exim, Gmail).
//! The details give the enhanced status code (`5.1.1`, RFC 3463), else the class of the SMTP
//! reply code (`550` → `5.0.0`), and the diagnostic text from the reply code on.
//!
//! # The original message
//!
//! [`Bounce::original_message_ids`] lists, deduplicated and in this order: the Message-ID of
//! the returned message or headers (attached, or for plain-text bounces a `Message-ID:` line
//! of the copy quoted in the body), the bounce's `X-Original-Message-ID` /
//! `Original-Message-ID` headers (and the same fields in the DSN, which Gmail uses), then the
//! bounce's `In-Reply-To` and `References` (newest first) as a last resort.
//!
//! # VERP
//!
//! With a return path of the form `PREFIX+TOKEN@domain` (variable envelope return path), the
//! bounce is delivered to that address, and [`parse_bounce`] with `verp_prefix =
//! Some(PREFIX)` reports `TOKEN` (case preserved, prefix matched case-insensitively) from the
//! first of `Delivered-To`, `X-Original-To`, `Envelope-To`, `X-Envelope-To`,
//! `X-Delivered-To`, `X-Rcpt-To`, `To`, `Cc` that carries such an address.

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders};

/// What a bounce says about a message we sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounce {
    /// Message-IDs (without angle brackets) of the original message, from the returned
    /// headers (text/rfc822-headers or message/rfc822 part's Message-ID),
    /// X-Original-Message-ID / Original-Message-ID if present, and the bounce's own
    /// In-Reply-To/References as a last resort — in that order, deduplicated.
    pub original_message_ids: Vec<String>,
    /// The recipients the report is about, with their details (for a failure, the failed
    /// ones; a DSN may also list delayed or delivered recipients).
    pub recipients: Vec<BounceRecipient>,
    /// The envelope id (`Original-Envelope-Id`, the ENVID of RFC 3461) if given.
    pub envelope_id: Option<String>,
    /// The VERP token, if the bounce was addressed to a VERP return path (see the module
    /// documentation).
    pub verp_token: Option<String>,
    /// A one-line, human-readable diagnostic for the CRM user, e.g.
    /// `bob@elsewhere.test: 5.1.1 (smtp; 550 5.1.1 <bob@elsewhere.test>: Recipient address
    /// rejected: User unknown)`; for several recipients joined with "; ". A recipient whose
    /// action is not `failed`, or that has no status, has its action before the status
    /// (`delayed 4.4.7`, `failed`). Without any recipient: the bounce's subject.
    pub diagnostic: String,
    /// Whether it is a permanent failure (any recipient `Action: failed` or a `5.x.x`
    /// status) rather than only delayed/relayed/delivered notifications.
    pub failed: bool,
}

/// One recipient of a bounce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BounceRecipient {
    /// `Final-Recipient` (else `Original-Recipient`) without the address type (`rfc822;`),
    /// comments or angle brackets, lowercased like the addresses of [`crate::mime`].
    pub address: String,
    /// `Action`, lowercased: `failed`, `delayed`, `delivered`, `relayed` or `expanded`
    /// (derived from the status when missing). Plain-text bounces say `failed`, or `delayed`
    /// for a delay warning without a permanent status.
    pub action: String,
    /// The enhanced status code (RFC 3463), e.g. `5.1.1`.
    pub status: Option<String>,
    /// `Diagnostic-Code` as given, whitespace collapsed (e.g. `smtp; 550 5.1.1 …`); for
    /// plain-text bounces the server's answer from the reply code on.
    pub diagnostic_code: Option<String>,
    /// The host name of `Remote-MTA`, without the type (`dns;`) or comments.
    pub remote_mta: Option<String>,
}

/// Reads `raw` as a bounce. `None` when the message is not a bounce (or not a message).
///
/// `verp_prefix`: the local part before `+` of our VERP return paths, if we use them (see the
/// module documentation).
pub fn parse_bounce(raw: &[u8], verp_prefix: Option<&str>) -> Option<Bounce> {
    // A panic in mail-parser: not read as a bounce (see `mime::guarded`).
    crate::mime::guarded(|| parse_bounce_unguarded(raw, verp_prefix)).flatten()
}

fn parse_bounce_unguarded(raw: &[u8], verp_prefix: Option<&str>) -> Option<Bounce> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let msg = MessageParser::default().parse(raw)?;
    if msg.headers().is_empty() {
        return None;
    }
    let mut bounce = dsn_bounce(&msg).or_else(|| text_bounce(&msg))?;
    bounce.verp_token = verp_prefix.and_then(|p| verp_token(&msg, p));
    Some(bounce)
}

// ---------------------------------------------------------------------------------------------
// Standard DSNs

/// A bounce from a `message/delivery-status` or `message/global-delivery-status` part;
/// `None` if there is none or it names no recipient.
fn dsn_bounce(msg: &Message<'_>) -> Option<Bounce> {
    let part = msg.parts.iter().skip(1).find(|p| {
        p.is_content_type("message", "delivery-status")
            || p.is_content_type("message", "global-delivery-status")
    })?;
    let text = String::from_utf8_lossy(part.contents());
    let groups = parse_dsn_fields(&text);
    let is_recipient_group = |g: &DsnFields| {
        field(g, "final-recipient")
            .or(field(g, "original-recipient"))
            .is_some()
    };

    let mut ids = Ids::default();
    ids.extend(returned_message_ids(msg));
    ids.extend(original_id_headers(msg));
    // Per-message fields, looked up in every group: some MTAs omit the blank line after them.
    let mut envelope_id = None;
    for g in &groups {
        for name in ["x-original-message-id", "original-message-id"] {
            ids.extend(field(g, name).map(str::to_owned));
        }
        if envelope_id.is_none() {
            envelope_id = field(g, "original-envelope-id").map(str::to_owned);
        }
    }
    ids.extend(reply_ids(msg));

    let mut recipients = Vec::new();
    for g in groups.iter().filter(|g| is_recipient_group(g)) {
        let Some(address) = field(g, "final-recipient")
            .or(field(g, "original-recipient"))
            .map(|v| clean_address(without_type(v)))
            .filter(|a| !a.is_empty())
        else {
            continue;
        };
        let status = field(g, "status").and_then(enhanced_status);
        // An action that is none of RFC 3464's counts as missing.
        let action = field(g, "action")
            .and_then(|a| a.split_whitespace().next())
            .map(str::to_ascii_lowercase)
            .filter(|a| ACTIONS.contains(&a.as_str()))
            .unwrap_or_else(|| action_for_status(status.as_deref()).to_owned());
        recipients.push(BounceRecipient {
            address,
            action,
            status,
            diagnostic_code: field(g, "diagnostic-code").map(str::to_owned),
            remote_mta: field(g, "remote-mta")
                .map(|v| {
                    strip_comments(without_type(v))
                        .trim()
                        .trim_end_matches('.')
                        .to_owned()
                })
                .filter(|h| !h.is_empty()),
        });
    }
    if recipients.is_empty() {
        return None;
    }
    Some(finish(msg, ids, recipients, envelope_id))
}

/// The fields of one group of a delivery-status body: lowercased names, unfolded values with
/// whitespace collapsed.
type DsnFields = Vec<(String, String)>;

/// Splits a delivery-status body (RFC 3464 §2.1) into its groups of fields: groups are
/// separated by blank lines, a line starting with white space continues the previous field,
/// and lines that are not `name: value` are skipped.
fn parse_dsn_fields(text: &str) -> Vec<DsnFields> {
    let mut groups = Vec::new();
    let mut group: DsnFields = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !group.is_empty() {
                groups.push(std::mem::take(&mut group));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(char::is_whitespace) {
                group.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    for (_, value) in groups.iter_mut().flatten() {
        *value = one_line(value);
    }
    groups
}

/// The first non-empty value of field `name` (lowercase) in a group.
fn field<'a>(group: &'a DsnFields, name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(n, v)| n == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// `rfc822; bob@example.test` → `bob@example.test`, `dns; mx.example.test` → `mx.example.test`.
fn without_type(value: &str) -> &str {
    value.split_once(';').map_or(value, |(_, v)| v).trim()
}

// ---------------------------------------------------------------------------------------------
// Non-standard bounces

/// A bounce recognised by the heuristic described in the module documentation.
fn text_bounce(msg: &Message<'_>) -> Option<Bounce> {
    let subject = msg.subject().unwrap_or_default().to_lowercase();
    if !BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s)) {
        return None;
    }
    let daemon = from_mail_system(msg);
    if !daemon && !null_return_path(msg) {
        return None;
    }
    if is_auto_reply(msg, &subject, daemon) {
        return None;
    }
    let text = msg.body_text(0).unwrap_or_default();
    let delay = is_delay_warning(&subject, &text);

    let mut recipients = recipients_from_text(&text, delay);
    for value in raw_headers(msg, "x-failed-recipients") {
        for a in value.split(',').map(clean_address) {
            if looks_like_address(&a) && !recipients.iter().any(|r| r.address == a) {
                recipients.push(BounceRecipient {
                    address: a,
                    action: (if delay { "delayed" } else { "failed" }).to_owned(),
                    ..Default::default()
                });
            }
        }
    }

    let mut ids = Ids::default();
    ids.extend(returned_message_ids(msg));
    ids.extend(quoted_message_ids(&text));
    if recipients.is_empty() && ids.0.is_empty() {
        return None;
    }
    ids.extend(original_id_headers(msg));
    ids.extend(reply_ids(msg));
    let mut bounce = finish(msg, ids, recipients, None);
    if bounce.recipients.is_empty() {
        bounce.failed = !delay;
    }
    Some(bounce)
}

/// Substrings of (lowercased) subjects that MTAs give their bounces and delay warnings.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliverable",
    "undelivered",
    "non-delivery",
    "nondelivery",
    "delivery status notification",
    "delivery notification",
    "delivery failure",
    "delivery failed",
    "delivery has failed",
    "delivery problem",
    "failure notice",
    "failed delivery",
    "returned mail",
    "returning message to sender",
    "could not be delivered",
    "mail system error",
    "delayed mail",
    "delivery delayed",
    "warning: could not send message",
    "warning: message",
];

/// Subjects of out-of-office and other auto-replies (lowercased).
const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "out of office",
    "out of the office",
    "automatic reply",
    "auto reply",
    "auto-reply",
    "autoreply",
    "auto response",
    "auto-response",
    "autoresponse",
    "vacation",
    "away from the office",
    "abwesend",
    "abwesenheit",
    "automatische antwort",
    "réponse automatique",
    "respuesta automática",
];

/// How the (lowercased) local parts of mail-system senders begin.
const MAIL_SYSTEM_LOCAL_PARTS: &[&str] = &[
    "mailer-daemon",
    "mailer_daemon",
    "mailerdaemon",
    "mail-daemon",
    "maildaemon",
    "postmaster",
    "microsoftexchange",
];

/// Whether `From` is a mail system: `MAILER-DAEMON@…`, `postmaster@…`, or a display name such
/// as "Mail Delivery System" / "Mail Delivery Subsystem".
fn from_mail_system(msg: &Message<'_>) -> bool {
    let Some(from) = msg.from() else {
        return false;
    };
    from.iter().any(|a| {
        let local = a
            .address()
            .map(|s| s.split('@').next().unwrap_or_default().to_ascii_lowercase())
            .unwrap_or_default();
        let name = a.name().unwrap_or_default().to_lowercase();
        MAIL_SYSTEM_LOCAL_PARTS.iter().any(|p| local.starts_with(p))
            || name.contains("mail delivery")
            || name.contains("mailer-daemon")
            || name.contains("mailer daemon")
    })
}

/// Whether the (topmost) `Return-Path` is the null path `<>` (or the `MAILER-DAEMON` some
/// delivery agents write for it).
fn null_return_path(msg: &Message<'_>) -> bool {
    raw_headers(msg, "return-path").next().is_some_and(|v| {
        let v = v.trim().trim_matches(['<', '>']).trim();
        v.is_empty() || v.eq_ignore_ascii_case("mailer-daemon")
    })
}

/// Out-of-office replies and other RFC 3834 auto-replies. Never when the sender is a mail
/// system: MTAs mark their bounces `Auto-Submitted: auto-replied` too, and a bounce's subject
/// often quotes the original one (`Undeliverable: Out of office next week`).
fn is_auto_reply(msg: &Message<'_>, subject: &str, from_mail_system: bool) -> bool {
    if from_mail_system {
        return false;
    }
    let has = |name: &str| raw_headers(msg, name).next().is_some();
    AUTO_REPLY_SUBJECTS.iter().any(|s| subject.contains(s))
        || has("x-autoreply")
        || has("x-autorespond")
        || raw_headers(msg, "auto-submitted")
            .any(|v| v.trim().to_ascii_lowercase().starts_with("auto-replied"))
}

/// Whether a plain-text bounce is only a warning that delivery is delayed.
fn is_delay_warning(subject: &str, text: &str) -> bool {
    if ["delay", "warning", "still being retried"]
        .iter()
        .any(|s| subject.contains(s))
    {
        return true;
    }
    let text = text.to_lowercase();
    [
        "has not yet been delivered",
        "this is a warning message only",
        "will continue to try",
        "will keep trying",
        "delivery attempts will continue",
        "no action is required on your part",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// The recipients a plain-text bounce lists before its copy of the original message.
fn recipients_from_text(text: &str, delay: bool) -> Vec<BounceRecipient> {
    let mut out: Vec<BounceRecipient> = Vec::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    let mut flush = |current: &mut Option<(String, Vec<&str>)>| {
        if let Some((address, details)) = current.take() {
            let r = recipient_from_details(address, &details.join(" "), delay);
            match out.iter_mut().find(|o| o.address == r.address) {
                // Mentioned twice (Exchange): keep the more precise details.
                Some(o)
                    if o.status.is_none()
                        && (r.status.is_some() || o.diagnostic_code.is_none()) =>
                {
                    *o = r
                }
                Some(_) => {}
                None => out.push(r),
            }
        }
    };
    for line in text.lines() {
        if is_copy_marker(line) {
            break;
        }
        if let Some((address, rest)) = recipient_line(line) {
            flush(&mut current);
            let details = if rest.is_empty() {
                Vec::new()
            } else {
                vec![rest]
            };
            current = Some((address, details));
        } else if line.trim().is_empty() {
            flush(&mut current);
        } else if let Some((_, details)) = current.as_mut() {
            details.push(line.trim());
        }
    }
    flush(&mut current);
    out
}

/// The line that starts the copy of the original message (qmail's "--- Below this line is a
/// copy of the message.", Exim's "------ This is a copy of the message, including all the
/// headers. ------", "----- Original message -----"…) or its first quoted header field.
fn is_copy_marker(line: &str) -> bool {
    let lower = line.trim().to_lowercase();
    if lower.starts_with("---") || lower.starts_with("===") || lower.starts_with("___") {
        return [
            "copy",
            "original",
            "returned message",
            "message header",
            "headers of",
        ]
        .iter()
        .any(|s| lower.contains(s));
    }
    !line.starts_with([' ', '\t'])
        && (lower.starts_with("return-path:") || lower.starts_with("received:"))
}

/// A line naming a recipient: `<addr>`, `<addr>: details`, `<addr>... details`, `addr` or
/// `addr: details`, white space around allowed. Returns the address and the details.
fn recipient_line(line: &str) -> Option<(String, &str)> {
    let t = line.trim();
    let (address, rest, angle) = if let Some(r) = t.strip_prefix('<') {
        let end = r.find('>')?;
        (&r[..end], &r[end + 1..], true)
    } else {
        let end = t
            .find(|c: char| c == ':' || c.is_whitespace())
            .unwrap_or(t.len());
        (&t[..end], &t[end..], false)
    };
    if !looks_like_address(address) {
        return None;
    }
    let rest = rest.trim_start();
    let rest = if rest.is_empty() {
        rest
    } else if let Some(r) = rest.strip_prefix(':') {
        r.trim()
    } else if let Some(r) = rest.strip_prefix("...").filter(|_| angle) {
        r.trim()
    } else {
        return None;
    };
    Some((address.to_lowercase(), rest))
}

/// A recipient of a plain-text bounce from the text that follows its address.
fn recipient_from_details(address: String, details: &str, delay: bool) -> BounceRecipient {
    let details = one_line(details);
    let reply = smtp_reply_code(&details);
    let status =
        enhanced_status(&details).or_else(|| reply.map(|(_, code)| format!("{}.0.0", &code[..1])));
    let diagnostic_code = match reply {
        // `returned '550 …'`: without the closing quote.
        Some((at, _)) => Some(match details[..at].chars().last() {
            Some(q @ ('\'' | '"')) => details[at..].trim_end_matches(q),
            _ => &details[at..],
        }),
        None if !details.is_empty() => Some(details.as_str()),
        None => None,
    }
    .map(|d| truncate(d, 300));
    let permanent = status.as_deref().is_some_and(|s| s.starts_with('5'));
    BounceRecipient {
        address,
        action: (if delay && !permanent {
            "delayed"
        } else {
            "failed"
        })
        .to_owned(),
        status,
        diagnostic_code,
        remote_mta: remote_host(&details),
    }
}

/// The host after the word "host" (Exim `host mx.example.test [192.0.2.1]`, Postfix
/// `host mx.example.test[192.0.2.1] said:`).
fn remote_host(details: &str) -> Option<String> {
    let mut words = details.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("host") {
            let host = words
                .next()?
                .split('[')
                .next()?
                .trim_end_matches([':', '.', ',']);
            if host.contains('.')
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return Some(host.to_ascii_lowercase());
            }
        }
    }
    None
}

/// Message-IDs on `Message-ID:` lines in a plain-text bounce (the quoted original message),
/// also when quoted with `>` or folded onto the next line.
fn quoted_message_ids(text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start_matches(['>', ' ', '\t']);
        let Some(value) = t
            .get(..11)
            .filter(|name| name.eq_ignore_ascii_case("message-id:"))
            .and_then(|_| t.get(11..))
        else {
            continue;
        };
        let mut value = value.trim().to_owned();
        if value.is_empty() {
            value = lines.next().unwrap_or_default().trim().to_owned();
        }
        let id = match value.split_once('<') {
            Some((_, r)) => r.split('>').next().unwrap_or_default(),
            None => value.split_whitespace().next().unwrap_or_default(),
        };
        ids.push(id.to_owned());
    }
    ids
}

// ---------------------------------------------------------------------------------------------
// Shared

/// Message-IDs, deduplicated in order of arrival, without angle brackets.
#[derive(Default)]
struct Ids(Vec<String>);

impl Ids {
    fn extend(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            let id = id.trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace());
            // No control characters either: a NUL would make the look-up by Message-ID
            // fail on PostgreSQL, and none is in a Message-ID we sent.
            if !id.is_empty()
                && !id.contains(|c: char| c.is_whitespace() || c.is_control())
                && !self.0.iter().any(|i| i == id)
            {
                self.0.push(id.to_owned());
            }
        }
    }
}

/// The Message-IDs of returned messages or headers attached to the bounce.
fn returned_message_ids(msg: &Message<'_>) -> Vec<String> {
    let mut ids = Vec::new();
    for part in msg.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
        let is_message =
            ct.ctype().eq_ignore_ascii_case("message") && (sub == "rfc822" || sub == "global");
        let is_headers = sub == "rfc822-headers" || sub == "global-headers";
        if !is_message && !is_headers {
            continue;
        }
        let id = match part.message() {
            Some(m) => m.message_id().map(str::to_owned),
            None => {
                let bytes = part.contents();
                let start = bytes
                    .iter()
                    .position(|b| !matches!(b, b'\r' | b'\n'))
                    .unwrap_or(bytes.len());
                MessageParser::default()
                    .parse_headers(&bytes[start..])
                    .and_then(|m| m.message_id().map(str::to_owned))
            }
        };
        ids.extend(id);
    }
    ids
}

/// The bounce's `X-Original-Message-ID` and `Original-Message-ID` headers.
fn original_id_headers(msg: &Message<'_>) -> Vec<String> {
    ["x-original-message-id", "original-message-id"]
        .iter()
        .flat_map(|name| raw_headers(msg, name))
        .flat_map(angle_ids)
        .collect()
}

/// The bounce's `In-Reply-To`, then its `References` newest first.
fn reply_ids(msg: &Message<'_>) -> Vec<String> {
    let list = |v: &HeaderValue<'_>| match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    };
    let mut ids = list(msg.in_reply_to());
    ids.extend(list(msg.references()).into_iter().rev());
    ids
}

/// `<a@x> <b@y>` → `a@x`, `b@y`; a value without brackets is taken whole.
fn angle_ids(value: &str) -> Vec<String> {
    if !value.contains('<') {
        return vec![value.trim().to_owned()];
    }
    value
        .split('<')
        .skip(1)
        .filter_map(|s| s.split_once('>').map(|(id, _)| id.trim().to_owned()))
        .collect()
}

/// The raw values of the top-level header fields called `name` (case-insensitive), in order.
fn raw_headers<'a>(msg: &'a Message<'_>, name: &'a str) -> impl Iterator<Item = &'a str> {
    msg.headers_raw()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The bounce from its parts: failure and the one-line diagnostic follow the recipients.
fn finish(
    msg: &Message<'_>,
    ids: Ids,
    recipients: Vec<BounceRecipient>,
    envelope_id: Option<String>,
) -> Bounce {
    let failed = recipients
        .iter()
        .any(|r| r.action == "failed" || r.status.as_deref().is_some_and(|s| s.starts_with('5')));
    let diagnostic = if recipients.is_empty() {
        one_line(msg.subject().unwrap_or("delivery status notification"))
    } else {
        recipients
            .iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    Bounce {
        original_message_ids: ids.0,
        recipients,
        envelope_id,
        verp_token: None,
        diagnostic,
        failed,
    }
}

/// `bob@example.test: 5.1.1 (smtp; 550 …)`, `bob@example.test: delayed 4.4.7 (…)`,
/// `bob@example.test: failed (…)` without a status.
fn describe(r: &BounceRecipient) -> String {
    let mut s = format!("{}:", r.address);
    if r.action != "failed" || r.status.is_none() {
        s.push(' ');
        s.push_str(&r.action);
    }
    if let Some(status) = &r.status {
        s.push(' ');
        s.push_str(status);
    }
    if let Some(d) = &r.diagnostic_code {
        s.push_str(" (");
        s.push_str(d);
        s.push(')');
    }
    s
}

/// The values of a DSN's `Action` field (RFC 3464 §2.3.3).
const ACTIONS: &[&str] = &["failed", "delayed", "delivered", "relayed", "expanded"];

/// The action a DSN implies by its status when it has no `Action` field.
fn action_for_status(status: Option<&str>) -> &'static str {
    match status.and_then(|s| s.chars().next()) {
        Some('2') => "delivered",
        Some('4') => "delayed",
        _ => "failed",
    }
}

/// The first RFC 3463 enhanced status code (`[245].\d{1,3}.\d{1,3}`) standing alone in `s`.
fn enhanced_status(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i > start && i - start <= 3).then_some(i)
    };
    for i in 0..b.len() {
        if !matches!(b[i], b'2' | b'4' | b'5') || b.get(i + 1) != Some(&b'.') {
            continue;
        }
        if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.') {
            continue;
        }
        let Some(j) = digits(i + 2) else { continue };
        if b.get(j) != Some(&b'.') {
            continue;
        }
        let Some(k) = digits(j + 1) else { continue };
        if b.get(k)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.')
        {
            continue;
        }
        return Some(s[i..k].to_owned());
    }
    None
}

/// The first SMTP reply code (`[245]\d\d` followed by a space, `-` or the end) standing alone
/// in `s`: its byte offset and the code.
fn smtp_reply_code(s: &str) -> Option<(usize, &str)> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(2)).find_map(|i| {
        let ok = matches!(b[i], b'2' | b'4' | b'5')
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && (i == 0 || matches!(b[i - 1], b' ' | b':' | b'(' | b'#' | b'\'' | b'"'))
            && b.get(i + 3).is_none_or(|c| matches!(c, b' ' | b'-'));
        ok.then(|| (i, &s[i..i + 3]))
    })
}

/// Whether `s` reads as a mailbox address `local@domain`.
fn looks_like_address(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && s.len() <= 254
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"@".contains(c))
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
        && !domain.starts_with(['.', '-'])
}

/// An address from a DSN field or header: comments, white space and angle brackets removed,
/// lowercased.
fn clean_address(value: &str) -> String {
    strip_comments(value)
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_lowercase()
}

/// `value` without its `(comments)` (RFC 5322 §3.2.2; nesting allowed).
fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// `s` on one line: runs of white space (and control characters) become one space.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most `max` characters of `s`, with "…" when cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// The VERP token of the first `prefix+TOKEN@domain` address in the delivery headers.
fn verp_token(msg: &Message<'_>, prefix: &str) -> Option<String> {
    const HEADERS: &[&str] = &[
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-to",
        "x-delivered-to",
        "x-rcpt-to",
        "to",
        "cc",
    ];
    let prefix = prefix.trim();
    if prefix.is_empty() {
        return None;
    }
    HEADERS
        .iter()
        .flat_map(|h| raw_headers(msg, h))
        .find_map(|value| {
            value
                .split(|c: char| c.is_whitespace() || "<>,;\"'()".contains(c))
                .find_map(|word| {
                    let (local, domain) = word.rsplit_once('@')?;
                    let head = local.get(..prefix.len())?;
                    let token = local.get(prefix.len()..)?.strip_prefix('+')?;
                    (head.eq_ignore_ascii_case(prefix) && !token.is_empty() && !domain.is_empty())
                        .then(|| token.to_owned())
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Postfix bounce, as Postfix's bounce(8) writes it (here: the test environment's
    /// transport that refuses all outbound mail).
    const POSTFIX_DSN: &str = "Return-Path: <>\r
X-Original-To: bounce+act-01932f4e7b1c@serversync.example.test\r
Delivered-To: bounce+act-01932f4e7b1c@serversync.example.test\r
Received: by localhost (Postfix)\r
\tid 4F1B2C3D4E; Tue,  3 Nov 2026 10:00:01 +0000 (UTC)\r
Date: Tue,  3 Nov 2026 10:00:01 +0000 (UTC)\r
From: MAILER-DAEMON@localhost (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: bounce+act-01932f4e7b1c@serversync.example.test\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"4F1B2C3D4E.1793700001/localhost\"\r
Content-Transfer-Encoding: 8bit\r
Message-Id: <20261103100001.5A6B7C8D9E@localhost>\r
\r
This is a MIME-encapsulated message.\r
\r
--4F1B2C3D4E.1793700001/localhost\r
Content-Description: Notification\r
Content-Type: text/plain; charset=us-ascii\r
\r
This is the mail system at host localhost.\r
\r
I'm sorry to have to inform you that your message could not\r
be delivered to one or more recipients. It's attached below.\r
\r
For further assistance, please send mail to postmaster.\r
\r
If you do so, please include this problem report. You can\r
delete your own text from the attached returned message.\r
\r
                   The mail system\r
\r
<nobody@elsewhere.test>: outbound mail is disabled in the serversync test\r
    environment\r
\r
--4F1B2C3D4E.1793700001/localhost\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; localhost\r
X-Postfix-Queue-ID: 4F1B2C3D4E\r
X-Postfix-Sender: rfc822; bounce+act-01932f4e7b1c@serversync.example.test\r
Arrival-Date: Tue,  3 Nov 2026 10:00:00 +0000 (UTC)\r
\r
Final-Recipient: rfc822; nobody@elsewhere.test\r
Original-Recipient: rfc822;nobody@elsewhere.test\r
Action: failed\r
Status: 5.0.0\r
Diagnostic-Code: X-Postfix; outbound mail is disabled in the serversync test environment\r
\r
--4F1B2C3D4E.1793700001/localhost\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
\r
Return-Path: <bounce+act-01932f4e7b1c@serversync.example.test>\r
Received: from serversync.example.test (unknown [192.0.2.10])\r
\tby localhost (Postfix) with ESMTPS id 4F1B2C3D4E\r
\tfor <nobody@elsewhere.test>; Tue,  3 Nov 2026 10:00:00 +0000 (UTC)\r
Message-ID: <act-01932f4e-7b1c-7d2e-9f30-4a5b6c7d8e9f@serversync.example.test>\r
From: Ann Seller <ann@serversync.example.test>\r
To: nobody@elsewhere.test\r
Subject: Your quote\r
Date: Tue, 3 Nov 2026 10:00:00 +0000\r
MIME-Version: 1.0\r
Content-Type: text/plain; charset=utf-8\r
\r
--4F1B2C3D4E.1793700001/localhost--\r
";

    #[test]
    fn postfix_dsn() {
        let b = parse_bounce(POSTFIX_DSN.as_bytes(), None).expect("a bounce");
        assert!(b.failed);
        assert_eq!(
            b.original_message_ids,
            ["act-01932f4e-7b1c-7d2e-9f30-4a5b6c7d8e9f@serversync.example.test"]
        );
        assert_eq!(
            b.recipients,
            [BounceRecipient {
                address: "nobody@elsewhere.test".into(),
                action: "failed".into(),
                status: Some("5.0.0".into()),
                diagnostic_code: Some(
                    "X-Postfix; outbound mail is disabled in the serversync test environment"
                        .into()
                ),
                remote_mta: None,
            }]
        );
        assert_eq!(
            b.diagnostic,
            "nobody@elsewhere.test: 5.0.0 (X-Postfix; outbound mail is disabled in the \
             serversync test environment)"
        );
        assert_eq!(b.envelope_id, None);
        assert_eq!(b.verp_token, None, "no VERP prefix asked for");
    }

    /// Gmail's bounce: the report wraps a multipart/related explanation, the Diagnostic-Code
    /// is folded, the original message is returned whole.
    const GMAIL_DSN: &str = "Delivered-To: ann@serversync.example.test\r
Received: by 2002:a05:6a10:1234:b0:5a1:2b3c:4d5e with SMTP id abc123csp456789pxb;\r
        Tue, 3 Nov 2026 02:00:05 -0800 (PST)\r
Return-Path: <>\r
Received: from mail-sor-f69.google.com (mail-sor-f69.google.com. [209.85.220.69])\r
        by mx.google.com with SMTPS id x12sor1234567wrq.0.2026.11.03.02.00.05\r
        for <ann@serversync.example.test>\r
        (Google Transport Security);\r
        Tue, 03 Nov 2026 02:00:05 -0800 (PST)\r
X-Failed-Recipients: bob@elsewhere.test\r
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r
To: ann@serversync.example.test\r
Auto-Submitted: auto-replied\r
Subject: Delivery Status Notification (Failure)\r
References: <act-0193aaaa-0000-7000-8000-000000000001@serversync.example.test>\r
In-Reply-To: <act-0193aaaa-0000-7000-8000-000000000001@serversync.example.test>\r
X-Original-Message-ID: <act-0193aaaa-0000-7000-8000-000000000001@serversync.example.test>\r
Message-ID: <6543a1b2.050a0220.abcde.1234.GMR@mx.google.com>\r
Date: Tue, 03 Nov 2026 02:00:05 -0800 (PST)\r
MIME-Version: 1.0\r
Content-Type: multipart/report; boundary=\"000000000000e1f2a3060b1c2d3e\"; report-type=delivery-status\r
\r
--000000000000e1f2a3060b1c2d3e\r
Content-Type: multipart/related; boundary=\"000000000000e1f4b5060b1c2d4f\"\r
\r
--000000000000e1f4b5060b1c2d4f\r
Content-Type: multipart/alternative; boundary=\"000000000000e1f4b6060b1c2d50\"\r
\r
--000000000000e1f4b6060b1c2d50\r
Content-Type: text/plain; charset=\"UTF-8\"\r
\r
\r
** Address not found **\r
\r
Your message wasn't delivered to bob@elsewhere.test because the address couldn't be found, or is unable to receive mail.\r
\r
Learn more here: https://support.google.com/mail/?p=NoSuchUser\r
\r
The response was:\r
\r
550 5.1.1 <bob@elsewhere.test>: Recipient address rejected: User unknown in virtual mailbox table\r
\r
--000000000000e1f4b6060b1c2d50\r
Content-Type: text/html; charset=\"UTF-8\"\r
\r
<html><body><h1>Address not found</h1><p>Your message wasn't delivered to <b>bob@elsewhere.test</b>.</p></body></html>\r
\r
--000000000000e1f4b6060b1c2d50--\r
--000000000000e1f4b5060b1c2d4f--\r
--000000000000e1f2a3060b1c2d3e\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; googlemail.com\r
Received-From-MTA: dns; ann@serversync.example.test\r
Arrival-Date: Tue, 03 Nov 2026 02:00:04 -0800 (PST)\r
X-Original-Message-ID: <act-0193aaaa-0000-7000-8000-000000000001@serversync.example.test>\r
Original-Envelope-Id: env-0193aaaa\r
\r
final-recipient: rfc822; bob@elsewhere.test\r
ACTION: failed\r
Status: 5.1.1\r
Remote-MTA: dns; mx.elsewhere.test. (192.0.2.25, the server for the domain\r
 elsewhere.test.)\r
Diagnostic-Code: smtp; 550 5.1.1 <bob@elsewhere.test>: Recipient address rejected: User\r
 unknown in virtual mailbox table\r
Last-Attempt-Date: Tue, 03 Nov 2026 02:00:05 -0800 (PST)\r
\r
--000000000000e1f2a3060b1c2d3e\r
Content-Type: message/rfc822\r
\r
Return-Path: <ann@serversync.example.test>\r
Received: from crm.serversync.example.test ([192.0.2.10])\r
        by smtp.gmail.com with ESMTPSA id y2sm1234567wrq.1.2026.11.03.02.00.04\r
        for <bob@elsewhere.test>\r
        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);\r
        Tue, 03 Nov 2026 02:00:04 -0800 (PST)\r
Message-ID: <act-0193aaaa-0000-7000-8000-000000000001@serversync.example.test>\r
From: Ann Seller <ann@serversync.example.test>\r
To: Bob <bob@elsewhere.test>\r
Subject: Your quote\r
Date: Tue, 3 Nov 2026 11:00:04 +0100\r
In-Reply-To: <bob-earlier@elsewhere.test>\r
MIME-Version: 1.0\r
Content-Type: text/plain; charset=utf-8\r
\r
Hello Bob, here is the quote.\r
\r
--000000000000e1f2a3060b1c2d3e--\r
";

    #[test]
    fn gmail_dsn_with_folded_fields_and_returned_message() {
        let b = parse_bounce(GMAIL_DSN.as_bytes(), None).expect("a bounce");
        assert!(b.failed);
        assert_eq!(
            b.original_message_ids,
            ["act-0193aaaa-0000-7000-8000-000000000001@serversync.example.test"]
        );
        assert_eq!(b.envelope_id.as_deref(), Some("env-0193aaaa"));
        assert_eq!(b.recipients.len(), 1);
        let r = &b.recipients[0];
        assert_eq!(r.address, "bob@elsewhere.test");
        assert_eq!(r.action, "failed");
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(r.remote_mta.as_deref(), Some("mx.elsewhere.test"));
        assert_eq!(
            r.diagnostic_code.as_deref(),
            Some(
                "smtp; 550 5.1.1 <bob@elsewhere.test>: Recipient address rejected: User unknown \
                 in virtual mailbox table"
            )
        );
        assert_eq!(
            b.diagnostic,
            "bob@elsewhere.test: 5.1.1 (smtp; 550 5.1.1 <bob@elsewhere.test>: Recipient \
             address rejected: User unknown in virtual mailbox table)"
        );
    }

    /// Postfix's delay warning: a DSN about a message still queued.
    const DELAYED_DSN: &str = "Return-Path: <>\r
Date: Tue,  3 Nov 2026 14:00:00 +0000 (UTC)\r
From: MAILER-DAEMON@mail.serversync.example.test (Mail Delivery System)\r
Subject: Delayed Mail (still being retried)\r
To: ann@serversync.example.test\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"7A8B9C0D1E.1793714400/mail.serversync.example.test\"\r
Content-Transfer-Encoding: 8bit\r
Message-Id: <20261103140000.7A8B9C0D1F@mail.serversync.example.test>\r
\r
This is a MIME-encapsulated message.\r
\r
--7A8B9C0D1E.1793714400/mail.serversync.example.test\r
Content-Description: Notification\r
Content-Type: text/plain; charset=us-ascii\r
\r
This is the mail system at host mail.serversync.example.test.\r
\r
####################################################################\r
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r
####################################################################\r
\r
Your message could not be delivered for more than 4 hour(s).\r
It will be retried until it is 5 day(s) old.\r
\r
                   The mail system\r
\r
<carol@slow.example.test>: connect to mx.slow.example.test[192.0.2.77]:25:\r
    Connection timed out\r
\r
--7A8B9C0D1E.1793714400/mail.serversync.example.test\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mail.serversync.example.test\r
X-Postfix-Queue-ID: 7A8B9C0D1E\r
X-Postfix-Sender: rfc822; ann@serversync.example.test\r
Arrival-Date: Tue,  3 Nov 2026 10:00:00 +0000 (UTC)\r
\r
Final-Recipient: rfc822; carol@slow.example.test\r
Original-Recipient: rfc822;carol@slow.example.test\r
Action: delayed\r
Status: 4.4.7\r
Diagnostic-Code: X-Postfix; connect to mx.slow.example.test[192.0.2.77]:25:\r
    Connection timed out\r
Will-Retry-Until: Sun,  8 Nov 2026 10:00:00 +0000 (UTC)\r
\r
--7A8B9C0D1E.1793714400/mail.serversync.example.test\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
\r
Message-ID: <act-0193bbbb@serversync.example.test>\r
From: Ann Seller <ann@serversync.example.test>\r
To: carol@slow.example.test\r
Subject: Follow-up\r
\r
--7A8B9C0D1E.1793714400/mail.serversync.example.test--\r
";

    /// Found by the fuzz target `dsn` (fuzz/corpus/dsn/brackets-around-space): brackets
    /// behind white space stayed on a Message-ID.
    #[test]
    fn message_ids_lose_every_bracket_and_space_around_them() {
        let mut ids = Ids::default();
        ids.extend(["<< <<a@b.test> >".to_owned(), " <c@d.test>".to_owned()]);
        assert_eq!(ids.0, ["a@b.test", "c@d.test"]);
    }

    /// Found by the fuzz target `dsn` (fuzz/corpus/dsn/unknown-action): an `Action` that is
    /// none of RFC 3464's was reported as the recipient's action.
    #[test]
    fn unknown_actions_are_derived_from_the_status() {
        let (head, tail) = DELAYED_DSN.split_once("Action: delayed").unwrap();
        let mut raw = head.as_bytes().to_vec();
        raw.extend_from_slice(b"Action: del\x9f\x86ed");
        raw.extend_from_slice(tail.as_bytes());
        let b = parse_bounce(&raw, None).expect("a report");
        assert_eq!(b.recipients[0].action, "delayed", "from 4.4.7");
        assert!(!b.failed);
        let raw = DELAYED_DSN
            .replace("Action: delayed", "Action: bounced")
            .replace("Status: 4.4.7", "Status: 5.1.1");
        let b = parse_bounce(raw.as_bytes(), None).expect("a report");
        assert_eq!(b.recipients[0].action, "failed", "from 5.1.1");
        assert!(b.failed);
    }

    #[test]
    fn delayed_only_dsn_is_not_a_failure() {
        let b = parse_bounce(DELAYED_DSN.as_bytes(), None).expect("a report");
        assert!(!b.failed);
        assert_eq!(
            b.original_message_ids,
            ["act-0193bbbb@serversync.example.test"]
        );
        assert_eq!(b.recipients.len(), 1);
        assert_eq!(b.recipients[0].action, "delayed");
        assert_eq!(b.recipients[0].status.as_deref(), Some("4.4.7"));
        assert_eq!(
            b.diagnostic,
            "carol@slow.example.test: delayed 4.4.7 (X-Postfix; connect to \
             mx.slow.example.test[192.0.2.77]:25: Connection timed out)"
        );
    }

    /// Exim's classic plain-text bounce, the original message quoted after the explanation.
    const EXIM_BOUNCE: &str = "Return-path: <>\r
Envelope-to: bounce+act-0193cccc@serversync.example.test\r
Delivery-date: Tue, 03 Nov 2026 10:00:03 +0000\r
Received: from Debian-exim by mail.example.test with local (Exim 4.96)\r
\tid 1qAbCd-000123-Ef\r
\tfor bounce+act-0193cccc@serversync.example.test; Tue, 03 Nov 2026 10:00:02 +0000\r
X-Failed-Recipients: bob@elsewhere.test\r
Auto-Submitted: auto-replied\r
From: Mail Delivery System <Mailer-Daemon@mail.example.test>\r
To: bounce+act-0193cccc@serversync.example.test\r
Content-Type: text/plain; charset=us-ascii\r
Subject: Mail delivery failed: returning message to sender\r
Message-Id: <E1qAbCd-000123-Ef@mail.example.test>\r
Date: Tue, 03 Nov 2026 10:00:02 +0000\r
\r
This message was created automatically by mail delivery software.\r
\r
A message that you sent could not be delivered to one or more of its\r
recipients. This is a permanent error. The following address(es) failed:\r
\r
  bob@elsewhere.test\r
    host mx.elsewhere.test [192.0.2.25]\r
    SMTP error from remote mail server after RCPT TO:<bob@elsewhere.test>:\r
    550 5.1.1 <bob@elsewhere.test>: Recipient address rejected: User unknown in virtual mailbox table\r
\r
------ This is a copy of the message, including all the headers. ------\r
\r
Return-path: <bounce+act-0193cccc@serversync.example.test>\r
Received: from crm.serversync.example.test ([192.0.2.10])\r
\tby mail.example.test with esmtpsa (Exim 4.96)\r
\tid 1qAbCc-000122-Dd\r
\tfor bob@elsewhere.test; Tue, 03 Nov 2026 10:00:01 +0000\r
Message-ID: <act-0193cccc-1111-7000-8000-000000000002@serversync.example.test>\r
From: Ann Seller <ann@serversync.example.test>\r
To: bob@elsewhere.test\r
Subject: Your quote\r
Date: Tue, 3 Nov 2026 10:00:00 +0000\r
\r
Hello Bob,\r
\r
<someone@else.test>: this line of the quoted body is no recipient.\r
";

    #[test]
    fn exim_plain_text_bounce() {
        let b = parse_bounce(EXIM_BOUNCE.as_bytes(), None).expect("a bounce");
        assert!(b.failed);
        assert_eq!(
            b.original_message_ids,
            ["act-0193cccc-1111-7000-8000-000000000002@serversync.example.test"]
        );
        assert_eq!(
            b.recipients,
            [BounceRecipient {
                address: "bob@elsewhere.test".into(),
                action: "failed".into(),
                status: Some("5.1.1".into()),
                diagnostic_code: Some(
                    "550 5.1.1 <bob@elsewhere.test>: Recipient address rejected: User unknown \
                     in virtual mailbox table"
                        .into()
                ),
                remote_mta: Some("mx.elsewhere.test".into()),
            }]
        );
        assert_eq!(
            b.diagnostic,
            "bob@elsewhere.test: 5.1.1 (550 5.1.1 <bob@elsewhere.test>: Recipient address \
             rejected: User unknown in virtual mailbox table)"
        );
    }

    /// qmail's bounce: `<addr>:` then the details up to a blank line, no enhanced code.
    const QMAIL_BOUNCE: &str = "Return-Path: <>\r
From: MAILER-DAEMON@mail.example.test\r
To: ann@serversync.example.test\r
Subject: failure notice\r
Date: 3 Nov 2026 10:00:02 -0000\r
\r
Hi. This is the qmail-send program at mail.example.test.\r
I'm afraid I wasn't able to deliver your message to the following addresses.\r
This is a permanent error; I've given up. Sorry it didn't work out.\r
\r
<dave@elsewhere.test>:\r
192.0.2.25 does not like recipient.\r
Remote host said: 550 Mailbox unavailable\r
Giving up on 192.0.2.25.\r
\r
--- Below this line is a copy of the message.\r
\r
Return-Path: <ann@serversync.example.test>\r
Received: (qmail 12345 invoked from network); 3 Nov 2026 10:00:01 -0000\r
Message-ID: \r
 <act-0193dddd@serversync.example.test>\r
Subject: Hello\r
\r
Hi Dave\r
";

    #[test]
    fn qmail_plain_text_bounce() {
        let b = parse_bounce(QMAIL_BOUNCE.as_bytes(), None).expect("a bounce");
        assert!(b.failed);
        assert_eq!(
            b.original_message_ids,
            ["act-0193dddd@serversync.example.test"]
        );
        assert_eq!(b.recipients.len(), 1);
        let r = &b.recipients[0];
        assert_eq!(r.address, "dave@elsewhere.test");
        assert_eq!(
            r.status.as_deref(),
            Some("5.0.0"),
            "from the reply code 550"
        );
        assert_eq!(
            r.diagnostic_code.as_deref(),
            Some("550 Mailbox unavailable Giving up on 192.0.2.25.")
        );
    }

    /// A person writing about undeliverable goods, quoting addresses and status-like codes.
    const PERSON_UNDELIVERABLE: &str = "Return-Path: <carol@customer.test>\r
Delivered-To: bounce+act-0193eeee@serversync.example.test\r
From: Carol Buyer <carol@customer.test>\r
To: Ann Seller <ann@serversync.example.test>\r
Subject: Re: Undeliverable parcel - returned mail?\r
Message-ID: <carol-1@customer.test>\r
In-Reply-To: <act-0193eeee@serversync.example.test>\r
Date: Tue, 3 Nov 2026 12:00:00 +0100\r
Content-Type: text/plain; charset=utf-8\r
\r
Hi Ann,\r
\r
the parcel came back as undeliverable. The courier said:\r
\r
<warehouse@customer.test>: 550 5.1.1 nobody at the dock\r
\r
Message-ID: <act-0193eeee@serversync.example.test>\r
\r
Carol\r
";

    #[test]
    fn a_person_writing_undeliverable_is_no_bounce() {
        assert_eq!(parse_bounce(PERSON_UNDELIVERABLE.as_bytes(), None), None);
        assert_eq!(
            parse_bounce(PERSON_UNDELIVERABLE.as_bytes(), Some("bounce")),
            None
        );
    }

    /// An out-of-office reply with a null return path (RFC 3834) and an unlucky subject.
    const OUT_OF_OFFICE: &str = "Return-Path: <>\r
Delivered-To: ann@serversync.example.test\r
From: Bob <bob@elsewhere.test>\r
To: ann@serversync.example.test\r
Subject: Out of Office: Re: Undeliverable items on invoice 4711\r
Auto-Submitted: auto-replied\r
X-Autoreply: yes\r
Precedence: bulk\r
Message-ID: <ooo-1@elsewhere.test>\r
In-Reply-To: <act-0193ffff@serversync.example.test>\r
Date: Tue, 3 Nov 2026 12:00:00 +0100\r
Content-Type: text/plain; charset=utf-8\r
\r
I am out of the office until 10 November and your message could not be\r
delivered to me in person. For urgent matters contact\r
<office@elsewhere.test>: she will help.\r
";

    #[test]
    fn out_of_office_is_no_bounce() {
        assert_eq!(parse_bounce(OUT_OF_OFFICE.as_bytes(), None), None);
        // Without the out-of-office subject, Auto-Submitted alone still says auto-reply.
        let plain = OUT_OF_OFFICE
            .replace("Out of Office: Re: ", "Re: ")
            .replace("X-Autoreply: yes\r\n", "");
        assert_eq!(parse_bounce(plain.as_bytes(), None), None);
    }

    #[test]
    fn verp_token() {
        let b = parse_bounce(POSTFIX_DSN.as_bytes(), Some("bounce")).unwrap();
        assert_eq!(b.verp_token.as_deref(), Some("act-01932f4e7b1c"));
        // Case of the prefix does not matter, the token's is kept.
        let upper = POSTFIX_DSN.replace("bounce+act-01932f4e7b1c", "Bounce+ACT-01932F4E7B1C");
        let b = parse_bounce(upper.as_bytes(), Some("bounce")).unwrap();
        assert_eq!(b.verp_token.as_deref(), Some("ACT-01932F4E7B1C"));
        // Plain-text bounces too (Exim's Envelope-to).
        let b = parse_bounce(EXIM_BOUNCE.as_bytes(), Some("bounce")).unwrap();
        assert_eq!(b.verp_token.as_deref(), Some("act-0193cccc"));
        // Another prefix, or a bounce to a plain address: no token.
        let b = parse_bounce(POSTFIX_DSN.as_bytes(), Some("verp")).unwrap();
        assert_eq!(b.verp_token, None);
        let b = parse_bounce(GMAIL_DSN.as_bytes(), Some("bounce")).unwrap();
        assert_eq!(b.verp_token, None);
        // `bounces@…` or an empty token is no VERP address.
        let b = parse_bounce(
            POSTFIX_DSN
                .replace("bounce+act-01932f4e7b1c", "bounces")
                .as_bytes(),
            Some("bounce"),
        )
        .unwrap();
        assert_eq!(b.verp_token, None);
        let b = parse_bounce(
            POSTFIX_DSN.replace("+act-01932f4e7b1c", "+").as_bytes(),
            Some("bounce"),
        )
        .unwrap();
        assert_eq!(b.verp_token, None);
    }

    #[test]
    fn global_delivery_status_and_several_recipients() {
        let raw = "From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r
To: ann@serversync.example.test\r
Subject: Undelivered Mail Returned to Sender\r
References: <older@serversync.example.test> <act-1@serversync.example.test>\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status; boundary=b\r
\r
--b\r
Content-Type: text/plain\r
\r
Two recipients failed.\r
--b\r
Content-Type: message/global-delivery-status\r
Content-Transfer-Encoding: base64\r
\r
UmVwb3J0aW5nLU1UQTogZG5zOyBteC5leGFtcGxlLnRlc3QKCkZpbmFsLVJlY2lwaWVudDogdXRm\r
LTg7IErDvHJnZW5AYmVpc3BpZWwudGVzdApBY3Rpb246IGZhaWxlZApTdGF0dXM6IDUuMS4xCgpG\r
aW5hbC1SZWNpcGllbnQ6IHJmYzgyMjsgZXZlQGV4YW1wbGUudGVzdApTdGF0dXM6IDUuMi4yICht\r
YWlsYm94IGZ1bGwpCg==\r
--b--\r
";
        let b = parse_bounce(raw.as_bytes(), None).expect("a bounce");
        assert!(b.failed);
        let addrs: Vec<_> = b.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addrs, ["jürgen@beispiel.test", "eve@example.test"]);
        assert_eq!(b.recipients[1].action, "failed", "derived from 5.2.2");
        assert_eq!(
            b.diagnostic,
            "jürgen@beispiel.test: 5.1.1; eve@example.test: 5.2.2"
        );
        // No returned message: In-Reply-To/References, newest first.
        assert_eq!(
            b.original_message_ids,
            [
                "act-1@serversync.example.test",
                "older@serversync.example.test"
            ]
        );
    }

    #[test]
    fn read_receipts_and_ordinary_mail_are_no_bounces() {
        let mdn = "From: Bob <bob@elsewhere.test>\r
To: ann@serversync.example.test\r
Subject: Read: Your quote\r
Content-Type: multipart/report; report-type=disposition-notification; boundary=m\r
\r
--m\r
Content-Type: text/plain\r
\r
Your message was read.\r
--m\r
Content-Type: message/disposition-notification\r
\r
Final-Recipient: rfc822; bob@elsewhere.test\r
Disposition: manual-action/MDN-sent-manually; displayed\r
--m--\r
";
        assert_eq!(parse_bounce(mdn.as_bytes(), None), None);
        assert_eq!(
            parse_bounce(b"From: a@b.test\r\nSubject: hi\r\n\r\nhello", None),
            None
        );
    }

    /// Exchange's plain-text NDR: the address twice, the original subject quoted.
    const EXCHANGE_NDR: &str = "Return-Path: <>\r
From: postmaster@contoso.test\r
To: ann@serversync.example.test\r
Subject: Undeliverable: Out of office next week\r
Auto-Submitted: auto-replied\r
Content-Type: text/plain; charset=us-ascii\r
\r
Delivery has failed to these recipients or groups:\r
\r
frank@elsewhere.test\r
The email address you entered couldn't be found.\r
\r
Diagnostic information for administrators:\r
\r
Generating server: mail.contoso.test\r
\r
frank@elsewhere.test\r
Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found'\r
\r
Original message headers:\r
\r
Received: from crm.serversync.example.test (192.0.2.10) by mail.contoso.test\r
Message-ID: <act-0193abcd@serversync.example.test>\r
Subject: Out of office next week\r
";

    #[test]
    fn exchange_plain_text_ndr_quoting_an_auto_reply_subject() {
        let b = parse_bounce(EXCHANGE_NDR.as_bytes(), None).expect("a bounce");
        assert!(b.failed);
        assert_eq!(
            b.original_message_ids,
            ["act-0193abcd@serversync.example.test"]
        );
        assert_eq!(
            b.diagnostic,
            "frank@elsewhere.test: 5.1.10 (550 5.1.10 RESOLVER.ADR.RecipientNotFound; \
             Recipient not found)"
        );
    }

    #[test]
    fn truncated_report_falls_back_to_its_text() {
        let cut = POSTFIX_DSN.find("Final-Recipient").unwrap();
        let b = parse_bounce(&POSTFIX_DSN.as_bytes()[..cut], None).expect("a bounce");
        assert!(b.failed);
        assert_eq!(
            b.diagnostic,
            "nobody@elsewhere.test: failed (outbound mail is disabled in the serversync test \
             environment)"
        );
        // The delay warning stays a delay warning.
        let cut = DELAYED_DSN.find("Final-Recipient").unwrap();
        let b = parse_bounce(&DELAYED_DSN.as_bytes()[..cut], None).expect("a report");
        assert!(!b.failed);
        assert_eq!(b.recipients[0].action, "delayed");
    }

    #[test]
    fn garbage_and_truncated_input() {
        for raw in [
            &b""[..],
            b"   \r\n\r\n",
            b"\x00\xff\xfe garbage \x01\x02",
            b"not a message at all",
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n",
            b"Content-Type: message/delivery-status\r\n\r\nAction: failed\r\n",
        ] {
            assert_eq!(parse_bounce(raw, Some("bounce")), None, "{raw:?}");
        }
        // Cut after the headers: nothing says who or what bounced…
        for sample in [POSTFIX_DSN, QMAIL_BOUNCE] {
            let cut = sample.find("\r\n\r\n").unwrap();
            assert_eq!(parse_bounce(&sample.as_bytes()[..cut], None), None);
        }
        // …unless the headers do (X-Failed-Recipients).
        for sample in [GMAIL_DSN, EXIM_BOUNCE] {
            let cut = sample.find("\r\n\r\n").unwrap();
            let b = parse_bounce(&sample.as_bytes()[..cut], None).expect("a bounce");
            assert_eq!(b.diagnostic, "bob@elsewhere.test: failed");
        }
        // Cut anywhere (also inside UTF-8 sequences and base64): never a panic.
        let samples = [
            POSTFIX_DSN,
            GMAIL_DSN,
            DELAYED_DSN,
            EXIM_BOUNCE,
            QMAIL_BOUNCE,
            OUT_OF_OFFICE,
        ];
        for sample in samples {
            let bytes = sample.as_bytes();
            for len in 0..bytes.len() {
                let _ = parse_bounce(&bytes[..len], Some("bounce"));
            }
        }
    }

    #[test]
    fn dsn_field_parser() {
        let groups = parse_dsn_fields(
            "Reporting-MTA: dns; a.test\n\n\nfinal-recipient: rfc822;x@y.test\nSTATUS:\n 5.1.1\n\
             Diagnostic-Code: smtp; 550\n\tfolded   twice\n  again\nnot a field\n",
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(field(&groups[0], "reporting-mta"), Some("dns; a.test"));
        assert_eq!(field(&groups[1], "status"), Some("5.1.1"));
        assert_eq!(
            field(&groups[1], "diagnostic-code"),
            Some("smtp; 550 folded twice again")
        );
        assert_eq!(enhanced_status("5.7.1 (policy)").as_deref(), Some("5.7.1"));
        assert_eq!(enhanced_status("192.0.2.25"), None);
        assert_eq!(smtp_reply_code("said: 550-5.1.1 x"), Some((6, "550")));
        assert_eq!(smtp_reply_code("192.0.2.25 port 5500"), None);
    }
}
