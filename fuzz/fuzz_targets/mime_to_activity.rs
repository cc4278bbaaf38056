//! Raw message bytes → `connectors::mime::parse` → `engine::intake::prepare_item` (the item
//! intake records) → `engine::records::new_activity` (the email activity the tracker makes),
//! with what the store would bind for each. The same functions the engine runs, without the
//! database.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use serversync_connectors::mime;
use serversync_engine::intake::prepare_item;
use serversync_engine::records::{message_keys, new_activity};
use serversync_model::crm::{EmailActivity, PartyRole};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::settings::EmailSettings;
use serversync_model::track::{correlation_steps, normalize_subject};
use serversync_model::{OrgId, UserId};
use serversync_store::{Col, Entity};
use serversync_vault::sha256_hex;

/// PostgreSQL refuses NUL in text columns: nothing the store binds may carry one.
fn assert_no_nul(what: &str, v: Option<&str>) {
    if let Some(v) = v {
        assert!(!v.contains('\0'), "{what} carries a NUL: {v:?}");
    }
}

fn assert_columns_bindable<E: Entity>(e: &E) {
    for (name, col) in e.columns() {
        if let Col::Text(v) = col {
            assert_no_nul(name, v.as_deref());
        }
    }
}

fn assert_message_id(what: &str, id: &str) {
    assert!(!id.is_empty(), "{what} is empty");
    assert!(
        !id.starts_with(['<', '>']) && !id.ends_with(['<', '>']),
        "{what} keeps its angle brackets: {id:?}"
    );
}

fuzz_target!(|raw: &[u8]| {
    serversync_fuzz::let_mail_parser_panics_unwind();
    let received_at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
    let org = OrgId::new();
    let owner = UserId::new();
    let mut settings = EmailSettings::new(org);
    // A small attachment limit, so both kept and dropped attachments are exercised.
    settings.max_attachment_kb = 1;
    settings.require_approved_users = false;
    let mailbox = Mailbox::new_with_defaults(
        org,
        MailboxRegarding::User(owner),
        owner,
        "fuzz",
        "owner@example.test",
        &settings,
        received_at,
    );

    let parsed = mime::parse(raw);
    assert_eq!(parsed, mime::parse(raw), "parsing is not deterministic");

    let source = ItemSource::Pop3 {
        uidl: "fuzz".into(),
    };
    let (item, blobs) = prepare_item(
        &mailbox,
        &settings,
        None,
        source.clone(),
        raw,
        received_at,
        None,
    );
    let sha = sha256_hex(raw);
    assert_eq!(item.size, raw.len() as u64);
    assert_eq!(item.raw_sha256, sha);
    assert_eq!(item.source_key, source.key(&sha));
    assert_no_nul("source_key", Some(&item.source_key));
    assert_no_nul("message_id", item.message_id.as_deref());
    let json = serde_json::to_string(&item).expect("an item serializes");
    let back: MailItem = serde_json::from_str(&json).expect("an item deserializes");
    assert_eq!(back, item, "the stored JSON does not give the item back");

    match &parsed {
        Err(_) => {
            assert_eq!(item.decision, ItemDecision::Failed);
            assert!(item.raw_kept, "an unparseable message must be kept raw");
            assert!(blobs.is_empty());
        }
        Ok(p) => {
            assert_eq!(item.decision, ItemDecision::Stored);
            assert_eq!(item.message_id, p.message_id);
            if let Some(id) = &item.message_id {
                assert_message_id("Message-ID", id);
            }
            for a in item.from.iter().chain(&item.to).chain(&item.cc) {
                assert!(!a.is_empty(), "empty address");
                assert!(
                    !a.contains(char::is_control),
                    "address with a control character: {a:?}"
                );
            }
            let limit = u64::from(settings.max_attachment_kb) * 1024;
            assert_eq!(item.attachments.len(), p.attachments.len());
            for (a, pa) in item.attachments.iter().zip(&p.attachments) {
                assert_eq!(a.size, pa.data.len() as u64);
                assert_eq!(a.sha256, sha256_hex(&pa.data));
                assert_eq!(a.dropped_reason.is_some(), a.size > limit);
                if a.dropped_reason.is_none() {
                    assert!(blobs.iter().any(|(s, d)| *s == a.sha256 && d == &pa.data));
                }
            }
            assert_eq!(
                item.raw_kept,
                item.attachments.iter().all(|a| a.dropped_reason.is_none())
            );
        }
    }

    // A message too large to read whole: only its header was read; skipped, nothing kept.
    let (header_only, header_blobs) = prepare_item(
        &mailbox,
        &settings,
        None,
        source,
        raw,
        received_at,
        Some((raw.len() as u64 + 1, raw.len() as u64)),
    );
    assert_eq!(header_only.decision, ItemDecision::Skipped);
    assert!(!header_only.raw_kept);
    assert!(header_blobs.is_empty());
    assert_eq!(header_only.size, raw.len() as u64 + 1);

    if item.decision != ItemDecision::Stored {
        return;
    }
    // What the tracker does with a stored item it cannot correlate.
    let _steps = correlation_steps(
        &settings,
        item.subject.as_deref(),
        item.in_reply_to.as_deref(),
        &item.references,
    );
    let _ = normalize_subject(item.subject.as_deref().unwrap_or_default());
    let (content, key) = message_keys(&item);
    assert_eq!(content.is_some(), item.message_id.is_none());
    let key = key.expect("every message has a key (Message-ID or content)");
    let a = new_activity(&item, &mailbox, &settings, None, false, |_| None);
    assert_eq!(a.message_id, item.message_id);
    assert_eq!(a.dedupe_key().as_deref(), Some(key.as_str()));
    assert_eq!(
        a.parties.len(),
        item.from.iter().len() + item.to.len() + item.cc.len()
    );
    assert_eq!(
        a.parties
            .iter()
            .filter(|p| p.role == PartyRole::From)
            .count(),
        item.from.iter().len()
    );
    assert_eq!(a.attachments.len(), item.attachments.len());
    assert!(
        a.conversation_id.is_some(),
        "an activity without a conversation"
    );
    assert_columns_bindable(&a);
    let json = serde_json::to_string(&a).expect("an activity serializes");
    let back: EmailActivity = serde_json::from_str(&json).expect("an activity deserializes");
    assert_eq!(back, a, "the stored JSON does not give the activity back");

    // A reply to it inherits its conversation and regarding record.
    let reply = new_activity(&item, &mailbox, &settings, Some(&a), false, |_| None);
    assert_eq!(reply.conversation_id, a.conversation_id);
    assert_eq!(reply.regarding, a.regarding);
});
