//! Raw message bytes → `connectors::dsn::parse_bounce` (RFC 3464 reports, classic bounces,
//! VERP), checking what `Bounce` promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_connectors::dsn::parse_bounce;

const ACTIONS: &[&str] = &["failed", "delayed", "delivered", "relayed", "expanded"];

/// `[245].\d{1,3}.\d{1,3}` (RFC 3463).
fn is_enhanced_status(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

fuzz_target!(|raw: &[u8]| {
    serversync_fuzz::let_mail_parser_panics_unwind();
    let without_verp = parse_bounce(raw, None);
    let Some(b) = parse_bounce(raw, Some("bounce")) else {
        assert!(
            without_verp.is_none(),
            "VERP decided whether it is a bounce"
        );
        return;
    };
    let mut plain = b.clone();
    plain.verp_token = None;
    assert_eq!(
        Some(plain),
        without_verp,
        "VERP changed more than the token"
    );

    assert!(
        !b.diagnostic.contains(['\r', '\n']),
        "the diagnostic is not one line: {:?}",
        b.diagnostic
    );
    for (i, id) in b.original_message_ids.iter().enumerate() {
        assert!(!id.is_empty(), "empty Message-ID");
        assert!(
            !id.starts_with('<') && !id.ends_with('>'),
            "Message-ID with angle brackets: {id:?}"
        );
        // The tracker looks activities up by these (a NUL fails on PostgreSQL).
        assert!(
            !id.contains(|c: char| c.is_whitespace() || c.is_control()),
            "Message-ID with white space or control characters: {id:?}"
        );
        assert!(
            !b.original_message_ids[..i].contains(id),
            "Message-ID listed twice: {id:?}"
        );
    }
    for r in &b.recipients {
        assert!(
            ACTIONS.contains(&r.action.as_str()),
            "action {:?}",
            r.action
        );
        if let Some(s) = &r.status {
            assert!(is_enhanced_status(s), "status {s:?}");
        }
        assert_eq!(
            r.address,
            r.address.to_lowercase(),
            "address not lowercased"
        );
    }
    // Without recipients (a plain-text bounce quoting only the message) `failed` is decided
    // by the wording; with recipients it follows them.
    if !b.recipients.is_empty() {
        let failed = b.recipients.iter().any(|r| {
            r.action == "failed" || r.status.as_deref().is_some_and(|s| s.starts_with('5'))
        });
        assert_eq!(b.failed, failed, "`failed` disagrees with the recipients");
    }
    if let Some(t) = &b.verp_token {
        assert!(!t.is_empty(), "empty VERP token");
    }
});
