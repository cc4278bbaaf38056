//! Email server profiles: reading, creating, updating, the default profile, deleting,
//! and their write-only secrets.

use super::{Admin, AdminError, Result, actor, invalid, now};
use serversync_model::auth::Caller;
use serversync_model::mailbox::Mailbox;
use serversync_model::org::{Organization, Privilege};
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::ActMethod;
use serversync_model::{OrgId, ProfileId, Secret, SecretId};
use serversync_store::{Col, NewAuditEntry, Page, Store, Stored};

/// New plaintext secrets that come with a profile create or update (write-only fields).
#[derive(Debug, Default, Clone)]
pub struct ProfileSecrets {
    pub password: Option<Secret>,
    pub outgoing_password: Option<Secret>,
    pub oauth_client_secret: Option<Secret>,
    /// The app registration's certificate and private key (PEM).
    pub oauth_client_certificate: Option<Secret>,
}

impl Admin {
    pub async fn profile(&self, org: OrgId, id: ProfileId) -> Result<EmailServerProfile> {
        Ok(self.profile_stored(org, id).await?.value)
    }

    pub async fn profile_stored(
        &self,
        org: OrgId,
        id: ProfileId,
    ) -> Result<Stored<EmailServerProfile>> {
        match self
            .store
            .get::<EmailServerProfile>(&id.to_string())
            .await?
        {
            Some(p) if p.value.org_id == org => Ok(p),
            _ => Err(AdminError::NotFound {
                entity: "email server profile",
                id: id.to_string(),
            }),
        }
    }

    pub async fn list_profiles(
        &self,
        org: OrgId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<EmailServerProfile>> {
        Ok(self
            .store
            .list::<EmailServerProfile>(Some(org), &[], after, limit)
            .await?)
    }

    async fn store_profile_secrets(
        &self,
        org: OrgId,
        p: &mut EmailServerProfile,
        s: ProfileSecrets,
    ) -> Result<()> {
        async fn put(
            store: &Store,
            org: OrgId,
            slot: &mut Option<SecretId>,
            v: Option<Secret>,
        ) -> Result<()> {
            if let Some(v) = v {
                match *slot {
                    Some(id) => store.replace_secret(id, &v).await?,
                    None => *slot = Some(store.put_secret(Some(org), &v).await?),
                }
            }
            Ok(())
        }
        put(&self.store, org, &mut p.password, s.password).await?;
        put(
            &self.store,
            org,
            &mut p.outgoing_password,
            s.outgoing_password,
        )
        .await?;
        for (new, certificate) in [
            (s.oauth_client_secret, false),
            (s.oauth_client_certificate, true),
        ] {
            let Some(secret) = new else { continue };
            match p.oauth.as_mut() {
                Some(o) => {
                    let slot = if certificate {
                        &mut o.client_certificate
                    } else {
                        &mut o.client_secret
                    };
                    put(&self.store, org, slot, Some(secret)).await?
                }
                None => {
                    return Err(invalid(
                        "required",
                        "oauth",
                        "a client secret or certificate needs oauth settings (client_id, tenant_id)",
                    ));
                }
            }
        }
        Ok(())
    }

    async fn check_profile(&self, org: &Organization, p: &mut EmailServerProfile) -> Result<()> {
        p.validate(org.fips_mode || self.network.fips())?;
        for pin in &mut p.pinned_certificates {
            if let Some(canonical) = serversync_model::certificate::normalize_sha256(pin) {
                *pin = canonical;
            }
        }
        self.user(org.id, p.owner_id).await.map_err(|_| {
            invalid(
                "not_found",
                "owner_id",
                "the owner must be a user of this organization",
            )
        })?;
        Ok(())
    }

    pub async fn create_profile(
        &self,
        c: &Caller,
        org: &Organization,
        mut p: EmailServerProfile,
        secrets: ProfileSecrets,
    ) -> Result<Stored<EmailServerProfile>> {
        c.require(Privilege::ManageEmailConfiguration)?;
        p.org_id = org.id;
        self.check_profile(org, &mut p).await?;
        let make_default = std::mem::replace(&mut p.is_default, false);
        self.store_profile_secrets(org.id, &mut p, secrets).await?;
        let stored = self
            .store
            .insert_audited(&p, Some(NewAuditEntry::create(actor(c), &p)))
            .await?;
        if make_default {
            return self.set_default_profile(c, org.id, p.id).await;
        }
        Ok(stored)
    }

    pub async fn update_profile(
        &self,
        c: &Caller,
        org: &Organization,
        mut p: EmailServerProfile,
        secrets: ProfileSecrets,
        expected: Option<i64>,
    ) -> Result<Stored<EmailServerProfile>> {
        c.require(Privilege::ManageEmailConfiguration)?;
        let before = self.profile_stored(org.id, p.id).await?;
        p.org_id = org.id;
        p.created_at = before.value.created_at;
        p.updated_at = now();
        self.check_profile(org, &mut p).await?;
        let make_default = p.is_default && !before.value.is_default;
        p.is_default = before.value.is_default && p.is_default;
        if before.value.is_default && !p.is_default {
            let mut s = self.settings(org.id).await?;
            s.value.default_profile_id = None;
            self.store.update(&s.value, Some(s.version)).await?;
        }
        self.store_profile_secrets(org.id, &mut p, secrets).await?;
        // Pinning a certificate bypasses its chain checks: its own audit action, so it can
        // be found and reviewed.
        let audit = if p.pinned_certificates != before.value.pinned_certificates {
            let action = if p
                .pinned_certificates
                .iter()
                .any(|pin| !before.value.pinned_certificates.contains(pin))
            {
                "pin_certificate"
            } else {
                "unpin_certificate"
            };
            NewAuditEntry::change(actor(c), action, Some(&before.value), Some(&p))
        } else {
            NewAuditEntry::update(actor(c), &before.value, &p)
        };
        let stored = self.store.update_audited(&p, expected, Some(audit)).await?;
        if make_default {
            return self.set_default_profile(c, org.id, p.id).await;
        }
        Ok(stored)
    }

    /// Makes a profile the default for new mailboxes (and the organization settings' default).
    pub async fn set_default_profile(
        &self,
        c: &Caller,
        org: OrgId,
        id: ProfileId,
    ) -> Result<Stored<EmailServerProfile>> {
        c.require(Privilege::ManageEmailConfiguration)?;
        let target = self.profile_stored(org, id).await?;
        for other in self
            .store
            .list_all::<EmailServerProfile>(Some(org), &[("is_default", Col::Bool(true))])
            .await?
        {
            if other.value.id != id {
                let mut o = other.value.clone();
                o.is_default = false;
                self.store
                    .update_audited(
                        &o,
                        Some(other.version),
                        Some(NewAuditEntry::update(actor(c), &other.value, &o)),
                    )
                    .await?;
            }
        }
        let mut p = target.value.clone();
        p.is_default = true;
        let stored = self
            .store
            .update_audited(
                &p,
                Some(target.version),
                Some(NewAuditEntry::change(
                    actor(c),
                    "set_default",
                    Some(&target.value),
                    Some(&p),
                )),
            )
            .await?;
        let s = self.settings(org).await?;
        let mut settings = s.value.clone();
        settings.default_profile_id = Some(id);
        if !p.supports_act() {
            settings.default_act = ActMethod::None;
        }
        self.store
            .update_audited(
                &settings,
                Some(s.version),
                Some(NewAuditEntry::update(actor(c), &s.value, &settings)),
            )
            .await?;
        Ok(stored)
    }

    pub async fn delete_profile(&self, c: &Caller, org: OrgId, id: ProfileId) -> Result<()> {
        c.require(Privilege::ManageEmailConfiguration)?;
        let p = self.profile(org, id).await?;
        let users = self
            .store
            .list::<Mailbox>(Some(org), &[("profile_id", Col::text(id))], None, 1)
            .await?;
        if !users.items.is_empty() {
            return Err(AdminError::Conflict(
                "mailboxes still use this profile: move them to another profile first".into(),
            ));
        }
        if p.is_default {
            let mut s = self.settings(org).await?;
            s.value.default_profile_id = None;
            self.store.update(&s.value, Some(s.version)).await?;
        }
        self.store
            .delete::<EmailServerProfile>(
                &id.to_string(),
                Some(NewAuditEntry::delete(actor(c), &p)),
            )
            .await?;
        for sid in [
            p.password,
            p.outgoing_password,
            p.oauth.as_ref().and_then(|o| o.client_secret),
            p.oauth.as_ref().and_then(|o| o.client_certificate),
        ]
        .into_iter()
        .flatten()
        {
            self.store.delete_secret(sid).await?;
        }
        Ok(())
    }
}
