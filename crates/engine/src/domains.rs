//! Mail domains: which organization holds the domain of an address. Assigning and removing
//! domains, and refusing another organization's domain in an address, are `Admin`
//! operations (`admin/domains.rs`); intake asks here which organization an LMTP recipient
//! belongs to.

use serversync_model::OrgId;
use serversync_model::org::{Domain, domain_of};
use serversync_store::{Store, StoreError};

/// The organization holding the domain of `address`, if one does.
pub async fn domain_holder(store: &Store, address: &str) -> Result<Option<OrgId>, StoreError> {
    let Some(domain) = domain_of(address) else {
        return Ok(None);
    };
    Ok(store.get::<Domain>(&domain).await?.map(|d| d.value.org_id))
}
