//! Organizations: creating them, listing them and finding one by id or name.

use super::{Admin, AdminError, Result, actor, now};
use serversync_model::OrgId;
use serversync_model::audit::Actor;
use serversync_model::auth::{Caller, Denied};
use serversync_model::org::{BuiltinRole, Organization};
use serversync_model::settings::EmailSettings;
use serversync_store::{Col, NewAuditEntry};

impl Admin {
    pub(super) async fn create_org_unchecked(
        &self,
        name: &str,
        display: &str,
        by: Actor,
    ) -> Result<Organization> {
        let org = Organization::new(name, display, now());
        org.validate()?;
        self.store
            .insert_audited(&org, Some(NewAuditEntry::create(by.clone(), &org)))
            .await?;
        for r in BuiltinRole::ALL {
            let role = r.role(org.id);
            self.store.insert(&role).await?;
        }
        self.store.insert(&EmailSettings::new(org.id)).await?;
        Ok(org)
    }

    pub async fn create_org(&self, c: &Caller, name: &str, display: &str) -> Result<Organization> {
        if !c.user.installation_admin {
            return Err(Denied {
                code: "installation_admin_required",
                message: "creating organizations needs an installation administrator".into(),
            }
            .into());
        }
        self.create_org_unchecked(name, display, actor(c)).await
    }

    /// How large the database is; for installation administrators only (it is shared by
    /// every organization).
    pub async fn database_size(&self, c: &Caller) -> Result<serversync_store::DatabaseSize> {
        if !c.user.installation_admin {
            return Err(Denied {
                code: "installation_admin_required",
                message: "the database size is shown to installation administrators only".into(),
            }
            .into());
        }
        Ok(self.store.database_size().await?)
    }

    pub async fn list_orgs(&self, c: &Caller) -> Result<Vec<Organization>> {
        let all = self.store.list_all::<Organization>(None, &[]).await?;
        Ok(all
            .into_iter()
            .map(|s| s.value)
            .filter(|o| c.user.installation_admin || o.id == c.user.org_id)
            .collect())
    }

    /// Resolves the organization named in a path (`{org}` is its id or its name) and checks
    /// that the caller belongs to it (installation administrators reach every organization).
    pub async fn org_for(&self, c: &Caller, key: &str) -> Result<Organization> {
        let org = match key.parse::<OrgId>() {
            Ok(id) => self
                .store
                .get::<Organization>(&id.to_string())
                .await?
                .map(|s| s.value),
            Err(_) => self
                .store
                .list_all::<Organization>(None, &[("name", Col::text(key))])
                .await?
                .into_iter()
                .next()
                .map(|s| s.value),
        };
        match org {
            Some(o) if o.id == c.user.org_id || c.user.installation_admin => Ok(o),
            _ => Err(AdminError::NotFound {
                entity: "organization",
                id: key.to_owned(),
            }),
        }
    }
}
