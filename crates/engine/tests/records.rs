//! The tracker (stored messages → email activities) on SQLite and PostgreSQL: one activity per
//! message however many mailboxes see it, replies correlated to what they answer (and its
//! regarding record), each tracking filter's decision with its reason in the item's trace,
//! queue items for queue mailboxes, and two activities for email between two users.

use serversync_engine::intake::{IntakeOutcome, take_in};
use serversync_engine::records;
use serversync_model::crm::{
    Account, Contact, Direction, EmailActivity, EmailStatus, PartyRole, QueueItem, RecordRef,
};
use serversync_model::item::{ItemSource, MailItem};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{Queue, User};
use serversync_model::settings::{EmailSettings, TrackingFilter};
use serversync_model::{AccountId, ActivityId, ContactId, OrgId, QueueId};
use serversync_store::{Backend, Col, Store};
use serversync_testkit::TestEnv;
use serversync_vault::MasterKey;
use std::time::Duration;

struct World {
    store: Store,
    settings: EmailSettings,
    org: OrgId,
    alice: User,
    bob: User,
    alice_mb: Mailbox,
    bob_mb: Mailbox,
    queue_mb: Mailbox,
    ann: Contact,
    _guard: Box<dyn std::any::Any>,
}

async fn world(backend: Backend) -> World {
    let env = TestEnv::from_env();
    let (guard, url) = match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("r.db").display());
            (Box::new(d) as Box<dyn std::any::Any>, url)
        }
        Backend::Postgres => {
            let db = env.pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db) as Box<dyn std::any::Any>, url)
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let org = OrgId::new();
    let mut settings = EmailSettings::new(org);
    settings.tracking_token.prefix = "CRM:".into();
    settings.tracking_token.counter_digits = 4;
    store.insert(&settings).await.unwrap();
    let now = chrono::Utc::now();
    let alice = User::new(org, "Alice", "alice@example.test", now);
    let bob = User::new(org, "Bob", "Bob@Example.test", now);
    store.insert(&alice).await.unwrap();
    store.insert(&bob).await.unwrap();
    let queue = Queue {
        id: QueueId::new(),
        org_id: org,
        name: "Support".into(),
        email: "support@example.test".into(),
        owner_id: bob.id,
        member_ids: Default::default(),
        created_at: now,
    };
    store.insert(&queue).await.unwrap();
    let ann = Contact {
        id: ContactId::new(),
        org_id: org,
        full_name: "Ann Customer".into(),
        emails: vec!["Ann@Customer.test".into()],
        account_id: None,
        company: None,
        job_title: None,
        phones: Vec::new(),
        owner_id: alice.id,
        created_at: now,
    };
    store.insert(&ann).await.unwrap();
    let mailbox = |regarding, owner, email: &str| {
        let mut m = Mailbox::new_with_defaults(org, regarding, owner, email, email, &settings, now);
        m.approval = ApprovalStatus::Approved;
        m.process_email_from = Some(now - chrono::Duration::days(30));
        m.tracking = TrackingFilter::AllEmail;
        m
    };
    let alice_mb = mailbox(
        MailboxRegarding::User(alice.id),
        alice.id,
        "alice@example.test",
    );
    let bob_mb = mailbox(MailboxRegarding::User(bob.id), bob.id, "bob@example.test");
    let queue_mb = mailbox(
        MailboxRegarding::Queue(queue.id),
        bob.id,
        "support@example.test",
    );
    for m in [&alice_mb, &bob_mb, &queue_mb] {
        store.insert(m).await.unwrap();
    }
    World {
        store,
        settings,
        org,
        alice,
        bob,
        alice_mb,
        bob_mb,
        queue_mb,
        ann,
        _guard: guard,
    }
}

/// A message; `headers` are extra header lines.
fn message(id: Option<&str>, from: &str, to: &str, subject: &str, headers: &str) -> Vec<u8> {
    let mut m = String::new();
    if let Some(id) = id {
        m.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    m.push_str(&format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\n{headers}MIME-Version: 1.0\r\n"
    ));
    m.push_str("Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHello there.\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"quote.pdf\"\r\n\r\n%PDF-1.4 quote\r\n--b--\r\n");
    m.into_bytes()
}

impl World {
    async fn deliver(&self, mailbox: &Mailbox, raw: &[u8]) -> MailItem {
        let out = take_in(
            &self.store,
            mailbox,
            &self.settings,
            None,
            ItemSource::Router { via: "test".into() },
            raw,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        match out {
            IntakeOutcome::Recorded(i) => *i,
            IntakeOutcome::Duplicate => panic!("duplicate"),
        }
    }

    async fn track(&self) -> usize {
        records::run_once(&self.store, "test-worker", Duration::from_secs(30))
            .await
            .unwrap()
    }

    async fn item(&self, i: &MailItem) -> MailItem {
        self.store
            .fetch::<MailItem>(&i.id.to_string())
            .await
            .unwrap()
            .value
    }

    async fn activities(&self) -> Vec<EmailActivity> {
        self.store
            .list_all::<EmailActivity>(Some(self.org), &[("kind", Col::text("email"))])
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.value)
            .collect()
    }

    async fn activity(&self, id: ActivityId) -> EmailActivity {
        self.store
            .fetch::<EmailActivity>(&id.to_string())
            .await
            .unwrap()
            .value
    }
}

/// The activity the item's trace says it was tracked as.
fn tracked_as(item: &MailItem) -> ActivityId {
    let line = item
        .trace
        .iter()
        .find(|l| l.starts_with("tracked as activity "))
        .unwrap_or_else(|| panic!("not tracked: {:#?}", item.trace));
    line["tracked as activity ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn not_tracked_reason(item: &MailItem) -> String {
    item.trace
        .iter()
        .find(|l| l.starts_with("not tracked: "))
        .unwrap_or_else(|| panic!("tracked: {:#?}", item.trace))
        .clone()
}

async fn one_activity_per_message(backend: Backend) {
    let w = world(backend).await;
    let raw = message(
        Some("offer-1@customer.test"),
        "Ann <ann@customer.test>",
        "alice@example.test, bob@example.test, support@example.test",
        "Offer",
        "",
    );
    let a = w.deliver(&w.alice_mb, &raw).await;
    let b = w.deliver(&w.bob_mb, &raw).await;
    let q = w.deliver(&w.queue_mb, &raw).await;
    assert_eq!(w.track().await, 3);
    assert_eq!(w.track().await, 0, "nothing left, nothing done twice");

    let acts = w.activities().await;
    assert_eq!(acts.len(), 1, "{acts:#?}");
    let act = &acts[0];
    for i in [&a, &b, &q] {
        assert_eq!(tracked_as(&w.item(i).await), act.id);
    }
    let mut linked = act.mailbox_ids.clone();
    linked.sort();
    let mut expected = vec![w.alice_mb.id, w.bob_mb.id, w.queue_mb.id];
    expected.sort();
    assert_eq!(linked, expected);
    assert_eq!(act.direction, Direction::Incoming);
    assert_eq!(act.status, EmailStatus::Received);
    assert_eq!(act.owner_id, w.alice.id, "the first mailbox's owner");
    assert_eq!(act.subject, "Offer");
    // Parties resolved by address, case-insensitively.
    let party = |role, addr: &str| resolved_party(act, role, addr);
    assert_eq!(
        party(PartyRole::From, "ann@customer.test"),
        Some(RecordRef::Contact(w.ann.id))
    );
    assert_eq!(
        party(PartyRole::To, "bob@example.test"),
        Some(RecordRef::User(w.bob.id))
    );
    assert!(matches!(
        party(PartyRole::To, "support@example.test"),
        Some(RecordRef::Queue(_))
    ));
    // The attachment is the blob intake stored.
    assert_eq!(act.attachments.len(), 1);
    assert_eq!(act.attachments[0].file_name, "quote.pdf");
    let bytes = w
        .store
        .get_blob(&act.attachments[0].sha256)
        .await
        .unwrap()
        .unwrap();
    assert!(bytes.starts_with(b"%PDF-1.4"));
    // The queue mailbox put it in the queue, once.
    let qi = w
        .store
        .list_all::<QueueItem>(Some(w.org), &[])
        .await
        .unwrap();
    assert_eq!(qi.len(), 1);
    assert_eq!(qi[0].value.activity_id, act.id);
    let qt = w.item(&q).await.trace;
    assert!(qt.iter().any(|l| l.starts_with("queue item ")), "{qt:#?}");

    // The same message without a Message-ID (the content decides) in two mailboxes: one activity.
    let raw = message(
        None,
        "ann@customer.test",
        "alice@example.test, bob@example.test",
        "No id",
        "",
    );
    let a = w.deliver(&w.alice_mb, &raw).await;
    let b = w.deliver(&w.bob_mb, &raw).await;
    assert_eq!(w.track().await, 2);
    let ia = tracked_as(&w.item(&a).await);
    assert_eq!(ia, tracked_as(&w.item(&b).await));
    assert_eq!(w.activity(ia).await.mailbox_ids.len(), 2);
    assert_eq!(w.activities().await.len(), 2);
}

async fn replies_correlate(backend: Backend) {
    let w = world(backend).await;
    let raw = message(
        Some("offer-1@customer.test"),
        "ann@customer.test",
        "alice@example.test",
        "Offer",
        "",
    );
    let first = w.deliver(&w.alice_mb, &raw).await;
    w.track().await;
    let original = w.activity(tracked_as(&w.item(&first).await)).await;
    // Someone sets the regarding record on the activity.
    let account = Account {
        id: AccountId::new(),
        org_id: w.org,
        name: "Customer Ltd".into(),
        emails: vec![],
        owner_id: w.alice.id,
        created_at: chrono::Utc::now(),
    };
    w.store.insert(&account).await.unwrap();
    let mut o = original.clone();
    o.regarding = Some(RecordRef::Account(account.id));
    w.store.update(&o, None).await.unwrap();

    // From now on alice tracks only answers to CRM email.
    let mut alice_mb = w.alice_mb.clone();
    alice_mb.tracking = TrackingFilter::InResponseToCrmEmail;
    w.store.update(&alice_mb, None).await.unwrap();

    // A reply by In-Reply-To.
    let reply = w
        .deliver(
            &alice_mb,
            &message(
                Some("reply-1@customer.test"),
                "ann@customer.test",
                "alice@example.test",
                "Re: Offer",
                "In-Reply-To: <offer-1@customer.test>\r\nReferences: <offer-1@customer.test>\r\n",
            ),
        )
        .await;
    // A reply carrying only the tracking token of an email sent from the CRM.
    let now = chrono::Utc::now();
    let mut sent = original.clone();
    sent.id = ActivityId::new();
    sent.subject = "Quote CRM:0010001".into();
    sent.tracking_token = Some("CRM:0010001".into());
    sent.message_id = Some("crm-sent-1@example.test".into());
    sent.conversation_id = Some("crm-sent-1@example.test".into());
    sent.direction = Direction::Outgoing;
    sent.status = EmailStatus::Sent;
    sent.regarding = Some(RecordRef::Contact(w.ann.id));
    sent.created_at = now;
    w.store.insert(&sent).await.unwrap();
    let token_reply = w
        .deliver(
            &alice_mb,
            &message(
                Some("reply-2@customer.test"),
                "ann@customer.test",
                "alice@example.test",
                "AW: Quote CRM:0010001",
                "",
            ),
        )
        .await;
    // Not an answer to anything: not tracked under alice's filter.
    let unrelated = w
        .deliver(
            &alice_mb,
            &message(
                Some("news-1@customer.test"),
                "ann@customer.test",
                "alice@example.test",
                "Newsletter",
                "",
            ),
        )
        .await;
    assert_eq!(w.track().await, 3);

    let r = w.item(&reply).await;
    let ra = w.activity(tracked_as(&r)).await;
    assert_eq!(ra.regarding, Some(RecordRef::Account(account.id)));
    assert_eq!(ra.conversation_id, original.conversation_id);
    assert!(
        r.trace.iter().any(|l| l
            == &format!(
                "answers activity {} (by In-Reply-To/References <offer-1@customer.test>)",
                original.id
            )),
        "{:#?}",
        r.trace
    );

    let t = w.item(&token_reply).await;
    let ta = w.activity(tracked_as(&t)).await;
    assert_eq!(ta.regarding, Some(RecordRef::Contact(w.ann.id)));
    assert!(
        t.trace.iter().any(|l| l
            == &format!(
                "answers activity {} (by tracking token CRM:0010001)",
                sent.id
            )),
        "{:#?}",
        t.trace
    );

    let u = w.item(&unrelated).await;
    assert!(
        not_tracked_reason(&u).contains("only email in response to CRM email"),
        "{:#?}",
        u.trace
    );
}

async fn tracking_filters(backend: Backend) {
    let w = world(backend).await;
    let senders = [
        ("ann@customer.test", "contact"),
        ("stranger@elsewhere.test", "unknown"),
        ("bob@example.test", "user"),
    ];
    use TrackingFilter::{
        AllEmail, FromEmailEnabledRecords, FromLeadsContactsAccounts, InResponseToCrmEmail,
    };
    let expectations: &[(TrackingFilter, [bool; 3], &str)] = &[
        (AllEmail, [true, true, true], ""),
        (
            TrackingFilter::None,
            [false, false, false],
            "the filter tracks no email",
        ),
        (
            FromLeadsContactsAccounts,
            [true, false, false],
            "only email from leads, contacts and accounts",
        ),
        (
            FromEmailEnabledRecords,
            [true, false, true],
            "only email from email-enabled records",
        ),
        (
            InResponseToCrmEmail,
            [false, false, false],
            "only email in response to CRM email",
        ),
    ];
    for (n, (filter, accepts, why)) in expectations.iter().enumerate() {
        let mut mb = w.alice_mb.clone();
        mb.tracking = *filter;
        w.store.update(&mb, None).await.unwrap();
        let mut items = Vec::new();
        for (i, (from, _)) in senders.iter().enumerate() {
            let raw = message(
                Some(&format!("f{n}-{i}@x.test")),
                from,
                "alice@example.test",
                &format!("Filter {n} {i}"),
                "",
            );
            items.push(w.deliver(&mb, &raw).await);
        }
        assert_eq!(w.track().await, 3);
        for (i, item) in items.iter().enumerate() {
            let it = w.item(item).await;
            let label = format!("{filter:?} from {}", senders[i].1);
            if accepts[i] {
                tracked_as(&it);
            } else {
                let reason = not_tracked_reason(&it);
                assert!(reason.contains(why), "{label}: {reason}");
                assert!(
                    reason.contains(&format!("user {}", w.alice.id)),
                    "{label}: {reason}"
                );
            }
        }
    }
    let _ = &w.bob;
}

async fn user_to_user(backend: Backend) {
    let mut w = world(backend).await;
    let raw = message(
        Some("u2u-1@example.test"),
        "alice@example.test",
        "bob@example.test",
        "Lunch",
        "",
    );
    let a = w.deliver(&w.alice_mb, &raw).await;
    let b = w.deliver(&w.bob_mb, &raw).await;
    w.track().await;
    let aa = w.activity(tracked_as(&w.item(&a).await)).await;
    let ba = w.activity(tracked_as(&w.item(&b).await)).await;
    assert_ne!(aa.id, ba.id, "two activities");
    assert_eq!(
        (aa.owner_id, aa.direction, aa.status),
        (w.alice.id, Direction::Outgoing, EmailStatus::Sent)
    );
    assert_eq!(
        (ba.owner_id, ba.direction, ba.status),
        (w.bob.id, Direction::Incoming, EmailStatus::Received)
    );

    // Turned off: one activity for both.
    w.settings.track_user_to_user_as_two_activities = false;
    w.store.update(&w.settings, None).await.unwrap();
    let raw = message(
        Some("u2u-2@example.test"),
        "alice@example.test",
        "bob@example.test",
        "Dinner",
        "",
    );
    let a = w.deliver(&w.alice_mb, &raw).await;
    let b = w.deliver(&w.bob_mb, &raw).await;
    w.track().await;
    assert_eq!(tracked_as(&w.item(&a).await), tracked_as(&w.item(&b).await));
}

/// What the activity's party `addr` in `role` resolved to (the party must be there).
fn resolved_party(act: &EmailActivity, role: PartyRole, addr: &str) -> Option<RecordRef> {
    act.parties
        .iter()
        .find(|p| p.role == role && p.address == addr)
        .unwrap_or_else(|| panic!("{role:?} {addr}: {:#?}", act.parties))
        .resolved
}

#[tokio::test]
async fn one_activity_per_message_sqlite() {
    one_activity_per_message(Backend::Sqlite).await;
}
#[tokio::test]
async fn one_activity_per_message_postgres() {
    one_activity_per_message(Backend::Postgres).await;
}
#[tokio::test]
async fn replies_correlate_sqlite() {
    replies_correlate(Backend::Sqlite).await;
}
#[tokio::test]
async fn replies_correlate_postgres() {
    replies_correlate(Backend::Postgres).await;
}
#[tokio::test]
async fn tracking_filters_sqlite() {
    tracking_filters(Backend::Sqlite).await;
}
#[tokio::test]
async fn tracking_filters_postgres() {
    tracking_filters(Backend::Postgres).await;
}
#[tokio::test]
async fn user_to_user_sqlite() {
    user_to_user(Backend::Sqlite).await;
}
#[tokio::test]
async fn user_to_user_postgres() {
    user_to_user(Backend::Postgres).await;
}

/// A tracker that lost its lease half-way (its activity written, the item not marked) is
/// fenced; the worker that takes over finishes the item without a second activity. And an
/// unresolved sender becomes a contact when the organization says so.
async fn crash_and_auto_create(backend: Backend) {
    let mut w = world(backend).await;
    w.settings.auto_create_records = Some(serversync_model::settings::AutoCreateRecord::Contact);
    w.store.update(&w.settings, None).await.unwrap();
    let item = w
        .deliver(
            &w.alice_mb,
            &message(
                Some("new-1@newcomer.test"),
                "New Comer <NEW@newcomer.test>",
                "alice@example.test",
                "Hello",
                "",
            ),
        )
        .await;
    let ttl = Duration::from_secs(30);
    let lease = w
        .store
        .acquire_lease(&records::resource(w.org), "old-worker", ttl)
        .await
        .unwrap()
        .unwrap();
    // The lease runs out and another worker takes it before the old one marks the item.
    w.store.release_lease(&lease).await.unwrap();
    let err = records::track_batch(&w.store, &lease, w.org, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, serversync_store::StoreError::LeaseLost { .. }),
        "{err}"
    );
    assert_eq!(
        w.activities().await.len(),
        0,
        "the batch's activity is committed with the fenced mark, or not at all"
    );
    assert!(
        w.item(&item)
            .await
            .trace
            .iter()
            .all(|l| !l.starts_with("tracked as"))
    );

    assert_eq!(w.track().await, 1);
    assert_eq!(w.track().await, 0);
    let acts = w.activities().await;
    assert_eq!(acts.len(), 1, "no second activity: {acts:#?}");
    let it = w.item(&item).await;
    assert_eq!(tracked_as(&it), acts[0].id);
    let contacts: Vec<Contact> = w
        .store
        .list_all::<Contact>(Some(w.org), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.value)
        .filter(|c| c.emails == ["new@newcomer.test"])
        .collect();
    assert_eq!(contacts.len(), 1, "created once: {contacts:#?}");
    assert_eq!(contacts[0].owner_id, w.alice.id);
    assert_eq!(
        acts[0].parties[0].resolved,
        Some(RecordRef::Contact(contacts[0].id))
    );
}

#[tokio::test]
async fn crash_and_auto_create_sqlite() {
    crash_and_auto_create(Backend::Sqlite).await;
}
#[tokio::test]
async fn crash_and_auto_create_postgres() {
    crash_and_auto_create(Backend::Postgres).await;
}

/// A batch reads the committed state once (activities by key, their queue items, the
/// addresses' records) and sees its own decisions: a message tracked in an earlier batch is
/// linked to the later mailboxes and put in the queue once, a reply in the same batch answers
/// it; a contact's changed address and a disabled user are what the next batch resolves.
async fn batches_see_committed_state(backend: Backend) {
    let w = world(backend).await;
    let first = message(
        Some("order-1@customer.test"),
        "Ann <ann@customer.test>",
        "alice@example.test, bob@example.test, support@example.test",
        "Order",
        "",
    );
    w.deliver(&w.alice_mb, &first).await;
    assert_eq!(w.track().await, 1);
    let original = w.activities().await.remove(0);

    let b = w.deliver(&w.bob_mb, &first).await;
    let q = w.deliver(&w.queue_mb, &first).await;
    let reply = message(
        Some("order-2@example.test"),
        "alice@example.test",
        "ann@customer.test",
        "Re: Order",
        "In-Reply-To: <order-1@customer.test>\r\n",
    );
    let r = w.deliver(&w.alice_mb, &reply).await;
    assert_eq!(w.track().await, 3);
    assert_eq!(tracked_as(&w.item(&b).await), original.id);
    assert_eq!(tracked_as(&w.item(&q).await), original.id);
    let stored = w
        .store
        .fetch::<EmailActivity>(&original.id.to_string())
        .await
        .unwrap();
    assert_eq!(stored.version, 2, "linked twice, written once");
    let mut linked = stored.value.mailbox_ids.clone();
    linked.sort();
    let mut expected = vec![w.alice_mb.id, w.bob_mb.id, w.queue_mb.id];
    expected.sort();
    assert_eq!(linked, expected);
    let qi = w
        .store
        .list_all::<QueueItem>(Some(w.org), &[])
        .await
        .unwrap();
    assert_eq!(qi.len(), 1);
    assert_eq!(qi[0].value.activity_id, original.id);
    let rt = w.item(&r).await.trace;
    assert!(
        rt.iter()
            .any(|l| l.starts_with(&format!("answers activity {}", original.id))),
        "{rt:#?}"
    );
    assert_eq!(w.activities().await.len(), 2);

    // The queue mailbox sees the message again (another copy): still one queue item.
    let again = message(
        Some("order-1@customer.test"),
        "Ann <ann@customer.test>",
        "support@example.test",
        "Order",
        "X-Copy: 2\r\n",
    );
    let q2 = w.deliver(&w.queue_mb, &again).await;
    assert_eq!(w.track().await, 1);
    assert_eq!(tracked_as(&w.item(&q2).await), original.id);
    assert_eq!(
        w.store
            .list_all::<QueueItem>(Some(w.org), &[])
            .await
            .unwrap()
            .len(),
        1
    );

    // Ann's address changes and Bob is disabled: the next batch resolves what is stored now.
    let mut ann = w.ann.clone();
    ann.emails = vec!["ann@new.test".into()];
    w.store.update(&ann, None).await.unwrap();
    let mut bob = w.bob.clone();
    bob.disabled = true;
    w.store.update(&bob, None).await.unwrap();
    let third = message(
        Some("order-3@new.test"),
        "ann@new.test",
        "alice@example.test, bob@example.test",
        "Another",
        "",
    );
    let t = w.deliver(&w.alice_mb, &third).await;
    assert_eq!(w.track().await, 1);
    let act = w.activity(tracked_as(&w.item(&t).await)).await;
    let party = |role, addr: &str| resolved_party(&act, role, addr);
    assert_eq!(
        party(PartyRole::From, "ann@new.test"),
        Some(RecordRef::Contact(w.ann.id))
    );
    assert_eq!(
        party(PartyRole::To, "alice@example.test"),
        Some(RecordRef::User(w.alice.id))
    );
    assert_eq!(party(PartyRole::To, "bob@example.test"), None);
}

#[tokio::test]
async fn batches_see_committed_state_sqlite() {
    batches_see_committed_state(Backend::Sqlite).await;
}

#[tokio::test]
async fn batches_see_committed_state_postgres() {
    batches_see_committed_state(Backend::Postgres).await;
}
