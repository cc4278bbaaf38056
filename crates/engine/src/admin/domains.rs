//! Mail domains (security issue #14, item 2). Addresses are unique only within an
//! organization, so the Email Router cannot route by address alone: the installation
//! administrator assigns each mail domain to at most one organization, the router delivers a
//! recipient only to a mailbox of the organization holding its domain, and no other
//! organization may give a user, queue or mailbox an address in that domain.

use super::{Admin, AdminError, Result, actor};
use crate::domains::domain_holder;
use serversync_model::auth::{Caller, Denied};
use serversync_model::org::{Domain, domain_of};
use serversync_model::{OrgId, ValidationErrors};
use serversync_store::{NewAuditEntry, Store};

/// Refuses (naming `field`) an address for organization `org` in a domain another
/// organization holds.
pub(crate) async fn check_address(
    store: &Store,
    org: OrgId,
    field: &str,
    address: &str,
) -> Result<()> {
    match domain_holder(store, address).await? {
        Some(holder) if holder != org => {
            let mut e = ValidationErrors::default();
            e.push(
                "domain_of_another_organization",
                field,
                format!(
                    "the domain {} is assigned to another organization: only that organization can use addresses in it \
                     (the installation administrator assigns domains)",
                    domain_of(address).unwrap_or_default()
                ),
            );
            Err(AdminError::Invalid(e))
        }
        _ => Ok(()),
    }
}

fn installation_admin_required(what: &str) -> AdminError {
    AdminError::Denied(Denied {
        code: "installation_admin_required",
        message: format!("{what} needs an installation administrator"),
    })
}

impl Admin {
    /// The domains assigned to the organization, by name.
    pub async fn list_domains(&self, _c: &Caller, org: OrgId) -> Result<Vec<Domain>> {
        let mut all: Vec<Domain> = self
            .store()
            .list_all::<Domain>(Some(org), &[])
            .await?
            .into_iter()
            .map(|s| s.value)
            .collect();
        all.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(all)
    }

    /// Assigns a domain to the organization (installation administrators only). A domain
    /// already held — by this organization or another — is a conflict: it is never moved
    /// silently; remove it from its holder first.
    pub async fn assign_domain(&self, c: &Caller, org: OrgId, raw: &str) -> Result<Domain> {
        if !c.user.installation_admin {
            return Err(installation_admin_required("assigning a domain"));
        }
        let domain = Domain::normalize(raw)?;
        if let Some(held) = self.store().get::<Domain>(&domain).await? {
            let whose = if held.value.org_id == org {
                "this organization".to_owned()
            } else {
                self.store()
                    .get::<serversync_model::org::Organization>(&held.value.org_id.to_string())
                    .await?
                    .map_or_else(
                        || "another organization".to_owned(),
                        |o| format!("the organization {}", o.value.name),
                    )
            };
            return Err(AdminError::Conflict(format!(
                "the domain {domain} is already assigned to {whose}: a domain belongs to one organization; remove it there first"
            )));
        }
        let d = Domain {
            domain,
            org_id: org,
            assigned_at: chrono::Utc::now(),
        };
        self.store()
            .insert_audited(&d, Some(NewAuditEntry::create(actor(c), &d)))
            .await?;
        Ok(d)
    }

    /// Takes a domain from the organization (installation administrators only; a domain the
    /// organization does not hold is not found, whoever asks).
    pub async fn remove_domain(&self, c: &Caller, org: OrgId, raw: &str) -> Result<()> {
        let not_found = || AdminError::NotFound {
            entity: "domain",
            id: raw.to_owned(),
        };
        let domain = Domain::normalize(raw).map_err(|_| not_found())?;
        let held = match self.store().get::<Domain>(&domain).await? {
            Some(d) if d.value.org_id == org => d.value,
            _ => return Err(not_found()),
        };
        if !c.user.installation_admin {
            return Err(installation_admin_required("removing a domain"));
        }
        self.store()
            .delete::<Domain>(&domain, Some(NewAuditEntry::delete(actor(c), &held)))
            .await?;
        Ok(())
    }
}
