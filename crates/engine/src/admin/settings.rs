//! The organization's email settings.

use super::{Admin, Result, actor};
use serversync_model::OrgId;
use serversync_model::auth::Caller;
use serversync_model::org::Privilege;
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::{ActMethod, EmailSettings};
use serversync_store::{NewAuditEntry, Stored};

impl Admin {
    pub async fn settings(&self, org: OrgId) -> Result<Stored<EmailSettings>> {
        match self.store.get::<EmailSettings>(&org.to_string()).await? {
            Some(s) => Ok(s),
            None => Ok(self.store.insert(&EmailSettings::new(org)).await?),
        }
    }

    pub async fn update_settings(
        &self,
        c: &Caller,
        org: OrgId,
        mut s: EmailSettings,
        expected: Option<i64>,
    ) -> Result<Stored<EmailSettings>> {
        c.require(Privilege::ManageEmailConfiguration)?;
        s.org_id = org;
        let mut errors = s.validate().err().unwrap_or_default();
        if let Some(pid) = s.default_profile_id {
            match self.profile(org, pid).await {
                Ok(p) => {
                    if s.default_act == ActMethod::ServerSideSync && !p.supports_act() {
                        errors.push(
                            "act_not_supported_by_profile",
                            "default_act",
                            "appointments, contacts and tasks cannot be synchronized with POP3 or IMAP profiles \
                             unless a CalDAV/CardDAV endpoint is configured on the profile: set default_act to none",
                        );
                    }
                }
                Err(_) => errors.push(
                    "not_found",
                    "default_profile_id",
                    "no such email server profile in this organization",
                ),
            }
        }
        errors.into_result()?;
        let before = self.settings(org).await?;
        let default_changed = before.value.default_profile_id != s.default_profile_id;
        let stored = self
            .store
            .update_audited(
                &s,
                expected,
                Some(NewAuditEntry::update(actor(c), &before.value, &s)),
            )
            .await?;
        if default_changed {
            // Keep the profiles' "default" flag in step with the settings.
            for p in self
                .store
                .list_all::<EmailServerProfile>(Some(org), &[])
                .await?
            {
                let want = Some(p.value.id) == s.default_profile_id;
                if p.value.is_default != want {
                    let mut v = p.value.clone();
                    v.is_default = want;
                    if !want {
                        self.store.update(&v, Some(p.version)).await?;
                    }
                }
            }
            if let Some(pid) = s.default_profile_id {
                let p = self.profile_stored(org, pid).await?;
                let mut v = p.value.clone();
                v.is_default = true;
                self.store.update(&v, Some(p.version)).await?;
            }
        }
        Ok(stored)
    }
}
