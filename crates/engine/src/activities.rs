//! Finding email activities by an indexed field (Message-ID, tracking token, conversation,
//! subject key): shared by the tracker ([`crate::records`]) and bounce handling
//! ([`crate::bounces`]), which sit above it.

use serversync_model::OrgId;
use serversync_model::crm::EmailActivity;
use serversync_store::{Col, Store, StoreError, Stored};

/// The email activities of `org` whose `column` is `value`.
pub(crate) async fn email_activities(
    store: &Store,
    org: OrgId,
    column: &'static str,
    value: &str,
) -> Result<Vec<Stored<EmailActivity>>, StoreError> {
    store
        .list_all::<EmailActivity>(
            Some(org),
            &[("kind", Col::text("email")), (column, Col::text(value))],
        )
        .await
}
