//! Server bytes → the IMAP client's response parsing: framed into responses as the sync
//! session's reader frames them (lines at LF, literals announced by `{n}`, within the limits of
//! `imap::sync::limits`), then `imap::sync::response::parse_response`, the status-line parser
//! `imap::parse::parse_line` and the bounded event queue and listing window.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_connectors::imap::parse::{
    MailboxInfo, Phase, ResponseLine, Status, Untagged, classify, literal_len, parse_line,
};
use serversync_connectors::imap::sync::limits::{
    Events, LIST_WINDOW, ListWindow, MAX_EVENTS, MAX_LINE, MAX_LITERALS, response_limits,
};
use serversync_connectors::imap::sync::response::{
    Literal, RawResponse, Response, parse_appenduid, parse_copyuid, parse_response,
};
use serversync_connectors::imap::sync::{InternalDate, MailboxEvent, MessageMeta, UidSet};

/// One line of `data` from `at`, without its LF and one CR before it; `None` without an LF.
fn line(data: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let rest = &data[*at..];
    let end = rest.iter().position(|&b| b == b'\n')?;
    *at += end + 1;
    let l = &rest[..end];
    Some(l.strip_suffix(b"\r").unwrap_or(l).to_vec())
}

/// The responses of `data` as the client reads them, keeping `keep` bytes of each literal;
/// ends at the first response over the limits (the client fails the session there) or cut
/// short.
fn responses(data: &[u8], keep: usize) -> Vec<RawResponse> {
    let limits = response_limits(keep, keep);
    let mut out = Vec::new();
    let mut at = 0;
    'responses: while let Some(first) = line(data, &mut at) {
        let mut text = first.len();
        let mut announced = 0u64;
        let mut raw = RawResponse {
            pieces: vec![first],
            literals: Vec::new(),
        };
        while let Some(n) = raw.pieces.last().and_then(|l| literal_len(l)) {
            announced += n as u64;
            if raw.literals.len() >= limits.literals || announced > limits.literal_bytes {
                break 'responses;
            }
            let Some(bytes) = data.get(at..at + n) else {
                break 'responses;
            };
            at += n;
            raw.literals.push(Literal {
                data: bytes[..n.min(keep)].to_vec(),
                announced: n as u64,
            });
            let Some(next) = line(data, &mut at) else {
                break 'responses;
            };
            text += next.len();
            raw.pieces.push(next);
        }
        assert!(raw.literals.len() <= MAX_LITERALS && text <= MAX_LINE);
        assert_eq!(raw.pieces.len(), raw.literals.len() + 1);
        out.push(raw);
    }
    out
}

fn check_uid_set(set: &UidSet, split: usize) {
    if set.is_empty() {
        return;
    }
    let shown = set.to_string();
    assert_eq!(UidSet::parse(&shown).as_ref(), Some(set), "{shown}");
    // Few chunks whatever the set's size (a set may hold four billion UIDs).
    let n = usize::try_from(set.len() / (1 + split as u64 % 8)).unwrap_or(usize::MAX);
    let chunks = set.chunks(n.max(1));
    assert!(
        chunks
            .iter()
            .all(|c| !c.is_empty() && c.len() <= n.max(1) as u64)
    );
    assert_eq!(chunks.iter().map(UidSet::len).sum::<u64>(), set.len());
    assert_eq!(&UidSet::union(chunks), set);
    let mut twice = set.clone();
    twice.extend(set);
    assert_eq!(&twice, set);
}

fn check_date(d: &InternalDate) {
    assert_eq!(
        InternalDate::parse(&d.to_string()).as_ref(),
        Some(d),
        "{d} does not round-trip"
    );
}

fn check_status_line(l: &[u8]) {
    let Ok(r) = parse_line(l) else { return };
    let status = match &r {
        ResponseLine::Tagged { status, .. } => status,
        ResponseLine::Untagged(Untagged::Status(status)) => status,
        _ => return,
    };
    for phase in [
        Phase::Greeting,
        Phase::Capability,
        Phase::StartTls,
        Phase::Login,
        Phase::Examine,
        Phase::Logout,
        Phase::Command,
    ] {
        let _ = classify(phase, status.status, status.code_name());
    }
    let _ = status.display();
    if let Some(code) = &status.code {
        assert_eq!(code.name, code.name.to_ascii_uppercase());
        if let Some((_, s, d)) = parse_copyuid(&code.args) {
            check_uid_set(&s, 1);
            check_uid_set(&d, 2);
        }
        if let Some((_, s)) = parse_appenduid(&code.args) {
            check_uid_set(&s, 3);
        }
    }
    if let ResponseLine::Tagged { status, .. } = &r {
        let untagged: Vec<Untagged> = Vec::new();
        let _ = MailboxInfo::from_responses(&untagged, status);
        assert!(matches!(
            status.status,
            Status::Ok | Status::No | Status::Bad
        ));
    }
}

fuzz_target!(|data: &[u8]| {
    let (keep, data) = match data {
        [k, rest @ ..] => (usize::from(*k) * 64, rest),
        _ => return,
    };
    let mut events = Events::default();
    let mut window = ListWindow::default();
    for raw in responses(data, keep) {
        for piece in &raw.pieces {
            check_status_line(piece);
        }
        let Ok(r) = parse_response(raw) else { continue };
        match r {
            Response::Fetch { seq, data } => {
                for s in &data.sections {
                    // Whole, or a literal cut at what the reader keeps.
                    let got = s.data.as_ref().map_or(0, Vec::len);
                    assert!(
                        got as u64 == s.announced || (got == keep && s.announced > got as u64),
                        "{} of {} bytes kept (keep {keep})",
                        got,
                        s.announced
                    );
                }
                if let Some(d) = &data.internal_date {
                    check_date(d);
                }
                if let (Some(uid), Some(size)) = (data.uid, data.size) {
                    window.push(MessageMeta {
                        uid,
                        size,
                        internal_date: data.internal_date,
                        flags: data.flags.clone().unwrap_or_default(),
                        modseq: data.modseq,
                    });
                }
                if data.flags.is_some() {
                    events.push(MailboxEvent::Flags {
                        seq,
                        uid: data.uid,
                        flags: data.flags.unwrap_or_default(),
                        modseq: data.modseq,
                    });
                }
            }
            Response::Vanished { uids, .. } => {
                assert!(!uids.is_empty());
                check_uid_set(&uids, keep);
                events.push(MailboxEvent::Vanished(uids));
            }
            Response::Exists(n) => events.push(MailboxEvent::Exists(n)),
            Response::Expunge(seq) => events.push(MailboxEvent::Expunged { seq }),
            Response::Search { uids, .. } => check_uid_set(&UidSet::from_uids(&uids), keep),
            Response::List(entry) => {
                let _ = entry.selectable();
            }
            _ => {}
        }
    }
    let listed = window.into_sorted();
    assert!(listed.len() <= LIST_WINDOW);
    assert!(listed.windows(2).all(|p| p[0].uid < p[1].uid));
    let queued = events.take();
    assert!(queued.len() <= MAX_EVENTS);
    if queued.first() == Some(&MailboxEvent::Overflow) {
        assert!(queued.len() <= 2, "{queued:?}");
    }
});
