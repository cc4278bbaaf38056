//! Composing email activities (issue #6, item 1): from a user's or a queue's mailbox, to
//! plain addresses or CRM records, with attachments, a regarding record and an optional
//! send-later time; as a draft or straight to pending send. Also sending a draft again, and
//! the Email Router handoff (claim, then report).
//!
//! Permissions: composing needs `write_records`; sending from another user's mailbox needs
//! `send_as_another_user` and that user's consent (`allow_send_as`); sending from a queue's
//! mailbox needs read access to the queue (its owner, a member, or a holder of
//! `read_mailboxes`).

use crate::admin::{Admin, AdminError, Result, actor};
use base64::Engine as _;
use chrono::Utc;
use serversync_model::auth::{Caller, Denied};
use serversync_model::crm::{
    ActivityParty, Attachment, Direction, EmailActivity, EmailStatus, NewEmail, PartyRole,
    Recipient, RecordRef, RouterClaim, RouterSend,
};
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::org::{Privilege, Queue, User};
use serversync_model::settings::OutgoingMethod;
use serversync_model::{ActivityId, AttachmentId, OrgId, ValidationErrors};
use serversync_store::{NewAuditEntry, Store};

/// The most a composed email's attachments may weigh together (bytes).
pub const MAX_ATTACHMENTS_BYTES: usize = 25 << 20;

/// How far ahead an email may be scheduled (`send_after`).
pub const MAX_SEND_AFTER_DAYS: i64 = 365;

/// The counter behind tracking tokens (one per organization).
const TOKEN_COUNTER: &str = "tracking_token";

fn denied(code: &'static str, message: String) -> AdminError {
    AdminError::Denied(Denied { code, message })
}

/// Whether `c` may send from mailbox `m` (see the module documentation).
async fn check_may_send_from(store: &Store, c: &Caller, m: &Mailbox) -> Result<()> {
    match m.regarding {
        MailboxRegarding::User(u) if u == c.user.id => Ok(()),
        MailboxRegarding::User(u) => {
            c.require(Privilege::SendAsAnotherUser)?;
            let user = store.fetch::<User>(&u.to_string()).await?.value;
            if user.allow_send_as {
                Ok(())
            } else {
                Err(denied(
                    "send_as_not_allowed",
                    format!(
                        "{} has not allowed other users to send email on their behalf (allow_send_as)",
                        user.email
                    ),
                ))
            }
        }
        MailboxRegarding::Queue(q) => {
            let queue = store.fetch::<Queue>(&q.to_string()).await?.value;
            if queue.owner_id == c.user.id
                || queue.member_ids.contains(&c.user.id)
                || c.has(Privilege::ReadMailboxes)
            {
                Ok(())
            } else {
                Err(denied(
                    "no_queue_access",
                    format!(
                        "sending from the queue {} needs read access to it: be its owner or a member",
                        queue.name
                    ),
                ))
            }
        }
    }
}

/// The primary email address of a record, if it has one.
async fn record_address(store: &Store, org: OrgId, r: RecordRef) -> Result<Option<String>> {
    use serversync_model::crm::{Account, Contact, Lead};
    let id = match r {
        RecordRef::User(i) => i.to_string(),
        RecordRef::Queue(i) => i.to_string(),
        RecordRef::Contact(i) => i.to_string(),
        RecordRef::Account(i) => i.to_string(),
        RecordRef::Lead(i) => i.to_string(),
        RecordRef::Activity(_) => return Ok(None),
    };
    macro_rules! first {
        ($t:ty, |$v:ident| $e:expr) => {
            store
                .get::<$t>(&id)
                .await?
                .filter(|s| s.value.org_id == org)
                .and_then(|s| {
                    let $v = s.value;
                    $e
                })
        };
    }
    Ok(match r {
        RecordRef::User(_) => first!(User, |v| Some(v.email)),
        RecordRef::Queue(_) => first!(Queue, |v| Some(v.email)),
        RecordRef::Contact(_) => first!(Contact, |v| v.emails.into_iter().next()),
        RecordRef::Account(_) => first!(Account, |v| v.emails.into_iter().next()),
        RecordRef::Lead(_) => first!(Lead, |v| v.emails.into_iter().next()),
        RecordRef::Activity(_) => None,
    })
}

/// The next tracking token of the organization for the mailbox owner's emails.
pub(crate) async fn next_tracking_token(
    store: &Store,
    org: OrgId,
    owner: serversync_model::UserId,
) -> Result<Option<String>> {
    let settings = crate::org_settings(store, org).await?;
    if !settings.tracking_token.enabled {
        return Ok(None);
    }
    // Users are numbered in the order they were created (their ids are time-ordered).
    let users = store.list_all::<User>(Some(org), &[]).await?;
    let user_number = users
        .iter()
        .position(|u| u.value.id == owner)
        .map_or(0, |p| p as u64 + 1);
    let counter = store.next_counter(org, TOKEN_COUNTER).await?;
    Ok(Some(serversync_model::track::format_token(
        &settings.tracking_token,
        user_number,
        counter,
    )))
}

impl Admin {
    /// Composes an email activity: a draft, or pending send (the sender loop or the Email
    /// Router takes it from there).
    pub async fn compose_email(
        &self,
        c: &Caller,
        org: OrgId,
        new: NewEmail,
    ) -> Result<EmailActivity> {
        c.require(Privilege::WriteRecords)?;
        let store = self.store();
        let m = match store.get::<Mailbox>(&new.from_mailbox.to_string()).await? {
            Some(m) if m.value.org_id == org => m.value,
            _ => {
                let mut e = ValidationErrors::default();
                e.push(
                    "not_found",
                    "from_mailbox",
                    "no such mailbox in this organization",
                );
                return Err(AdminError::Invalid(e));
            }
        };
        check_may_send_from(store, c, &m).await?;

        let mut errors = ValidationErrors::default();
        let mut parties = vec![ActivityParty {
            role: PartyRole::From,
            address: m.email.clone(),
            display_name: None,
            resolved: Some(match m.regarding {
                MailboxRegarding::User(u) => RecordRef::User(u),
                MailboxRegarding::Queue(q) => RecordRef::Queue(q),
            }),
        }];
        for (role, field, list) in [
            (PartyRole::To, "to", &new.to),
            (PartyRole::Cc, "cc", &new.cc),
            (PartyRole::Bcc, "bcc", &new.bcc),
        ] {
            for (i, r) in list.iter().enumerate() {
                let at = format!("{field}[{i}]");
                match r {
                    Recipient::Address(a) => {
                        if a.parse::<lettre::Address>().is_err() {
                            errors.push("invalid_email", &at, "not an email address");
                        } else {
                            parties.push(ActivityParty {
                                role,
                                address: a.clone(),
                                display_name: None,
                                resolved: None,
                            });
                        }
                    }
                    Recipient::Record(rec) => match record_address(store, org, *rec).await? {
                        Some(a) => parties.push(ActivityParty {
                            role,
                            address: a,
                            display_name: None,
                            resolved: Some(*rec),
                        }),
                        None => errors.push(
                            "no_email_address",
                            &at,
                            "no such record, or it has no email address",
                        ),
                    },
                }
            }
        }
        if !new.draft && parties.len() == 1 {
            errors.push(
                "required",
                "to",
                "give at least one recipient (to, cc or bcc), or save it as a draft",
            );
        }
        let mut attachments = Vec::new();
        let mut blobs = Vec::new();
        let mut total = 0usize;
        for (i, a) in new.attachments.iter().enumerate() {
            if a.file_name.trim().is_empty() {
                errors.push(
                    "required",
                    &format!("attachments[{i}].file_name"),
                    "enter a file name",
                );
            }
            match base64::engine::general_purpose::STANDARD.decode(&a.content_base64) {
                Ok(bytes) => {
                    total += bytes.len();
                    let sha = serversync_vault::sha256_hex(&bytes);
                    attachments.push(Attachment {
                        id: AttachmentId::new(),
                        file_name: a.file_name.clone(),
                        content_type: a
                            .content_type
                            .clone()
                            .unwrap_or_else(|| "application/octet-stream".into()),
                        size: bytes.len() as u64,
                        sha256: sha.clone(),
                        dropped_reason: None,
                    });
                    blobs.push((sha, bytes));
                }
                Err(e) => errors.push(
                    "invalid_base64",
                    &format!("attachments[{i}].content_base64"),
                    format!("not base64 ({e})"),
                ),
            }
        }
        if total > MAX_ATTACHMENTS_BYTES {
            errors.push(
                "too_large",
                "attachments",
                format!(
                    "the attachments weigh {total} bytes together; at most {MAX_ATTACHMENTS_BYTES} may be sent"
                ),
            );
        }
        if let Some(t) = new.send_after
            && t > Utc::now() + chrono::Duration::days(MAX_SEND_AFTER_DAYS)
        {
            errors.push(
                "out_of_range",
                "send_after",
                format!(
                    "an email can be scheduled at most {MAX_SEND_AFTER_DAYS} days ahead; save it as a draft to send it later"
                ),
            );
        }
        if let Some(r) = new.regarding
            && !self.record_exists(org, r).await?
        {
            errors.push(
                "not_found",
                "regarding",
                "no such record in this organization",
            );
        }
        let replied = match new.in_reply_to {
            Some(id) => match self.email_activity(c, org, id).await {
                Ok(a) => Some(a),
                Err(AdminError::NotFound { .. }) => {
                    errors.push("not_found", "in_reply_to", "no such email activity");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(AdminError::Invalid(errors));
        }
        let pairs: Vec<(&str, &[u8])> = blobs.iter().map(|(s, b)| (s.as_str(), &b[..])).collect();
        store.put_blobs(&pairs).await?;

        let now = Utc::now();
        let id = ActivityId::new();
        let (in_reply_to, references, conversation_id, replied_regarding) = match &replied {
            Some(r) => {
                let mut refs = r.references.clone();
                refs.extend(r.message_id.clone());
                (
                    r.message_id.clone(),
                    refs,
                    r.conversation_id.clone(),
                    r.regarding,
                )
            }
            None => (None, Vec::new(), None, None),
        };
        let a = EmailActivity {
            id,
            org_id: org,
            subject: new.subject,
            text_body: new.text_body,
            html_body: new.html_body,
            direction: Direction::Outgoing,
            status: if new.draft {
                EmailStatus::Draft
            } else {
                EmailStatus::PendingSend
            },
            owner_id: c.user.id,
            parties,
            attachments,
            regarding: new.regarding.or(replied_regarding),
            tracking_token: next_tracking_token(store, org, m.owner_id).await?,
            message_id: Some(crate::outgoing::message_id_for(&id, &m.email)),
            in_reply_to,
            references,
            content_key: None,
            conversation_id,
            mailbox_ids: vec![m.id],
            item_ids: Vec::new(),
            sent_at: None,
            received_at: None,
            send_after: new.send_after,
            delivery_attempts: 0,
            send_error: None,
            router_claim: None,
            send_trace: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        let mut a = a;
        if a.conversation_id.is_none() {
            a.conversation_id = a.message_id.clone();
        }
        store
            .insert_audited(&a, Some(NewAuditEntry::create(actor(c), &a)))
            .await?;
        self.wake_engine();
        Ok(a)
    }

    /// Why an email of the organization waits in pending send
    /// ([`crate::outgoing::waiting_reason`]); for a caller who may read or write records.
    pub async fn send_waiting(
        &self,
        c: &Caller,
        org: OrgId,
        a: &EmailActivity,
    ) -> Result<Option<String>> {
        if !c.has(Privilege::ReadRecords) {
            c.require(Privilege::WriteRecords)?;
        }
        if a.org_id != org {
            return Err(AdminError::NotFound {
                entity: "email activity",
                id: a.id.to_string(),
            });
        }
        Ok(crate::outgoing::waiting_reason(self.store(), a).await?)
    }

    /// Sends a draft, or tries again an email that failed or whose outcome is unknown (a
    /// person decided): back to pending send, attempts counted afresh.
    pub async fn send_activity(
        &self,
        c: &Caller,
        org: OrgId,
        id: ActivityId,
    ) -> Result<EmailActivity> {
        c.require(Privilege::WriteRecords)?;
        let s = self.stored_email_activity(c, org, id).await?;
        let mut a = s.value.clone();
        if a.direction != Direction::Outgoing
            || !matches!(
                a.status,
                EmailStatus::Draft | EmailStatus::Failed | EmailStatus::OutcomeUnknown
            )
        {
            return Err(AdminError::WrongState {
                code: "not_sendable",
                message: format!(
                    "only an outgoing draft, failed or outcome-unknown email can be sent; this one is {}",
                    serversync_model::wire_name(&a.status)
                ),
            });
        }
        let m = self
            .store()
            .fetch::<Mailbox>(
                &a.mailbox_ids
                    .first()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
            .await?
            .value;
        check_may_send_from(self.store(), c, &m).await?;
        if a.parties.iter().all(|p| p.role == PartyRole::From) {
            let mut e = ValidationErrors::default();
            e.push("required", "to", "the email has no recipients");
            return Err(AdminError::Invalid(e));
        }
        a.status = EmailStatus::PendingSend;
        a.delivery_attempts = 0;
        a.send_error = None;
        a.router_claim = None;
        a.updated_at = Utc::now();
        self.store()
            .update_audited(
                &a,
                Some(s.version),
                Some(NewAuditEntry::update(actor(c), &s.value, &a)),
            )
            .await?;
        self.wake_engine();
        Ok(a)
    }

    /// Email Router handoff: claims up to `limit` pending emails of mailboxes whose outgoing
    /// method is "email router" (only `mailbox`'s when given), each for `lease` — the router
    /// sends them and reports with [`Admin::report_router_send`]. A claim not reported in
    /// time makes the email "outcome unknown": it is never handed out twice.
    pub async fn claim_for_router(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: Option<serversync_model::MailboxId>,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<RouterSend>> {
        c.require(Privilege::WriteRecords)?;
        c.require(Privilege::ReadMailboxes)?;
        let store = self.store();
        let settings = crate::org_settings(store, org).await?;
        let now = Utc::now();
        let candidates = match mailbox {
            Some(m) => {
                match store.get::<Mailbox>(&m.to_string()).await? {
                    Some(found) if found.value.org_id == org => {}
                    _ => {
                        let mut e = ValidationErrors::default();
                        e.push(
                            "not_found",
                            "mailbox",
                            "no such mailbox in this organization",
                        );
                        return Err(AdminError::Invalid(e));
                    }
                }
                vec![m]
            }
            None => {
                store
                    .send_due_mailboxes(EmailStatus::PendingSend, now)
                    .await?
            }
        };
        // The organization's router mailboxes with due email, each with up to `limit` of its
        // due emails (the earliest due first); then taken in turn, one of each mailbox, so
        // one mailbox's long queue does not hold back another's.
        let mut queues = Vec::new();
        for mid in candidates {
            let Some(m) = store.get::<Mailbox>(&mid.to_string()).await? else {
                continue;
            };
            let m = m.value;
            if m.org_id != org
                || m.outgoing_method != OutgoingMethod::EmailRouter
                || m.needs_approval(&settings)
            {
                continue;
            }
            let due = store
                .send_due_emails(EmailStatus::PendingSend, mid, now, None, limit)
                .await?;
            queues.push(due.items.into_iter().map(|s| (m.clone(), s)).collect());
        }
        let mut out = Vec::new();
        for (m, s) in crate::outgoing::round_robin(queues) {
            if out.len() as u32 >= limit {
                break;
            }
            let mut a = s.value.clone();
            let claim = RouterClaim {
                id: uuid::Uuid::new_v4().to_string(),
                until: now + lease,
            };
            a.status = EmailStatus::Sending;
            a.router_claim = Some(claim.clone());
            a.delivery_attempts += 1;
            a.updated_at = now;
            let built = crate::outgoing::build(&m, &settings, &a, store).await;
            match store.update(&a, Some(s.version)).await {
                Ok(_) => {}
                // Claimed by another router meanwhile.
                Err(serversync_store::StoreError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            let (message, recipients) = match built {
                Ok(b) => b,
                Err(why) => {
                    a.status = EmailStatus::Failed;
                    a.send_error = Some(why);
                    a.router_claim = None;
                    let cur = store.fetch::<EmailActivity>(&a.id.to_string()).await?;
                    store.update(&a, Some(cur.version)).await?;
                    continue;
                }
            };
            out.push(RouterSend {
                claim_id: claim.id,
                claim_until: claim.until,
                mail_from: m.email.clone(),
                recipients,
                message_base64: base64::engine::general_purpose::STANDARD.encode(message),
                activity: a,
            });
        }
        Ok(out)
    }

    /// The Email Router's report on an email it claimed: sent, or failed with the reason.
    pub async fn report_router_send(
        &self,
        c: &Caller,
        org: OrgId,
        id: ActivityId,
        claim_id: &str,
        sent: bool,
        error: Option<String>,
    ) -> Result<EmailActivity> {
        c.require(Privilege::WriteRecords)?;
        let s = self.stored_email_activity(c, org, id).await?;
        let mut a = s.value.clone();
        if a.status != EmailStatus::Sending
            || a.router_claim.as_ref().is_none_or(|k| k.id != claim_id)
        {
            return Err(AdminError::WrongState {
                code: "claim_not_held",
                message: format!(
                    "this email is not held by claim {claim_id:?} (it is {}): the claim may have expired",
                    serversync_model::wire_name(&a.status)
                ),
            });
        }
        a.router_claim = None;
        a.updated_at = Utc::now();
        if sent {
            a.status = EmailStatus::Sent;
            a.sent_at = Some(a.updated_at);
            a.send_error = None;
        } else {
            a.status = EmailStatus::Failed;
            a.send_error = Some(
                error.unwrap_or_else(|| "the Email Router reported the send as failed".into()),
            );
        }
        self.store().update(&a, Some(s.version)).await?;
        Ok(a)
    }

    async fn stored_email_activity(
        &self,
        c: &Caller,
        org: OrgId,
        id: ActivityId,
    ) -> Result<serversync_store::Stored<EmailActivity>> {
        // Visibility as for reading (a basic user sees only their own).
        self.email_activity(c, org, id).await?;
        Ok(self.store().fetch::<EmailActivity>(&id.to_string()).await?)
    }
}
