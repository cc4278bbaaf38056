//! Mailboxes: reading, listing, changing, applying the default settings, approval and
//! "sync now".

use super::{
    Admin, AdminError, CONCURRENT_WRITE_TRIES, Result, actor, fit_act_to_profile, invalid, now,
};
use serversync_model::alert::{Alert, Severity};
use serversync_model::auth::Caller;
use serversync_model::job::Job;
use serversync_model::mailbox::{ApprovalStatus, DirectionStatus, Mailbox, check_profile_fits};
use serversync_model::org::Privilege;
use serversync_model::settings::{ActMethod, IncomingMethod};
use serversync_model::{MailboxId, OrgId, ProfileId, Secret, UserId};
use serversync_store::{Col, NewAuditEntry, Page, StoreError, Stored};

/// Filters for the mailbox list.
#[derive(Debug, Default, Clone)]
pub struct MailboxFilter {
    pub profile_id: Option<ProfileId>,
    pub approval: Option<ApprovalStatus>,
    /// Overall status: not_run / success / failure.
    pub status: Option<String>,
    pub owner_id: Option<UserId>,
}

impl Admin {
    pub async fn mailbox(&self, c: &Caller, org: OrgId, id: MailboxId) -> Result<Stored<Mailbox>> {
        match self.store.get::<Mailbox>(&id.to_string()).await? {
            Some(m) if m.value.org_id == org && c.can_read_mailbox(&m.value) => Ok(m),
            _ => Err(AdminError::NotFound {
                entity: "mailbox",
                id: id.to_string(),
            }),
        }
    }

    /// The links of mailbox `id`'s synchronized appointments, contacts and tasks to their
    /// server items, in record-id order, `limit` at a time after the record id `after`; for
    /// a caller who may read the mailbox and records.
    pub async fn remote_links(
        &self,
        c: &Caller,
        org: OrgId,
        id: MailboxId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Stored<serversync_model::sync::RemoteLink>>> {
        self.mailbox(c, org, id).await?;
        c.require(Privilege::ReadRecords)?;
        Ok(self.store.list_remote_links(org, id, after, limit).await?)
    }

    pub async fn list_mailboxes(
        &self,
        c: &Caller,
        org: OrgId,
        f: &MailboxFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Mailbox>> {
        let mut filters: Vec<(&'static str, Col)> = Vec::new();
        if let Some(p) = f.profile_id {
            filters.push(("profile_id", Col::text(p)));
        }
        if let Some(a) = f.approval {
            filters.push(("approval", Col::text(serversync_model::wire_name(&a))));
        }
        if let Some(s) = &f.status {
            filters.push(("overall_status", Col::text(s)));
        }
        let owner = if c.has(Privilege::ReadMailboxes) {
            f.owner_id
        } else {
            Some(c.user.id)
        };
        if let Some(o) = owner {
            filters.push(("owner_id", Col::text(o)));
        }
        Ok(self
            .store
            .list::<Mailbox>(Some(org), &filters, after, limit)
            .await?)
    }

    /// Edits a mailbox. Changing the profile or a delivery method needs read and write on
    /// mailboxes; a user may change the credentials of its own mailbox.
    pub async fn update_mailbox(
        &self,
        c: &Caller,
        org: OrgId,
        mut m: Mailbox,
        password: Option<Secret>,
        expected: Option<i64>,
    ) -> Result<Stored<Mailbox>> {
        let before = self.mailbox(c, org, m.id).await?;
        let b = &before.value;
        let admin_fields_changed = m.profile_id != b.profile_id
            || m.incoming_method != b.incoming_method
            || m.outgoing_method != b.outgoing_method
            || m.act_method != b.act_method
            || m.delete_after_processing != b.delete_after_processing
            || m.is_forward_mailbox != b.is_forward_mailbox
            || m.email != b.email
            || m.tracking != b.tracking
            || m.sync_with_this_org_only != b.sync_with_this_org_only
            || m.process_email_from != b.process_email_from;
        if admin_fields_changed || b.owner_id != c.user.id {
            c.require_mailbox_write()?;
        }
        // Fields only the system writes.
        m.org_id = org;
        m.regarding = b.regarding;
        m.owner_id = b.owner_id;
        m.approval = if m.email != b.email {
            ApprovalStatus::PendingApproval
        } else {
            b.approval
        };
        m.incoming = b.incoming.clone();
        m.outgoing = b.outgoing.clone();
        m.act = b.act.clone();
        m.test_completed_on = b.test_completed_on;
        m.telemetry = b.telemetry.clone();
        m.created_at = b.created_at;
        m.updated_at = now();
        m.password = b.password;
        let mut errors = m.validate().err().unwrap_or_default();
        if let Some(pid) = m.profile_id {
            match self.profile(org, pid).await {
                Ok(p) => {
                    if let Err(more) = check_profile_fits(&m, &p) {
                        errors.0.extend(more.0);
                    }
                }
                Err(_) => errors.push(
                    "not_found",
                    "profile_id",
                    "no such email server profile in this organization",
                ),
            }
        }
        errors.into_result()?;
        if m.email != b.email {
            super::domains::check_address(&self.store, org, "email", &m.email).await?;
        }
        if m.profile_id != b.profile_id
            || m.incoming_method != b.incoming_method
            || m.outgoing_method != b.outgoing_method
            || m.act_method != b.act_method
        {
            // A changed configuration must be tested again before processing.
            disable_all(&mut m);
        }
        if let Some(p) = password {
            match m.password {
                Some(id) => self.store.replace_secret(id, &p).await?,
                None => m.password = Some(self.store.put_secret(Some(org), &p).await?),
            }
            disable_all(&mut m);
        }
        let stored = self
            .store
            .update_audited(&m, expected, Some(NewAuditEntry::update(actor(c), b, &m)))
            .await?;
        if m.act_method != b.act_method {
            self.warn_if_act_mixed(c, org).await?;
        }
        Ok(stored)
    }

    /// Mixing client-side (Outlook) and server-side synchronization of appointments, contacts
    /// and tasks in one organization is discouraged: warn the administrator.
    async fn warn_if_act_mixed(&self, c: &Caller, org: OrgId) -> Result<()> {
        let all = self.store.list_all::<Mailbox>(Some(org), &[]).await?;
        let server = all
            .iter()
            .any(|m| m.value.act_method == ActMethod::ServerSideSync);
        let client = all
            .iter()
            .any(|m| m.value.act_method == ActMethod::OutlookClient);
        if server && client {
            let a = Alert::new(
                org,
                Severity::Warning,
                "mixed_act_synchronization",
                "some mailboxes synchronize appointments, contacts and tasks through Outlook and others on the \
                 server; mixing both in one organization is discouraged: choose one method for all mailboxes"
                    .into(),
                vec![c.user.id],
            );
            self.store.insert(&a).await?;
        }
        Ok(())
    }

    /// "Apply default email settings": the organization's default profile and delivery
    /// methods on each mailbox; then, as the reference does, test and enable them.
    pub async fn apply_default_settings(
        &self,
        c: &Caller,
        org: OrgId,
        ids: &[MailboxId],
        test_and_enable: bool,
    ) -> Result<(Vec<Stored<Mailbox>>, Option<Job>)> {
        c.require_mailbox_write()?;
        let settings = self.settings(org).await?.value;
        let profile = match settings.default_profile_id {
            Some(p) => Some(self.profile(org, p).await?),
            None => {
                return Err(invalid(
                    "required",
                    "default_profile_id",
                    "the organization has no default email server profile: set one in the email settings first",
                ));
            }
        };
        let mut out = Vec::new();
        for id in ids {
            let s = self.mailbox(c, org, *id).await?;
            let mut m = s.value.clone();
            m.profile_id = settings.default_profile_id;
            m.incoming_method = settings.default_incoming;
            m.outgoing_method = settings.default_outgoing;
            m.act_method = if m.is_queue() {
                ActMethod::None
            } else {
                settings.default_act
            };
            if let Some(p) = &profile {
                fit_act_to_profile(&mut m, p);
            }
            disable_all(&mut m);
            m.updated_at = now();
            let stored = self
                .store
                .update_audited(
                    &m,
                    Some(s.version),
                    Some(NewAuditEntry::change(
                        actor(c),
                        "apply_default_settings",
                        Some(&s.value),
                        Some(&m),
                    )),
                )
                .await?;
            out.push(stored);
        }
        let job = if test_and_enable {
            Some(self.enqueue_test_and_enable(c, org, ids.to_vec()).await?)
        } else {
            None
        };
        Ok((out, job))
    }

    /// Approves (or rejects) the email addresses of mailboxes. The engine may write a mailbox
    /// meanwhile (test and enable, telemetry): the decision is applied again to the mailbox as
    /// it is then, a few times, before the request ends in a version conflict (409).
    pub async fn set_approval(
        &self,
        c: &Caller,
        org: OrgId,
        ids: &[MailboxId],
        approve: bool,
    ) -> Result<Vec<Stored<Mailbox>>> {
        c.require(Privilege::ApproveEmailAddresses)?;
        let mut out = Vec::new();
        for id in ids {
            let mut attempt = 0;
            let stored = loop {
                attempt += 1;
                let s = self.mailbox(c, org, *id).await?;
                let profile = match s.value.profile_id {
                    Some(p) => Some(self.profile(org, p).await?),
                    None => None,
                };
                c.require_approve(profile.as_ref())?;
                let mut m = s.value.clone();
                m.approval = if approve {
                    ApprovalStatus::Approved
                } else {
                    ApprovalStatus::Rejected
                };
                if !approve {
                    disable_all(&mut m);
                }
                m.updated_at = now();
                let action = if approve { "approve" } else { "reject" };
                match self
                    .store
                    .update_audited(
                        &m,
                        Some(s.version),
                        Some(NewAuditEntry::change(
                            actor(c),
                            action,
                            Some(&s.value),
                            Some(&m),
                        )),
                    )
                    .await
                {
                    Err(StoreError::VersionMismatch { .. }) if attempt < CONCURRENT_WRITE_TRIES => {
                        continue;
                    }
                    r => break r?,
                }
            };
            out.push(stored);
        }
        Ok(out)
    }

    /// "Sync now": asks the engine to synchronize a mailbox's incoming email (and its
    /// appointments, contacts and tasks) at once, whatever its polling interval, and retries a mailbox postponed by the retry policy immediately
    /// (its count of transient failures is kept). Allowed to the mailbox's owner and to those
    /// who may write mailboxes; the mailbox must be synchronized by serversync and enabled.
    pub async fn sync_now(&self, c: &Caller, org: OrgId, id: MailboxId) -> Result<Stored<Mailbox>> {
        // A worker may write the mailbox's telemetry meanwhile: reread and retry a few times.
        for _ in 0..CONCURRENT_WRITE_TRIES {
            let s = self.mailbox(c, org, id).await?;
            if s.value.owner_id != c.user.id {
                c.require_mailbox_write()?;
            }
            let b = &s.value;
            // Incoming email, or appointments, contacts and tasks: either is synchronized now.
            let items = b.act_method == serversync_model::settings::ActMethod::ServerSideSync
                && b.act.enabled;
            if b.incoming_method != IncomingMethod::ServerSideSync && !items {
                return Err(AdminError::WrongState {
                    code: "not_server_side_sync",
                    message: format!(
                        "mailbox {} receives email by {}, not by server-side synchronization, and does not synchronize appointments, contacts and tasks: there is nothing to synchronize",
                        b.email,
                        serversync_model::wire_name(&b.incoming_method)
                    ),
                });
            }
            if !b.incoming.enabled && !items {
                return Err(AdminError::WrongState {
                    code: "mailbox_not_enabled",
                    message: format!(
                        "incoming email of mailbox {} is not enabled: test and enable the mailbox first",
                        b.email
                    ),
                });
            }
            let mut m = b.clone();
            m.telemetry.sync_requested_at = Some(now());
            m.telemetry.postponed_until = None;
            match self
                .store
                .update_audited(
                    &m,
                    Some(s.version),
                    Some(NewAuditEntry::change(
                        actor(c),
                        "sync_now",
                        Some(b),
                        Some(&m),
                    )),
                )
                .await
            {
                Ok(stored) => {
                    self.jobs_wake.notify_one();
                    return Ok(stored);
                }
                Err(StoreError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AdminError::Conflict(format!(
            "mailbox {id} kept changing while requesting a synchronization: try again"
        )))
    }
}

/// A configuration change: every direction must be tested and enabled again.
fn disable_all(m: &mut Mailbox) {
    for d in [&mut m.incoming, &mut m.outgoing, &mut m.act] {
        *d = DirectionStatus {
            enabled: false,
            ..d.clone()
        };
    }
}
