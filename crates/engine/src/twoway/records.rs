//! The CRM side of two-way synchronization: appointments, contacts and tasks as one
//! [`CrmRecord`], with their synchronized values (`model::itemvalues`) and the writes the
//! syncer makes (tagged with its own change origin by the store it is given).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use serversync_model::crm::{ActivityParty, ActivityState, Appointment, Contact, PartyRole, Task};
use serversync_model::itemvalues as iv;
use serversync_model::mailbox::Mailbox;
use serversync_model::webhook::RecordType;
use serversync_model::{ActivityId, ContactId};
use serversync_store::{Store, StoreError, Stored};

/// An appointment, contact or task.
// Records are handled one at a time (a first round's listing holds at most one type's):
// boxing the appointment would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CrmRecord {
    Appointment(Appointment),
    Contact(Contact),
    Task(Task),
}

/// The namespace of the ids of records created from a server item: the id is a function of
/// the mailbox and the item, so a creation repeated after a crash finds the first one.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5e7e_5e7e_0018_4c0d_9a3e_1d0b_6a11_7a5c);

impl CrmRecord {
    pub fn kind(&self) -> RecordType {
        match self {
            CrmRecord::Appointment(_) => RecordType::Appointment,
            CrmRecord::Contact(_) => RecordType::Contact,
            CrmRecord::Task(_) => RecordType::Task,
        }
    }

    pub fn id(&self) -> String {
        match self {
            CrmRecord::Appointment(a) => a.id.to_string(),
            CrmRecord::Contact(c) => c.id.to_string(),
            CrmRecord::Task(t) => t.id.to_string(),
        }
    }

    /// The synchronized values.
    pub fn values(&self) -> Map<String, Value> {
        match self {
            CrmRecord::Appointment(a) => iv::appointment_values(a),
            CrmRecord::Contact(c) => iv::contact_values(c),
            CrmRecord::Task(t) => iv::task_values(t),
        }
    }

    /// Writes `changes` into the record (a field that does not fit names itself).
    pub fn apply(&mut self, changes: &Map<String, Value>) -> Result<(), String> {
        match self {
            CrmRecord::Appointment(a) => iv::apply_appointment(a, changes),
            CrmRecord::Contact(c) => iv::apply_contact(c, changes),
            CrmRecord::Task(t) => iv::apply_task(t, changes),
        }
    }

    /// The UID the record's server copy gets: an appointment's iCalendar UID when it has one,
    /// else one made from the record's id (so a repeated create finds the first).
    pub fn uid(&self) -> String {
        match self {
            CrmRecord::Appointment(a) => a
                .ical_uid
                .clone()
                .unwrap_or_else(|| format!("{}@serversync", a.id)),
            other => format!("{}@serversync", other.id()),
        }
    }

    /// A name for traces and alerts: the subject or the person's name.
    pub fn title(&self) -> &str {
        match self {
            CrmRecord::Appointment(a) => &a.subject,
            CrmRecord::Contact(c) => &c.full_name,
            CrmRecord::Task(t) => &t.subject,
        }
    }

    /// For an appointment, whether it ended before `now` (past meetings are never changed on
    /// the server).
    pub fn is_past(&self, now: DateTime<Utc>) -> bool {
        matches!(self, CrmRecord::Appointment(a) if a.ends_at < now)
    }

    /// Whether `mailbox`'s user organizes the appointment (true for contacts and tasks, and
    /// for an appointment without an organizer, which is its owner's own).
    pub fn organized_by(&self, mailbox: &Mailbox) -> bool {
        match self {
            CrmRecord::Appointment(a) => a
                .organizer
                .as_ref()
                .is_none_or(|o| o.address.eq_ignore_ascii_case(&mailbox.email)),
            _ => true,
        }
    }

    /// The user's sync filter (the reference's defaults): appointments the user owns,
    /// organizes or attends, contacts the user owns, open tasks the user owns. A record already
    /// linked stays in step (a task completed in the CRM is completed on the server too).
    pub fn in_filter(&self, mailbox: &Mailbox, linked: bool) -> bool {
        let me = mailbox.owner_id;
        match self {
            CrmRecord::Appointment(a) => {
                a.owner_id == me
                    || a.organizer
                        .iter()
                        .chain(a.attendees.iter())
                        .any(|p| p.address.eq_ignore_ascii_case(&mailbox.email))
            }
            CrmRecord::Contact(c) => c.owner_id == me,
            CrmRecord::Task(t) => t.owner_id == me && (linked || t.state == ActivityState::Open),
        }
    }

    /// A new record of `kind` from a server item's values, owned by the mailbox's user.
    pub fn from_server(
        kind: RecordType,
        mailbox: &Mailbox,
        remote_id: &str,
        values: &Value,
    ) -> Result<CrmRecord, String> {
        let seed = format!("{}\n{remote_id}", mailbox.id);
        let id = uuid::Uuid::new_v5(&ID_NAMESPACE, seed.as_bytes());
        let now = Utc::now();
        let fields = iv::synced_fields(values);
        let mut record = match kind {
            RecordType::Appointment => CrmRecord::Appointment(Appointment {
                id: ActivityId::from(id),
                org_id: mailbox.org_id,
                subject: String::new(),
                location: None,
                description: None,
                starts_at: now,
                ends_at: now,
                all_day: false,
                organizer: Some(ActivityParty {
                    role: PartyRole::From,
                    address: mailbox.email.clone(),
                    display_name: None,
                    resolved: None,
                }),
                attendees: Vec::new(),
                owner_id: mailbox.owner_id,
                regarding: None,
                state: ActivityState::Open,
                ical_uid: values["uid"].as_str().map(str::to_owned),
                time_zone: None,
                recurrence: None,
                created_at: now,
                updated_at: now,
            }),
            RecordType::Contact => CrmRecord::Contact(Contact {
                id: ContactId::from(id),
                org_id: mailbox.org_id,
                full_name: String::new(),
                emails: Vec::new(),
                account_id: None,
                company: None,
                job_title: None,
                phones: Vec::new(),
                owner_id: mailbox.owner_id,
                created_at: now,
            }),
            RecordType::Task => CrmRecord::Task(Task {
                id: ActivityId::from(id),
                org_id: mailbox.org_id,
                subject: String::new(),
                description: None,
                due_at: None,
                percent_complete: 0,
                owner_id: mailbox.owner_id,
                regarding: None,
                state: ActivityState::Open,
                created_at: now,
                updated_at: now,
            }),
            other => return Err(format!("{other:?} is not synchronized two ways")),
        };
        // An item without an organizer is the mailbox's user's own appointment (the organizer
        // set above stays).
        record.apply(&fields)?;
        Ok(record)
    }
}

fn stored<E>(s: Stored<E>, f: fn(E) -> CrmRecord) -> Stored<CrmRecord> {
    Stored {
        value: f(s.value),
        version: s.version,
        created_at: s.created_at,
        updated_at: s.updated_at,
    }
}

/// The record `id` of `kind` as stored (`None`: gone).
pub(crate) async fn load(
    store: &Store,
    kind: RecordType,
    id: &str,
) -> Result<Option<Stored<CrmRecord>>, StoreError> {
    fn wrap<E>(s: Option<Stored<E>>, f: fn(E) -> CrmRecord) -> Option<Stored<CrmRecord>> {
        s.map(|s| stored(s, f))
    }
    Ok(match kind {
        RecordType::Appointment => {
            wrap(store.get::<Appointment>(id).await?, CrmRecord::Appointment)
        }
        RecordType::Contact => wrap(store.get::<Contact>(id).await?, CrmRecord::Contact),
        RecordType::Task => wrap(store.get::<Task>(id).await?, CrmRecord::Task),
        _ => None,
    })
}

/// Inserts a new record; `Ok(false)` when a record with its id exists already.
pub(crate) async fn insert(store: &Store, r: &CrmRecord) -> Result<bool, StoreError> {
    let done = match r {
        CrmRecord::Appointment(a) => store.insert(a).await.map(|_| ()),
        CrmRecord::Contact(c) => store.insert(c).await.map(|_| ()),
        CrmRecord::Task(t) => store.insert(t).await.map(|_| ()),
    };
    match done {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Replaces the record if it is still at `version`.
pub(crate) async fn update(
    store: &Store,
    r: &mut CrmRecord,
    version: i64,
) -> Result<(), StoreError> {
    let now = Utc::now();
    match r {
        CrmRecord::Appointment(a) => {
            a.updated_at = now;
            store.update(a, Some(version)).await.map(|_| ())
        }
        CrmRecord::Contact(c) => store.update(c, Some(version)).await.map(|_| ()),
        CrmRecord::Task(t) => {
            t.updated_at = now;
            store.update(t, Some(version)).await.map(|_| ())
        }
    }
}

/// Deletes record `id` of `kind`.
pub(crate) async fn delete(store: &Store, kind: RecordType, id: &str) -> Result<(), StoreError> {
    match kind {
        RecordType::Appointment => store.delete::<Appointment>(id, None).await?,
        RecordType::Contact => store.delete::<Contact>(id, None).await?,
        RecordType::Task => store.delete::<Task>(id, None).await?,
        _ => false,
    };
    Ok(())
}

/// The records of `kind` in the user's filter, as stored, for the first synchronization.
pub(crate) async fn in_filter(
    store: &Store,
    mailbox: &Mailbox,
    kind: RecordType,
) -> Result<Vec<Stored<CrmRecord>>, StoreError> {
    use serversync_store::Col;
    fn wrap<E>(all: Vec<Stored<E>>, f: fn(E) -> CrmRecord) -> Vec<Stored<CrmRecord>> {
        all.into_iter().map(|s| stored(s, f)).collect()
    }
    let owner = ("owner_id", Col::text(mailbox.owner_id));
    let org = Some(mailbox.org_id);
    // Appointments and tasks share a table: each list names its kind.
    let all = match kind {
        RecordType::Appointment => wrap(
            store
                .list_all::<Appointment>(org, &[owner, ("kind", Col::text("appointment"))])
                .await?,
            CrmRecord::Appointment,
        ),
        RecordType::Contact => wrap(
            store.list_all::<Contact>(org, &[owner]).await?,
            CrmRecord::Contact,
        ),
        RecordType::Task => wrap(
            store
                .list_all::<Task>(org, &[owner, ("kind", Col::text("task"))])
                .await?,
            CrmRecord::Task,
        ),
        _ => Vec::new(),
    };
    Ok(all
        .into_iter()
        .filter(|r| r.value.in_filter(mailbox, false))
        .collect())
}
