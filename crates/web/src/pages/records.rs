//! CRM records, read only: email activities (a list with filters and search, and one
//! activity with its parties, thread, attachments, delivery and the items it came from), the
//! outgoing queue (with "send again" for failed and outcome-unknown email), queue items, one
//! stored item with its whole decision trace, and a contact's, account's, lead's, user's or
//! queue's page.

use super::{Page, done, error, fail, render, when, with_status, words};
use crate::Web;
use crate::names::{Names, esc, ids_in, subject_or_none, tracked_activity};
use crate::session::Session;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serversync_engine::admin::ActivityFilter;
use serversync_model::crm::{
    Account, Contact, Direction, EmailActivity, EmailStatus, Lead, PartyRole, RecordRef,
};
use serversync_model::item::MailItem;
use serversync_model::{ActivityId, ItemId, MailboxId, QueueId, UserId};
use std::collections::HashMap;

/// Rows on one page of a list.
pub const PAGE_SIZE: u32 = 25;

/// A date from a date field (`2024-05-01`) as the start of that day, UTC.
pub fn day(s: &str) -> Option<DateTime<Utc>> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// The query string of a list's filters, for its paging links (empty values left out).
pub fn keep(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

/// Mailbox addresses by id, of the mailboxes the caller may read.
async fn mailbox_emails(web: &Web, s: &Session) -> HashMap<MailboxId, String> {
    web.admin
        .list_mailboxes(&s.caller, s.org.id, &Default::default(), None, 1000)
        .await
        .map(|p| {
            p.items
                .into_iter()
                .map(|m| (m.value.id, m.value.email))
                .collect()
        })
        .unwrap_or_default()
}

fn sender(a: &EmailActivity) -> Option<&serversync_model::crm::ActivityParty> {
    a.parties.iter().find(|p| p.role == PartyRole::From)
}

fn recipients(a: &EmailActivity) -> String {
    a.parties
        .iter()
        .filter(|p| p.role != PartyRole::From)
        .map(|p| p.address.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The regarding record and the sender's record of activities, looked up at once.
async fn activity_names(web: &Web, s: &Session, list: &[EmailActivity]) -> Names {
    let mut refs: Vec<RecordRef> = Vec::new();
    for a in list {
        refs.extend(a.regarding);
        refs.extend(sender(a).and_then(|p| p.resolved));
    }
    let mut names = Names::default();
    names.load_refs(web, s, &refs).await;
    names
}

pub struct ActivityRow {
    pub id: String,
    pub when: String,
    pub direction: String,
    pub status: String,
    /// HTML: the sender's address and, when resolved, a link to its record.
    pub from: String,
    pub subject: String,
    /// HTML: a link to the regarding record.
    pub regarding: String,
}

fn activity_row(a: &EmailActivity, names: &Names) -> ActivityRow {
    let from = match sender(a) {
        Some(p) => match &p.resolved {
            Some(r) => format!("{} ({})", names.link(r), esc(&p.address)),
            None => esc(&p.address),
        },
        None => String::new(),
    };
    ActivityRow {
        id: a.id.to_string(),
        when: when(a.received_at.or(a.sent_at).or(Some(a.created_at))),
        direction: words(&a.direction),
        status: words(&a.status),
        from,
        subject: subject_or_none(&a.subject).to_owned(),
        regarding: a.regarding.map(|r| names.link(&r)).unwrap_or_default(),
    }
}

#[derive(Deserialize, Default)]
pub struct ActivitiesQuery {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    mailbox: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    before: Option<String>,
}

#[derive(Template)]
#[template(path = "activities.html")]
struct ActivitiesPage {
    page: Page,
    rows: Vec<ActivityRow>,
    q: ActivitiesQuery,
    mailboxes: Vec<(String, String)>,
    statuses: Vec<(&'static str, &'static str)>,
    /// The query of the next (older) page.
    older: Option<String>,
    first_page: bool,
    /// The filters' query, for "Newest".
    filters: String,
}

const STATUSES: [(&str, &str); 9] = [
    ("received", "Received"),
    ("sent", "Sent"),
    ("completed", "Completed"),
    ("draft", "Draft"),
    ("pending_send", "Pending send"),
    ("sending", "Sending"),
    ("failed", "Failed"),
    ("outcome_unknown", "Outcome unknown"),
    ("canceled", "Canceled"),
];

pub async fn activities(
    State(web): State<Web>,
    s: Session,
    Query(q): Query<ActivitiesQuery>,
) -> Response {
    let f = ActivityFilter {
        mailbox: q.mailbox.parse().ok(),
        since: day(&q.since),
        until: day(&q.until).map(|d| d + chrono::Duration::days(1)),
        status: serde_json::from_value(serde_json::json!(q.status)).ok(),
        from: Some(q.from.clone()),
        subject: Some(q.subject.clone()),
        message_id: Some(q.message_id.clone()),
        ..Default::default()
    };
    let page = match web
        .admin
        .email_activities_newest(&s.caller, s.org.id, &f, q.before.as_deref(), PAGE_SIZE)
        .await
    {
        Ok(p) => p,
        Err(e) => return fail(&s, e),
    };
    let list: Vec<EmailActivity> = page.items.into_iter().map(|a| a.value).collect();
    let names = activity_names(&web, &s, &list).await;
    let rows = list.iter().map(|a| activity_row(a, &names)).collect();
    let filters = keep(&[
        ("subject", &q.subject),
        ("from", &q.from),
        ("message_id", &q.message_id),
        ("status", &q.status),
        ("mailbox", &q.mailbox),
        ("since", &q.since),
        ("until", &q.until),
    ]);
    let older = page.next.map(|n| {
        let before = keep(&[("before", &n)]);
        if filters.is_empty() {
            before
        } else {
            format!("{filters}&{before}")
        }
    });
    let mut mailboxes: Vec<(String, String)> = mailbox_emails(&web, &s)
        .await
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    mailboxes.sort_by(|a, b| a.1.cmp(&b.1));
    render(&ActivitiesPage {
        page: Page::new(&s, "Email activities", "activities"),
        rows,
        first_page: q.before.is_none(),
        q,
        mailboxes,
        statuses: STATUSES.to_vec(),
        older,
        filters,
    })
}

pub struct PartyRow {
    pub role: String,
    pub address: String,
    pub name: String,
    /// HTML: the record it resolved to, or why not.
    pub resolved: String,
}

pub struct ItemLink {
    pub id: String,
    pub mailbox_id: String,
    pub mailbox: String,
    pub received: String,
    pub decision: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage {
    page: Page,
    a: EmailActivity,
    subject: String,
    facts: Vec<(&'static str, String)>,
    /// HTML values (links).
    links: Vec<(&'static str, String)>,
    parties: Vec<PartyRow>,
    thread: Vec<(String, String, String, bool)>,
    items: Vec<ItemLink>,
    mailboxes: Vec<(String, String)>,
    send_again: bool,
}

pub async fn activity(State(web): State<Web>, s: Session, Path(id): Path<String>) -> Response {
    let Ok(aid) = id.parse::<ActivityId>() else {
        return with_status(
            error(&s, format!("{id:?} is not an activity id")),
            StatusCode::NOT_FOUND,
        );
    };
    let a = match web.admin.email_activity(&s.caller, s.org.id, aid).await {
        Ok(a) => a,
        Err(e) => return fail(&s, e),
    };
    let mut refs: Vec<RecordRef> = a.parties.iter().filter_map(|p| p.resolved).collect();
    refs.extend(a.regarding);
    refs.push(RecordRef::User(a.owner_id));
    let mut names = Names::default();
    names.load_refs(&web, &s, &refs).await;
    let parties = a
        .parties
        .iter()
        .map(|p| PartyRow {
            role: words(&p.role),
            address: p.address.clone(),
            name: p.display_name.clone().unwrap_or_default(),
            resolved: match &p.resolved {
                Some(r) => names.link(r),
                None => "unresolved: no record has this address".into(),
            },
        })
        .collect();
    let waiting = web
        .admin
        .send_waiting(&s.caller, s.org.id, &a)
        .await
        .ok()
        .flatten();
    let mut facts = vec![
        ("Direction", words(&a.direction)),
        ("Status", words(&a.status)),
        ("Sent", when(a.sent_at)),
        ("Received", when(a.received_at)),
        (
            "Message-ID",
            a.message_id.clone().unwrap_or_else(|| "—".into()),
        ),
        (
            "Conversation",
            a.conversation_id.clone().unwrap_or_else(|| "—".into()),
        ),
    ];
    if a.direction == Direction::Outgoing {
        facts.push(("Delivery attempts", a.delivery_attempts.to_string()));
        facts.push(("Send after", when(a.send_after)));
        if let Some(w) = waiting {
            facts.push(("Waiting because", w));
        }
        if let Some(e) = &a.send_error {
            facts.push(("Last send error", e.clone()));
        }
        for t in &a.send_trace {
            facts.push(("On the way out", t.clone()));
        }
    }
    let mut links = vec![("Owner", names.link(&RecordRef::User(a.owner_id)))];
    if let Some(r) = &a.regarding {
        links.push(("Regarding", names.link(r)));
    }
    let thread = match web.admin.activity_thread(&s.caller, s.org.id, aid).await {
        Ok(t) => t
            .into_iter()
            .take(100)
            .map(|t| {
                (
                    t.id.to_string(),
                    when(t.received_at.or(t.sent_at).or(Some(t.created_at))),
                    subject_or_none(&t.subject).to_owned(),
                    t.id == a.id,
                )
            })
            .collect(),
        Err(e) => return fail(&s, e),
    };
    let emails = mailbox_emails(&web, &s).await;
    let mut items = Vec::new();
    for iid in &a.item_ids {
        if let Ok(i) = web.admin.item(&s.caller, s.org.id, *iid).await {
            items.push(ItemLink {
                id: i.id.to_string(),
                mailbox_id: i.mailbox_id.to_string(),
                mailbox: emails.get(&i.mailbox_id).cloned().unwrap_or_default(),
                received: when(Some(i.received_at)),
                decision: words(&i.decision),
            });
        }
    }
    let mailboxes = a
        .mailbox_ids
        .iter()
        .filter_map(|m| emails.get(m).map(|e| (m.to_string(), e.clone())))
        .collect();
    let send_again = a.direction == Direction::Outgoing
        && matches!(a.status, EmailStatus::Failed | EmailStatus::OutcomeUnknown);
    let subject = subject_or_none(&a.subject).to_owned();
    render(&ActivityPage {
        page: Page::new(&s, &format!("Email “{subject}”"), "activities"),
        subject,
        facts,
        links,
        parties,
        thread,
        items,
        mailboxes,
        send_again,
        a,
    })
}

pub struct OutgoingRow {
    pub id: String,
    pub subject: String,
    pub to: String,
    pub mailbox: String,
    pub attempts: u32,
    pub updated: String,
    /// Why it waits, or the server's reply / the reason it failed.
    pub why: String,
}

pub struct OutgoingSection {
    pub id: &'static str,
    pub title: &'static str,
    pub hint: &'static str,
    pub rows: Vec<OutgoingRow>,
    pub more: bool,
    pub send_again: bool,
}

#[derive(Template)]
#[template(path = "outgoing.html")]
struct OutgoingPage {
    page: Page,
    sections: Vec<OutgoingSection>,
}

#[derive(Deserialize)]
pub struct Notice {
    done: Option<String>,
}

pub async fn outgoing(State(web): State<Web>, s: Session, Query(n): Query<Notice>) -> Response {
    let emails = mailbox_emails(&web, &s).await;
    let mut sections = Vec::new();
    for (status, id, title, hint) in [
        (
            EmailStatus::PendingSend,
            "pending",
            "Pending send",
            "Due now, or waiting: the reason says for what.",
        ),
        (
            EmailStatus::Sending,
            "sending",
            "Sending",
            "Handed to the mail server or an Email Router that has not answered yet.",
        ),
        (
            EmailStatus::Failed,
            "failed",
            "Failed",
            "The server refused it or the retries ran out: the server's reply is shown. \"Send again\" puts it back in pending send.",
        ),
        (
            EmailStatus::OutcomeUnknown,
            "unknown",
            "Outcome unknown",
            "Sending was interrupted and it could not be found out whether the server took it: serversync never sends it again by itself. Check the recipient's copy, then decide.",
        ),
    ] {
        let f = ActivityFilter {
            status: Some(status),
            ..Default::default()
        };
        let page = match web
            .admin
            .email_activities_newest(&s.caller, s.org.id, &f, None, PAGE_SIZE)
            .await
        {
            Ok(p) => p,
            Err(e) => return fail(&s, e),
        };
        let mut rows = Vec::new();
        for a in page.items.into_iter().map(|a| a.value) {
            let why = match status {
                EmailStatus::PendingSend => web
                    .admin
                    .send_waiting(&s.caller, s.org.id, &a)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "due now: it goes out at the next round".into()),
                _ => a.send_error.clone().unwrap_or_default(),
            };
            rows.push(OutgoingRow {
                id: a.id.to_string(),
                subject: subject_or_none(&a.subject).to_owned(),
                to: recipients(&a),
                mailbox: a
                    .mailbox_ids
                    .first()
                    .and_then(|m| emails.get(m).cloned())
                    .unwrap_or_default(),
                attempts: a.delivery_attempts,
                updated: when(Some(a.updated_at)),
                why,
            });
        }
        sections.push(OutgoingSection {
            id,
            title,
            hint,
            rows,
            more: page.next.is_some(),
            send_again: matches!(status, EmailStatus::Failed | EmailStatus::OutcomeUnknown),
        });
    }
    render(&OutgoingPage {
        page: Page::new(&s, "Outgoing queue", "outgoing").with_notice(n.done),
        sections,
    })
}

/// "Send again": a failed or outcome-unknown email back to pending send, through the API
/// (which checks the privilege, the state and the sending mailbox, and audits the change).
pub async fn send_again(State(web): State<Web>, s: Session, Path(id): Path<String>) -> Response {
    match web
        .api(&s, Method::POST, &format!("/activities/{id}/send"), None)
        .await
    {
        Ok(_) => done(
            "/outgoing",
            "The email is back in pending send: it goes out at the next round.",
        ),
        Err(p) => {
            let status = StatusCode::from_u16(p.status)
                .ok()
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_REQUEST);
            with_status(error(&s, p.detail), status)
        }
    }
}

pub struct QueueRow {
    pub entered: String,
    pub queue: String,
    pub activity_id: String,
    pub subject: String,
    pub from: String,
    pub worker: String,
}

#[derive(Deserialize, Default)]
pub struct QueueQuery {
    #[serde(default)]
    queue: String,
    after: Option<String>,
}

#[derive(Template)]
#[template(path = "queue_items.html")]
struct QueueItemsPage {
    page: Page,
    rows: Vec<QueueRow>,
    queues: Vec<(String, String)>,
    queue: String,
    next: Option<String>,
    first_page: bool,
}

pub async fn queue_items(
    State(web): State<Web>,
    s: Session,
    Query(q): Query<QueueQuery>,
) -> Response {
    let queue: Option<QueueId> = q.queue.parse().ok();
    let page = match web
        .admin
        .list_queue_items(&s.caller, s.org.id, queue, q.after.as_deref(), PAGE_SIZE)
        .await
    {
        Ok(p) => p,
        Err(e) => return fail(&s, e),
    };
    let queues: HashMap<QueueId, String> = web
        .admin
        .list_queues(s.org.id, None, 1000)
        .await
        .map(|p| {
            p.items
                .into_iter()
                .map(|q| (q.value.id, q.value.name))
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut workers = Names::default();
    for qi in page.items.into_iter().map(|q| q.value) {
        let a = web
            .admin
            .email_activity(&s.caller, s.org.id, qi.activity_id)
            .await
            .ok();
        let worker = match qi.worker_id {
            Some(w) => {
                workers.load_refs(&web, &s, &[RecordRef::User(w)]).await;
                workers.link(&RecordRef::User(w))
            }
            None => "—".into(),
        };
        rows.push(QueueRow {
            entered: when(Some(qi.entered_at)),
            queue: queues.get(&qi.queue_id).cloned().unwrap_or_default(),
            activity_id: qi.activity_id.to_string(),
            subject: a
                .as_ref()
                .map(|a| subject_or_none(&a.subject).to_owned())
                .unwrap_or_else(|| "(activity gone)".into()),
            from: a
                .as_ref()
                .and_then(|a| sender(a).map(|p| p.address.clone()))
                .unwrap_or_default(),
            worker,
        });
    }
    let mut queues: Vec<(String, String)> = queues
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    queues.sort_by(|a, b| a.1.cmp(&b.1));
    render(&QueueItemsPage {
        page: Page::new(&s, "Queue items", "queue-items"),
        rows,
        queues,
        next: page
            .next
            .map(|n| keep(&[("queue", &q.queue), ("after", &n)])),
        first_page: q.after.is_none(),
        queue: q.queue,
    })
}

#[derive(Template)]
#[template(path = "item.html")]
struct ItemPage {
    page: Page,
    i: MailItem,
    mailbox: String,
    facts: Vec<(&'static str, String)>,
    /// HTML: each step of the trace with its records named.
    trace: Vec<String>,
    activity: Option<(String, String)>,
}

pub async fn item(State(web): State<Web>, s: Session, Path(id): Path<String>) -> Response {
    let Ok(iid) = id.parse::<ItemId>() else {
        return with_status(
            error(&s, format!("{id:?} is not an item id")),
            StatusCode::NOT_FOUND,
        );
    };
    let i = match web.admin.item(&s.caller, s.org.id, iid).await {
        Ok(i) => i,
        Err(e) => return fail(&s, e),
    };
    let mut names = Names::default();
    let refs: Vec<_> = i.trace.iter().flat_map(|l| ids_in(l)).collect();
    names.load(&web, &s, &refs).await;
    let trace = i.trace.iter().map(|l| names.trace_line(l)).collect();
    let activity = tracked_activity(&i.trace)
        .and_then(|a| names.get(&a).map(|n| (n.href.clone(), n.label.clone())));
    let mailbox = web
        .admin
        .mailbox(&s.caller, s.org.id, i.mailbox_id)
        .await
        .map(|m| m.value.email)
        .unwrap_or_default();
    let facts = vec![
        ("From", i.from.clone().unwrap_or_default()),
        ("To", i.to.join(", ")),
        ("Cc", i.cc.join(", ")),
        ("Date header", when(i.sent_at)),
        ("Received by the server", when(Some(i.received_at))),
        ("Taken in by serversync", when(Some(i.created_at))),
        ("Where", {
            let mut w = i.source.position();
            if let Some(f) = i.source.folder() {
                w = format!("{w} in {f}");
            }
            w
        }),
        (
            "Message-ID",
            i.message_id.clone().unwrap_or_else(|| "—".into()),
        ),
        ("Size", format!("{} bytes", i.size)),
        (
            "Raw message",
            if i.raw_kept { "kept" } else { "not kept" }.into(),
        ),
        ("Decision", words(&i.decision)),
    ];
    render(&ItemPage {
        page: Page::new(
            &s,
            &format!(
                "Item “{}”",
                subject_or_none(i.subject.as_deref().unwrap_or_default())
            ),
            "mailboxes",
        ),
        mailbox,
        facts,
        trace,
        activity,
        i,
    })
}

#[derive(Template)]
#[template(path = "record.html")]
struct RecordPage {
    page: Page,
    kind: String,
    name: String,
    facts: Vec<(&'static str, String)>,
    /// HTML values (links).
    links: Vec<(&'static str, String)>,
    /// The record's own mailbox (users and queues).
    mailbox: Option<(String, String)>,
    from_rows: Vec<ActivityRow>,
    from_address: String,
    regarding_rows: Vec<ActivityRow>,
}

/// A contact's, account's, lead's, user's or queue's page: what it is, and the latest email
/// from its address and regarding it.
pub async fn record(
    State(web): State<Web>,
    s: Session,
    Path((kind, id)): Path<(String, String)>,
) -> Response {
    let (c, org) = (&s.caller, s.org.id);
    if let Err(d) = c.require(serversync_model::org::Privilege::ReadRecords) {
        return fail(&s, d.into());
    }
    let not_found = || serversync_engine::AdminError::NotFound {
        entity: "record",
        id: id.clone(),
    };
    let mut facts: Vec<(&'static str, String)> = Vec::new();
    let mut links: Vec<(&'static str, String)> = Vec::new();
    let mut names = Names::default();
    let mut owner: Option<UserId> = None;
    let (name, emails, this, kind_name) = match kind.as_str() {
        "contact" => match web.admin.record::<Contact>(c, org, &id).await {
            Ok(r) => {
                let r = r.value;
                owner = Some(r.owner_id);
                if let Some(co) = &r.company {
                    facts.push(("Company", co.clone()));
                }
                if let Some(j) = &r.job_title {
                    facts.push(("Job title", j.clone()));
                }
                if !r.phones.is_empty() {
                    facts.push(("Phones", r.phones.join(", ")));
                }
                if let Some(acc) = r.account_id {
                    names.load_refs(&web, &s, &[RecordRef::Account(acc)]).await;
                    links.push(("Account", names.link(&RecordRef::Account(acc))));
                }
                (r.full_name, r.emails, RecordRef::Contact(r.id), "Contact")
            }
            Err(e) => return fail(&s, e),
        },
        "account" => match web.admin.record::<Account>(c, org, &id).await {
            Ok(r) => {
                let r = r.value;
                owner = Some(r.owner_id);
                (r.name, r.emails, RecordRef::Account(r.id), "Account")
            }
            Err(e) => return fail(&s, e),
        },
        "lead" => match web.admin.record::<Lead>(c, org, &id).await {
            Ok(r) => {
                let r = r.value;
                owner = Some(r.owner_id);
                if let Some(co) = &r.company {
                    facts.push(("Company", co.clone()));
                }
                (r.full_name, r.emails, RecordRef::Lead(r.id), "Lead")
            }
            Err(e) => return fail(&s, e),
        },
        "user" => {
            let Ok(uid) = id.parse::<UserId>() else {
                return fail(&s, not_found());
            };
            match web.admin.user(org, uid).await {
                Ok(u) => (u.full_name, vec![u.email], RecordRef::User(u.id), "User"),
                Err(e) => return fail(&s, e),
            }
        }
        "queue" => {
            let Ok(qid) = id.parse::<QueueId>() else {
                return fail(&s, not_found());
            };
            let found = web
                .admin
                .list_queues(org, None, 1000)
                .await
                .ok()
                .and_then(|p| p.items.into_iter().find(|q| q.value.id == qid));
            match found {
                Some(q) => (
                    q.value.name,
                    vec![q.value.email],
                    RecordRef::Queue(q.value.id),
                    "Queue",
                ),
                None => return fail(&s, not_found()),
            }
        }
        _ => return fail(&s, not_found()),
    };
    facts.insert(0, ("Email addresses", emails.join(", ")));
    if let Some(o) = owner {
        names.load_refs(&web, &s, &[RecordRef::User(o)]).await;
        links.push(("Owner", names.link(&RecordRef::User(o))));
    }
    let mailbox = match this {
        RecordRef::User(_) | RecordRef::Queue(_) => {
            let email = emails.first().cloned().unwrap_or_default().to_lowercase();
            mailbox_emails(&web, &s)
                .await
                .into_iter()
                .find(|(_, e)| e.to_lowercase() == email)
                .map(|(m, e)| (m.to_string(), e))
        }
        _ => None,
    };
    let from_address = emails.first().cloned().unwrap_or_default();
    let mut lists = Vec::new();
    for f in [
        ActivityFilter {
            from: Some(from_address.clone()),
            ..Default::default()
        },
        ActivityFilter {
            regarding: Some(this),
            ..Default::default()
        },
    ] {
        let list: Vec<EmailActivity> = if f.from.as_deref() == Some("") {
            Vec::new()
        } else {
            match web
                .admin
                .email_activities_newest(c, org, &f, None, 10)
                .await
            {
                Ok(p) => p.items.into_iter().map(|a| a.value).collect(),
                Err(e) => return fail(&s, e),
            }
        };
        let n = activity_names(&web, &s, &list).await;
        lists.push(list.iter().map(|a| activity_row(a, &n)).collect::<Vec<_>>());
    }
    let regarding_rows = lists.pop().unwrap_or_default();
    let from_rows = lists.pop().unwrap_or_default();
    render(&RecordPage {
        page: Page::new(&s, &format!("{kind_name} {name}"), "activities"),
        kind: kind_name.to_owned(),
        name,
        facts,
        links,
        mailbox,
        from_rows,
        from_address,
        regarding_rows,
    })
}
