//! Turning a stored message into an email activity: the pure decisions (REFERENCE.md part A,
//! "Incoming email").
//!
//! - [`resolve_address`]: which record an address belongs to (users, then queues, contacts,
//!   accounts, leads; a record owned by the mailbox owner wins a tie; more than [`MAX_MATCHES`] matches
//!   leave the address unresolved).
//! - [`evaluate_filter`]: whether a user's or queue's tracking filter accepts a message, with the
//!   reason.
//! - [`format_token`] / [`find_token`]: tracking tokens such as `CRM:0010001` in subjects.
//! - [`correlation_steps`] and [`smart_match`]: the order in which a message is matched to an
//!   existing activity — In-Reply-To/References, tracking token, conversation, smart matching.

use crate::UserId;
use crate::crm::RecordRef;
use crate::settings::{EmailSettings, TrackingFilter, TrackingTokenSettings};
use std::collections::BTreeSet;

/// More matches than this for one address: the address is left unresolved.
pub const MAX_MATCHES: usize = 100;

/// Addresses compare case-insensitively, without surrounding spaces or angle brackets.
pub fn normalize_address(a: &str) -> String {
    a.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_lowercase()
}

/// A record with an email address that an address may resolve to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub record: RecordRef,
    /// The record's owner (users own themselves; a queue its owner).
    pub owner_id: Option<UserId>,
}

/// The priority of a record type when several records share an address (lower wins).
pub fn priority(r: &RecordRef) -> u8 {
    match r {
        RecordRef::User(_) => 0,
        RecordRef::Queue(_) => 1,
        RecordRef::Contact(_) => 2,
        RecordRef::Account(_) => 3,
        RecordRef::Lead(_) => 4,
        RecordRef::Activity(_) => u8::MAX,
    }
}

/// How an address was resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub record: Option<RecordRef>,
    /// Why, in words, for the item trace.
    pub reason: String,
}

fn kind(r: &RecordRef) -> &'static str {
    match r {
        RecordRef::User(_) => "user",
        RecordRef::Queue(_) => "queue",
        RecordRef::Contact(_) => "contact",
        RecordRef::Account(_) => "account",
        RecordRef::Lead(_) => "lead",
        RecordRef::Activity(_) => "activity",
    }
}

/// Resolves `address` among `candidates` (the records whose addresses include it, in creation
/// order): the highest-priority type wins; among several of that type, the first one owned by
/// `mailbox_owner`, else the first one. More than [`MAX_MATCHES`] candidates: unresolved.
pub fn resolve_address(
    address: &str,
    candidates: &[Candidate],
    mailbox_owner: UserId,
) -> Resolution {
    let address = normalize_address(address);
    if candidates.len() > MAX_MATCHES {
        return Resolution {
            record: None,
            reason: format!(
                "{address}: unresolved, {} records match (more than {MAX_MATCHES})",
                candidates.len()
            ),
        };
    }
    let Some(best) = candidates
        .iter()
        .map(|c| priority(&c.record))
        .filter(|p| *p != u8::MAX)
        .min()
    else {
        return Resolution {
            record: None,
            reason: format!("{address}: unresolved, no record has this address"),
        };
    };
    let tied: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| priority(&c.record) == best)
        .collect();
    let owned = tied
        .iter()
        .find(|c| c.owner_id == Some(mailbox_owner))
        .copied();
    let chosen = owned.unwrap_or(tied[0]);
    let why = match (tied.len(), owned.is_some()) {
        (1, _) => String::new(),
        (n, true) => format!(
            " ({n} {}s match; the one the mailbox owner owns)",
            kind(&chosen.record)
        ),
        (n, false) => format!(" ({n} {}s match; the oldest)", kind(&chosen.record)),
    };
    Resolution {
        record: Some(chosen.record),
        reason: format!("{address}: {}{why}", wire_ref(&chosen.record)),
    }
}

fn wire_ref(r: &RecordRef) -> String {
    let id = match r {
        RecordRef::User(i) => i.to_string(),
        RecordRef::Queue(i) => i.to_string(),
        RecordRef::Contact(i) => i.to_string(),
        RecordRef::Account(i) => i.to_string(),
        RecordRef::Lead(i) => i.to_string(),
        RecordRef::Activity(i) => i.to_string(),
    };
    format!("{} {id}", kind(r))
}

/// What a user's or queue's tracking filter says about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accept: bool,
    pub reason: String,
}

/// Applies a tracking filter. `correlated`: the message answers an existing activity;
/// `sender`: what the From address resolved to.
pub fn evaluate_filter(
    filter: TrackingFilter,
    correlated: bool,
    sender: Option<&RecordRef>,
) -> Verdict {
    let (accept, reason) = match filter {
        TrackingFilter::AllEmail => (true, "the filter tracks all email".to_owned()),
        TrackingFilter::None => (false, "the filter tracks no email".to_owned()),
        TrackingFilter::InResponseToCrmEmail => {
            if correlated {
                (true, "it answers CRM email".to_owned())
            } else {
                (
                    false,
                    "the filter tracks only email in response to CRM email, and this message answers none"
                        .to_owned(),
                )
            }
        }
        TrackingFilter::FromLeadsContactsAccounts => match sender {
            Some(r @ (RecordRef::Contact(_) | RecordRef::Account(_) | RecordRef::Lead(_))) => {
                (true, format!("the sender is a {}", kind(r)))
            }
            Some(r) => (
                false,
                format!(
                    "the filter tracks only email from leads, contacts and accounts, and the sender is a {}",
                    kind(r)
                ),
            ),
            None => (
                false,
                "the filter tracks only email from leads, contacts and accounts, and the sender is not a known record"
                    .to_owned(),
            ),
        },
        TrackingFilter::FromEmailEnabledRecords => match sender {
            Some(r) => (true, format!("the sender is a {}", kind(r))),
            None => (
                false,
                "the filter tracks only email from email-enabled records, and the sender is not a known record"
                    .to_owned(),
            ),
        },
    };
    Verdict { accept, reason }
}

/// A tracking token: the prefix, then the user number in `user_digits` digits, then the
/// counter (plus the base number, wrapping) in `counter_digits` digits, e.g. `CRM:0010001`
/// for prefix `CRM:`, user 1 and counter 1 with 3 and 4 digits.
pub fn format_token(s: &TrackingTokenSettings, user_number: u64, counter: u64) -> String {
    let ud = u32::from(s.user_digits.clamp(1, 10));
    let cd = u32::from(s.counter_digits.clamp(1, 9));
    let user = user_number % 10u64.pow(ud);
    let counter = (u64::from(s.base_number) + counter) % 10u64.pow(cd);
    format!(
        "{}{user:0uw$}{counter:0cw$}",
        s.prefix,
        uw = ud as usize,
        cw = cd as usize
    )
}

/// The first tracking token in `subject`: the prefix (case-insensitive) followed by exactly
/// `user_digits + counter_digits` digits, not part of a longer word or number.
pub fn find_token(s: &TrackingTokenSettings, subject: &str) -> Option<String> {
    if !s.enabled || s.prefix.is_empty() {
        return None;
    }
    let len = usize::from(s.user_digits) + usize::from(s.counter_digits);
    let lower = subject.to_lowercase();
    let prefix = s.prefix.to_lowercase();
    // Lower-casing may change byte lengths outside ASCII; search on the lower-cased text and
    // return the canonical form (the configured prefix and the digits).
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&prefix) {
        let start = from + pos;
        let after = start + prefix.len();
        let before_ok = lower[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let digits: String = lower[after..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if before_ok && digits.len() == len {
            return Some(format!("{}{digits}", s.prefix));
        }
        from = after;
    }
    None
}

/// The subject without reply and forward prefixes (`Re:`, `Fw:`, `Fwd:`, `AW:`, `WG:`, also
/// repeated or numbered such as `Re[2]:`), trimmed and lower-cased, for smart matching.
pub fn normalize_subject(subject: &str) -> String {
    let mut s = subject.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let mut cut = None;
        for p in ["re", "fwd", "fw", "aw", "wg"] {
            if let Some(rest) = lower.strip_prefix(p) {
                let rest_trim = rest.trim_start_matches(|c: char| {
                    c == '[' || c == ']' || c.is_ascii_digit() || c == ' '
                });
                if let Some(after) = rest_trim.strip_prefix(':') {
                    cut = Some(s.len() - after.len());
                    break;
                }
            }
        }
        match cut {
            Some(n) => s = s[n..].trim_start(),
            None => break,
        }
    }
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// One way of finding the activity a message answers, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorrelationStep {
    /// An activity whose Message-ID is this (In-Reply-To first, then References, newest first).
    MessageId(String),
    /// The oldest activity carrying this tracking token.
    TrackingToken(String),
    /// The newest activity of this conversation (the thread's root Message-ID).
    Conversation(String),
    /// Activities with this normalized subject, then [`smart_match`].
    SmartMatch(String),
}

impl CorrelationStep {
    /// How the step is named in the item trace.
    pub fn describe(&self) -> String {
        match self {
            CorrelationStep::MessageId(m) => format!("by In-Reply-To/References <{m}>"),
            CorrelationStep::TrackingToken(t) => format!("by tracking token {t}"),
            CorrelationStep::Conversation(c) => format!("by conversation <{c}>"),
            CorrelationStep::SmartMatch(_) => {
                "by smart matching (same subject, at least 2 common addresses)".to_owned()
            }
        }
    }
}

/// The correlation steps for a message, in the reference order, as the settings allow.
pub fn correlation_steps(
    settings: &EmailSettings,
    subject: Option<&str>,
    in_reply_to: Option<&str>,
    references: &[String],
) -> Vec<CorrelationStep> {
    let mut steps = Vec::new();
    let mut seen = BTreeSet::new();
    if settings.correlation_by_headers {
        for id in in_reply_to
            .into_iter()
            .chain(references.iter().rev().map(String::as_str))
        {
            if seen.insert(id.to_owned()) {
                steps.push(CorrelationStep::MessageId(id.to_owned()));
            }
        }
    }
    if let Some(t) = subject.and_then(|s| find_token(&settings.tracking_token, s)) {
        steps.push(CorrelationStep::TrackingToken(t));
    }
    if settings.correlation_by_headers
        && let Some(root) = references.first().map(String::as_str).or(in_reply_to)
    {
        steps.push(CorrelationStep::Conversation(root.to_owned()));
    }
    if settings.smart_matching
        && let Some(s) = subject.map(normalize_subject).filter(|s| !s.is_empty())
    {
        steps.push(CorrelationStep::SmartMatch(s));
    }
    steps
}

/// Smart matching: among `candidates` (each with its addresses, in creation order), the newest
/// one sharing at least two addresses with `addresses`.
pub fn smart_match<'a, T>(
    addresses: &[String],
    candidates: &'a [(T, Vec<String>)],
) -> Option<&'a T> {
    let ours: BTreeSet<String> = addresses.iter().map(|a| normalize_address(a)).collect();
    candidates
        .iter()
        .rev()
        .find(|(_, theirs)| {
            theirs
                .iter()
                .map(|a| normalize_address(a))
                .collect::<BTreeSet<_>>()
                .intersection(&ours)
                .count()
                >= 2
        })
        .map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountId, ContactId, LeadId, QueueId};

    fn c(record: RecordRef, owner: Option<UserId>) -> Candidate {
        Candidate {
            record,
            owner_id: owner,
        }
    }

    #[test]
    fn resolution_follows_the_type_priority() {
        let me = UserId::new();
        let other = UserId::new();
        let user = RecordRef::User(other);
        let queue = RecordRef::Queue(QueueId::new());
        let contact = RecordRef::Contact(ContactId::new());
        let account = RecordRef::Account(AccountId::new());
        let lead = RecordRef::Lead(LeadId::new());
        let all = [
            c(lead, Some(me)),
            c(account, Some(me)),
            c(contact, Some(me)),
            c(queue, Some(other)),
            c(user, Some(other)),
        ];
        // Removing the winner each time exposes the next in priority.
        for (n, expected) in [user, queue, contact, account, lead].iter().enumerate() {
            let r = resolve_address("Ann@Example.TEST", &all[..all.len() - n], me);
            assert_eq!(r.record, Some(*expected), "{}", r.reason);
            assert!(r.reason.starts_with("ann@example.test: "), "{}", r.reason);
        }
    }

    #[test]
    fn a_tie_goes_to_the_record_the_mailbox_owner_owns_else_the_oldest() {
        let me = UserId::new();
        let other = UserId::new();
        let first = RecordRef::Contact(ContactId::new());
        let mine = RecordRef::Contact(ContactId::new());
        let lead_mine = RecordRef::Lead(LeadId::new());
        let cands = [
            c(first, Some(other)),
            c(mine, Some(me)),
            c(lead_mine, Some(me)),
        ];
        let r = resolve_address("a@x.test", &cands, me);
        assert_eq!(r.record, Some(mine));
        assert!(r.reason.contains("the mailbox owner owns"), "{}", r.reason);
        // Ownership does not beat priority: a lead owned by me loses to a contact.
        let r = resolve_address("a@x.test", &cands, UserId::new());
        assert_eq!(r.record, Some(first));
        assert!(r.reason.contains("the oldest"), "{}", r.reason);
    }

    #[test]
    fn more_than_100_matches_leave_the_address_unresolved() {
        let me = UserId::new();
        let many: Vec<Candidate> = (0..101)
            .map(|_| c(RecordRef::Contact(ContactId::new()), Some(me)))
            .collect();
        let r = resolve_address("a@x.test", &many, me);
        assert_eq!(r.record, None);
        assert!(r.reason.contains("101 records match"), "{}", r.reason);
        let r = resolve_address("a@x.test", &many[..100], me);
        assert!(r.record.is_some());
        let r = resolve_address("a@x.test", &[], me);
        assert_eq!(r.record, None);
        assert!(r.reason.contains("no record"), "{}", r.reason);
    }

    #[test]
    fn each_tracking_filter_accepts_and_rejects_the_right_messages() {
        use TrackingFilter::{
            AllEmail, FromEmailEnabledRecords, FromLeadsContactsAccounts, InResponseToCrmEmail,
        };
        let contact = RecordRef::Contact(ContactId::new());
        let account = RecordRef::Account(AccountId::new());
        let lead = RecordRef::Lead(LeadId::new());
        let user = RecordRef::User(UserId::new());
        let queue = RecordRef::Queue(QueueId::new());
        let cases: &[(TrackingFilter, bool, Option<RecordRef>, bool)] = &[
            (AllEmail, false, None, true),
            (TrackingFilter::None, true, Some(contact), false),
            (InResponseToCrmEmail, true, None, true),
            (InResponseToCrmEmail, false, Some(contact), false),
            (FromLeadsContactsAccounts, false, Some(contact), true),
            (FromLeadsContactsAccounts, false, Some(account), true),
            (FromLeadsContactsAccounts, false, Some(lead), true),
            (FromLeadsContactsAccounts, false, Some(user), false),
            (FromLeadsContactsAccounts, true, None, false),
            (FromEmailEnabledRecords, false, Some(user), true),
            (FromEmailEnabledRecords, false, Some(queue), true),
            (FromEmailEnabledRecords, false, Some(lead), true),
            (FromEmailEnabledRecords, true, None, false),
        ];
        for (f, correlated, sender, accept) in cases {
            let v = evaluate_filter(*f, *correlated, sender.as_ref());
            assert_eq!(
                v.accept, *accept,
                "{f:?} {correlated} {sender:?}: {}",
                v.reason
            );
            assert!(!v.reason.is_empty());
        }
        let v = evaluate_filter(FromLeadsContactsAccounts, false, Some(&user));
        assert!(v.reason.contains("the sender is a user"), "{}", v.reason);
    }

    #[test]
    fn tokens_are_formatted_and_found() {
        let mut s = TrackingTokenSettings {
            prefix: "CRM:".into(),
            user_digits: 3,
            counter_digits: 4,
            ..Default::default()
        };
        assert_eq!(format_token(&s, 1, 1), "CRM:0010001");
        // The counter wraps.
        assert_eq!(format_token(&s, 1, 10_001), "CRM:0010001");
        s.base_number = 5;
        assert_eq!(format_token(&s, 12, 0), "CRM:0120005");
        assert_eq!(
            find_token(&s, "RE: Quote crm:0010001 for you").as_deref(),
            Some("CRM:0010001")
        );
        assert_eq!(
            find_token(&s, "Order CRM:00100012"),
            None,
            "too many digits"
        );
        assert_eq!(find_token(&s, "Order CRM:001000"), None, "too few digits");
        assert_eq!(find_token(&s, "xCRM:0010001"), None, "inside a word");
        assert_eq!(
            find_token(&s, "CRM:1 then CRM:0020003").as_deref(),
            Some("CRM:0020003")
        );
        s.enabled = false;
        assert_eq!(find_token(&s, "CRM:0010001"), None);
    }

    #[test]
    fn subjects_lose_reply_and_forward_prefixes() {
        assert_eq!(
            normalize_subject("Re: Fwd: AW:  Price   list"),
            "price list"
        );
        assert_eq!(normalize_subject("RE[2]: WG: Price list"), "price list");
        assert_eq!(normalize_subject("Reply needed"), "reply needed");
        assert_eq!(normalize_subject("Re:"), "");
    }

    #[test]
    fn correlation_steps_come_in_the_reference_order() {
        let mut s = EmailSettings {
            smart_matching: true,
            ..Default::default()
        };
        let refs = vec!["root@x".to_owned(), "mid@x".to_owned()];
        let steps = correlation_steps(&s, Some("Re: Offer CRM001001"), Some("last@x"), &refs);
        assert_eq!(
            steps,
            vec![
                CorrelationStep::MessageId("last@x".into()),
                CorrelationStep::MessageId("mid@x".into()),
                CorrelationStep::MessageId("root@x".into()),
                CorrelationStep::TrackingToken("CRM001001".into()),
                CorrelationStep::Conversation("root@x".into()),
                CorrelationStep::SmartMatch("offer crm001001".into()),
            ]
        );
        s.correlation_by_headers = false;
        s.smart_matching = false;
        s.tracking_token.enabled = false;
        assert!(correlation_steps(&s, Some("CRM001001"), Some("a@x"), &refs).is_empty());
    }

    #[test]
    fn smart_matching_needs_two_common_addresses() {
        let ours = vec![
            "A@x.test".to_owned(),
            "b@x.test".to_owned(),
            "c@x.test".to_owned(),
        ];
        let cands = vec![
            (1, vec!["a@x.test".to_owned(), "b@x.test".to_owned()]),
            (2, vec!["a@x.test".to_owned(), "z@x.test".to_owned()]),
        ];
        assert_eq!(smart_match(&ours, &cands), Some(&1));
        assert_eq!(smart_match(&ours, &cands[1..]), None);
    }
}
