//! Test-and-enable jobs: queueing them, reading and listing jobs.

use super::{Admin, AdminError, Result, actor, invalid, now};
use serversync_model::auth::Caller;
use serversync_model::job::{Job, JobKind, JobStatus};
use serversync_model::mailbox::Mailbox;
use serversync_model::org::Privilege;
use serversync_model::{JobId, MailboxId, OrgId, ProfileId};
use serversync_store::{Col, NewAuditEntry, Page};

impl Admin {
    pub async fn enqueue_test_and_enable(
        &self,
        c: &Caller,
        org: OrgId,
        ids: Vec<MailboxId>,
    ) -> Result<Job> {
        c.require_mailbox_write()?;
        if ids.is_empty() {
            return Err(invalid(
                "required",
                "mailbox_ids",
                "select at least one mailbox",
            ));
        }
        for id in &ids {
            self.mailbox(c, org, *id).await?;
        }
        let job = Job {
            id: JobId::new(),
            org_id: org,
            kind: JobKind::TestAndEnable,
            status: JobStatus::Queued,
            requested_by: Some(c.user.id),
            total: ids.len() as u32,
            mailbox_ids: ids,
            done: 0,
            results: Vec::new(),
            created_at: now(),
            started_at: None,
            finished_at: None,
        };
        self.store
            .insert_audited(&job, Some(NewAuditEntry::create(actor(c), &job)))
            .await?;
        self.jobs_wake.notify_one();
        Ok(job)
    }

    /// Test and enable every mailbox of a profile.
    pub async fn enqueue_test_and_enable_profile(
        &self,
        c: &Caller,
        org: OrgId,
        profile: ProfileId,
    ) -> Result<Job> {
        self.profile(org, profile).await?;
        let ids = self
            .store
            .list_all::<Mailbox>(Some(org), &[("profile_id", Col::text(profile))])
            .await?
            .into_iter()
            .map(|m| m.value.id)
            .collect::<Vec<_>>();
        if ids.is_empty() {
            return Err(invalid(
                "no_mailboxes",
                "profile_id",
                "no mailbox uses this profile yet: apply it to mailboxes first",
            ));
        }
        self.enqueue_test_and_enable(c, org, ids).await
    }

    pub async fn job(&self, c: &Caller, org: OrgId, id: JobId) -> Result<Job> {
        match self.store.get::<Job>(&id.to_string()).await? {
            Some(j)
                if j.value.org_id == org
                    && (c.has(Privilege::ReadMailboxes)
                        || j.value.requested_by == Some(c.user.id)) =>
            {
                Ok(j.value)
            }
            _ => Err(AdminError::NotFound {
                entity: "job",
                id: id.to_string(),
            }),
        }
    }

    pub async fn list_jobs(
        &self,
        c: &Caller,
        org: OrgId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Job>> {
        c.require(Privilege::ReadMailboxes)?;
        Ok(self.store.list::<Job>(Some(org), &[], after, limit).await?)
    }
}
