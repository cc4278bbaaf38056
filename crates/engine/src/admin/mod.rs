//! Administration: the operations behind the REST API and the CLI (SPEC.md §3), each checking
//! the caller's privileges, validating with the model's rules, writing an audit entry in the
//! same transaction as the change, and keeping mailboxes in step with users and queues.

use crate::sign_in::{AuthConfig, HasherBusy, SignIn};
use serversync_connectors::NetworkPolicy;
use serversync_model::alert::{Alert, Severity};
use serversync_model::audit::Actor;
use serversync_model::auth::{Caller, Denied};
use serversync_model::mailbox::Mailbox;
use serversync_model::org::{Privilege, Role, User, effective_privileges};
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::ActMethod;
use serversync_model::{Timestamp, UserId, ValidationErrors};
use serversync_store::{Store, StoreError};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(ValidationErrors),
    #[error("{}", .0.message)]
    Denied(Denied),
    #[error("missing or invalid API token")]
    Unauthenticated,
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be carried out in the record's current state (409 with this code).
    #[error("{message}")]
    WrongState { code: &'static str, message: String },
    #[error("{entity} {id} was changed by someone else since version {expected}: reload and retry")]
    VersionMismatch {
        entity: &'static str,
        id: String,
        expected: i64,
    },
    /// Too many failed sign-ins for this address or from this client: try again after the wait.
    #[error("too many failed sign-ins: try again in {} s", .retry_after.as_secs().max(1))]
    Throttled { retry_after: std::time::Duration },
    /// Too many sign-ins are being checked at once: try again in a moment.
    #[error("too many sign-ins are being checked at once: try again in a moment")]
    Busy,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => AdminError::NotFound { entity, id },
            StoreError::Conflict { entity, detail } => AdminError::Conflict(format!(
                "{entity} conflicts with an existing one ({detail})"
            )),
            StoreError::VersionMismatch {
                entity,
                id,
                expected,
            } => AdminError::VersionMismatch {
                entity,
                id,
                expected,
            },
            other => AdminError::Store(other),
        }
    }
}

impl From<HasherBusy> for AdminError {
    fn from(_: HasherBusy) -> Self {
        AdminError::Busy
    }
}

impl From<Denied> for AdminError {
    fn from(d: Denied) -> Self {
        AdminError::Denied(d)
    }
}

impl From<ValidationErrors> for AdminError {
    fn from(v: ValidationErrors) -> Self {
        AdminError::Invalid(v)
    }
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// How often an operation that changes one field of a record the engine also writes (approval,
/// "sync now") reads the record again after a concurrent write, before it gives up with a
/// version conflict.
pub(crate) const CONCURRENT_WRITE_TRIES: usize = 10;

fn invalid(code: &str, field: &str, message: impl Into<String>) -> AdminError {
    let mut e = ValidationErrors::default();
    e.push(code, field, message);
    AdminError::Invalid(e)
}

fn now() -> Timestamp {
    chrono::Utc::now()
}

pub(crate) fn actor(c: &Caller) -> Actor {
    Actor::User(c.user.id)
}

mod alerts;
mod audit;
mod domains;
mod items;
mod jobs;
mod mailboxes;
mod orgs;
mod profiles;
mod records;
mod settings;
mod tokens;
mod users;

pub use items::ItemFilter;
pub use mailboxes::MailboxFilter;
pub use profiles::ProfileSecrets;
pub use records::{ActivityFilter, AttachmentContent, Record, RecordFilter, RecordRefs};
pub use users::{NewUser, UserChanges};

#[derive(Clone)]
pub struct Admin {
    store: Store,
    /// Wakes the engine's main loop: a job was queued or a mailbox asked to sync now.
    jobs_wake: Arc<Notify>,
    /// Token lifetimes, the password hasher and the sign-in throttle, shared by every clone.
    sign_in: Arc<SignIn>,
    /// The installation's network policy (FIPS mode, plain-HTTP webhooks, address ranges).
    network: Arc<NetworkPolicy>,
}

impl Admin {
    /// With the default [`AuthConfig`] and the production network policy
    /// ([`NetworkPolicy::default`]).
    pub fn new(store: Store, jobs_wake: Arc<Notify>) -> Self {
        Self::with_auth(store, jobs_wake, AuthConfig::default())
    }

    pub fn with_auth(store: Store, jobs_wake: Arc<Notify>, auth: AuthConfig) -> Self {
        Self::sharing(store, jobs_wake, Arc::new(SignIn::new(auth)))
    }

    pub(crate) fn sharing(store: Store, jobs_wake: Arc<Notify>, sign_in: Arc<SignIn>) -> Self {
        Self {
            store,
            jobs_wake,
            sign_in,
            network: Arc::default(),
        }
    }

    /// The installation's network policy, which decides FIPS mode and which webhook URLs are
    /// accepted ([`crate::Engine::admin`] passes the engine's).
    pub fn with_network(mut self, network: Arc<NetworkPolicy>) -> Self {
        self.network = network;
        self
    }

    pub fn network(&self) -> &NetworkPolicy {
        &self.network
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Wakes the engine's main loop (a job was queued, a webhook resumed…).
    pub(crate) fn wake_engine(&self) {
        self.jobs_wake.notify_one();
    }

    async fn caller_for(&self, user: User) -> Result<Caller> {
        let privileges = self.privileges_of(&user).await?;
        Ok(Caller { user, privileges })
    }

    async fn privileges_of(&self, user: &User) -> Result<std::collections::BTreeSet<Privilege>> {
        let roles = self.store.list_all::<Role>(Some(user.org_id), &[]).await?;
        Ok(effective_privileges(user, roles.iter().map(|r| &r.value)))
    }

    /// Checks that the caller may act on `target` ([`Caller::may_act_on`]).
    async fn check_may_act_on(&self, c: &Caller, target: &User) -> Result<()> {
        if target.id != c.user.id {
            c.require(Privilege::ManageUsers)?;
            c.may_act_on(target, &self.privileges_of(target).await?)?;
        }
        Ok(())
    }
}

fn fit_act_to_profile(m: &mut Mailbox, p: &EmailServerProfile) {
    if !p.supports_act() {
        m.act_method = ActMethod::None;
    }
}

/// An alert for the mailbox's wall and its recipients.
pub(crate) fn alert(
    m: &Mailbox,
    severity: Severity,
    code: &str,
    message: String,
    step: Option<serversync_model::FailureStep>,
    recipients: Vec<UserId>,
) -> Alert {
    Alert {
        mailbox_id: Some(m.id),
        profile_id: m.profile_id,
        step,
        ..Alert::new(m.org_id, severity, code, message, recipients)
    }
}
