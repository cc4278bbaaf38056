//! Administration: the operations behind the REST API and the CLI (SPEC.md §3), each checking
//! the caller's privileges, validating with the model's rules, writing an audit entry in the
//! same transaction as the change, and keeping mailboxes in step with users and queues.

use crate::sign_in::{AuthConfig, Key, SignIn};
use serversync_connectors::NetworkPolicy;
use serversync_model::alert::{Alert, Severity};
use serversync_model::audit::Actor;
use serversync_model::auth::{ApiToken, Caller, Denied, TokenKind};
use serversync_model::crm::{Account, Contact, Lead, RecordRef};
use serversync_model::item::ItemDecision;
use serversync_model::job::{Job, JobKind, JobStatus};
use serversync_model::mailbox::{
    ApprovalStatus, DirectionStatus, Mailbox, MailboxRegarding, check_profile_fits,
};
use serversync_model::org::{
    BuiltinRole, Organization, Privilege, Queue, Role, User, effective_privileges,
};
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::{ActMethod, EmailSettings, IncomingMethod};
use serversync_model::{
    AlertId, JobId, MailboxId, OrgId, ProfileId, QueueId, Secret, SecretId, Timestamp, TokenId,
    UserId, ValidationErrors,
};
use serversync_store::{Col, EntityWrite, Filter, NewAuditEntry, Page, Store, StoreError, Stored};
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

/// New plaintext secrets that come with a profile create or update (write-only fields).
#[derive(Debug, Default, Clone)]
pub struct ProfileSecrets {
    pub password: Option<Secret>,
    pub outgoing_password: Option<Secret>,
    pub oauth_client_secret: Option<Secret>,
}

/// Filters for the mailbox list.
#[derive(Debug, Default, Clone)]
pub struct MailboxFilter {
    pub profile_id: Option<ProfileId>,
    pub approval: Option<ApprovalStatus>,
    /// Overall status: not_run / success / failure.
    pub status: Option<String>,
    pub owner_id: Option<UserId>,
}

/// Where a new user or queue mailbox comes from.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub full_name: String,
    pub email: String,
    pub roles: Vec<BuiltinRole>,
    pub tenant_exchange_admin: bool,
    pub password: Option<Secret>,
}

/// A user's changes (`None`: unchanged).
#[derive(Debug, Default, Clone)]
pub struct UserChanges {
    pub allow_send_as: Option<bool>,
    pub full_name: Option<String>,
    /// The admin center password (at least 12 characters).
    pub password: Option<Secret>,
    pub disabled: Option<bool>,
}

/// The password hash verified when the address is unknown or has no password, so that the
/// answer takes as long as for a real one (the number of rounds is the one passwords get).
const DUMMY_HASH: &str =
    "pbkdf2-sha256$600000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

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

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wakes the engine's main loop (a job was queued, a webhook resumed…).
    pub(crate) fn wake_engine(&self) {
        self.jobs_wake.notify_one();
    }

    // ---- authentication and tokens ------------------------------------------------------------

    /// The caller behind a bearer token (live: neither revoked nor expired, of an enabled user).
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let hash = serversync_vault::sha256_hex(token.as_bytes());
        let found = self
            .store
            .list_all::<ApiToken>(None, &[("token_hash", Col::text(&hash))])
            .await?;
        let Some(t) = found.into_iter().next().map(|s| s.value) else {
            return Err(AdminError::Unauthenticated);
        };
        if !t.is_live(now()) {
            return Err(AdminError::Unauthenticated);
        }
        let user = self
            .store
            .get::<User>(&t.user_id.to_string())
            .await?
            .ok_or(AdminError::Unauthenticated)?
            .value;
        if user.disabled {
            return Err(AdminError::Unauthenticated);
        }
        self.caller_for(user).await
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

    /// Creates an API token for a user (`by` someone with direct access to the database, or the
    /// bootstrap), expiring after the configured lifetime; returns the token (shown once) and
    /// its record.
    pub async fn create_token(
        &self,
        user: &User,
        name: &str,
        by: Actor,
    ) -> Result<(String, ApiToken)> {
        let expires = self.sign_in.config.token_lifetime.map(|l| now() + l);
        self.create_token_until(user, name, by, "create", TokenKind::Api, expires)
            .await
    }

    async fn create_token_until(
        &self,
        user: &User,
        name: &str,
        by: Actor,
        action: &str,
        kind: TokenKind,
        expires_at: Option<Timestamp>,
    ) -> Result<(String, ApiToken)> {
        if name.trim().is_empty() || name.chars().count() > 100 {
            return Err(invalid(
                "invalid_name",
                "name",
                "give the token a name of 1-100 characters",
            ));
        }
        let token = serversync_vault::new_token().map_err(StoreError::from)?;
        let t = ApiToken {
            id: TokenId::new(),
            org_id: user.org_id,
            user_id: user.id,
            name: name.to_owned(),
            token_hash: serversync_vault::sha256_hex(token.as_bytes()),
            prefix: token.chars().take(10).collect(),
            created_at: now(),
            expires_at,
            revoked: false,
            revoked_at: None,
            kind,
        };
        self.store
            .insert_audited(&t, Some(token_audit(by, action, None, Some(&t))))
            .await?;
        Ok((token, t))
    }

    /// A new API token for user `user_id` of `org`, through the API. For oneself: anybody. For
    /// somebody else: only an installation administrator, and the audit log records it as
    /// `create_for_user`. Expires after `lifetime_days` (1-3650), else the configured lifetime.
    pub async fn issue_token(
        &self,
        c: &Caller,
        org: OrgId,
        user_id: UserId,
        name: &str,
        lifetime_days: Option<u32>,
    ) -> Result<(String, ApiToken)> {
        let user = self.user(org, user_id).await?;
        let action = if user.id == c.user.id {
            "create"
        } else if c.user.installation_admin {
            "create_for_user"
        } else {
            return Err(Denied {
                code: "installation_admin_required",
                message: "only an installation administrator may create a token for another user; \
                          users create their own"
                    .into(),
            }
            .into());
        };
        let expires = match lifetime_days {
            Some(d) if (1..=3650).contains(&d) => Some(now() + chrono::Duration::days(d.into())),
            Some(_) => {
                return Err(invalid(
                    "out_of_range",
                    "expires_in_days",
                    "use 1 to 3650 days",
                ));
            }
            None => self.sign_in.config.token_lifetime.map(|l| now() + l),
        };
        if user.disabled {
            return Err(AdminError::WrongState {
                code: "user_disabled",
                message: format!(
                    "user {} is disabled: a token for it would not be accepted",
                    user.email
                ),
            });
        }
        self.create_token_until(&user, name, actor(c), action, TokenKind::Api, expires)
            .await
    }

    /// Tokens of the organization (with `manage_users`), else the caller's own; of one user
    /// when `user` is given; only those still live (neither revoked nor expired) with
    /// `live_only`. Oldest first, paged by id.
    pub async fn list_tokens(
        &self,
        c: &Caller,
        org: OrgId,
        user: Option<UserId>,
        live_only: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<ApiToken>> {
        let user = if c.has(Privilege::ManageUsers) {
            user
        } else {
            match user {
                Some(u) if u != c.user.id => {
                    return Ok(Page {
                        items: Vec::new(),
                        next: None,
                    });
                }
                _ => Some(c.user.id),
            }
        };
        let mut filters: Vec<Filter> = user
            .map(|u| Filter::Eq("user_id", Col::text(u)))
            .into_iter()
            .collect();
        if live_only {
            filters.push(Filter::AtLeast("live_until", now().timestamp_millis() + 1));
        }
        Ok(self
            .store
            .list_where::<ApiToken>(Some(org), &filters, after, limit)
            .await?)
    }

    /// Revokes a token of the organization: one's own, or (with `manage_users`) one of a user
    /// the caller may act on. A token the caller may not see is not found.
    pub async fn revoke_token(&self, c: &Caller, org: OrgId, id: TokenId) -> Result<ApiToken> {
        let not_found = || AdminError::NotFound {
            entity: "API token",
            id: id.to_string(),
        };
        let s = match self.store.get::<ApiToken>(&id.to_string()).await? {
            Some(s) if s.value.org_id == org => s,
            _ => return Err(not_found()),
        };
        if s.value.user_id != c.user.id {
            if !c.has(Privilege::ManageUsers) {
                return Err(not_found());
            }
            let owner = self.user(org, s.value.user_id).await?;
            self.check_may_act_on(c, &owner).await?;
        }
        if s.value.revoked {
            return Ok(s.value);
        }
        let (t, w, a) = revocation(&s, actor(c))?;
        self.store.write_all_audited(&[w], vec![a]).await?;
        Ok(t)
    }

    /// The live tokens of `user` (only its sessions with `sessions_only`), as revocations to
    /// commit with the change that ends them.
    async fn revocations(
        &self,
        user: &User,
        sessions_only: bool,
        by: &Actor,
    ) -> Result<(Vec<EntityWrite>, Vec<NewAuditEntry>)> {
        let at = now();
        let mut writes = Vec::new();
        let mut audit = Vec::new();
        for s in self
            .store
            .list_all::<ApiToken>(Some(user.org_id), &[("user_id", Col::text(user.id))])
            .await?
        {
            if s.value.is_live(at) && (!sessions_only || s.value.kind == TokenKind::Session) {
                let (_, w, a) = revocation(&s, by.clone())?;
                writes.push(w);
                audit.push(a);
            }
        }
        Ok((writes, audit))
    }

    /// A web session for the caller: a session token that expires after `ttl`. Returns the
    /// token (kept only in the browser's cookie).
    pub async fn create_session(&self, c: &Caller, ttl: chrono::Duration) -> Result<String> {
        let (token, _) = self
            .create_token_until(
                &c.user,
                serversync_model::auth::WEB_SESSION,
                actor(c),
                "create",
                TokenKind::Session,
                Some(now() + ttl),
            )
            .await?;
        Ok(token)
    }

    /// Signs a web session out: its token is revoked.
    pub async fn end_session(&self, token: &str) -> Result<()> {
        let hash = serversync_vault::sha256_hex(token.as_bytes());
        for s in self
            .store
            .list_all::<ApiToken>(None, &[("token_hash", Col::text(&hash))])
            .await?
        {
            if !s.value.revoked {
                let (_, w, a) = revocation(&s, Actor::User(s.value.user_id))?;
                self.store.write_all_audited(&[w], vec![a]).await?;
            }
        }
        Ok(())
    }

    /// On an empty installation: an organization `default`, its built-in roles and email
    /// settings, and a first administrator `admin@localhost` with a token. Returns the token
    /// (to print once) or `None` if the installation already has an organization.
    pub async fn bootstrap(&self) -> Result<Option<(User, String)>> {
        if !self
            .store
            .list::<Organization>(None, &[], None, 1)
            .await?
            .items
            .is_empty()
        {
            return Ok(None);
        }
        let system = Actor::System("bootstrap".into());
        let org = self
            .create_org_unchecked("default", "Default organization", system.clone())
            .await?;
        let admin_role = self
            .store
            .list_all::<Role>(
                Some(org.id),
                &[("name", Col::text(BuiltinRole::SystemAdministrator.name()))],
            )
            .await?
            .remove(0)
            .value;
        let mut user = User::new(org.id, "Administrator", "admin@localhost", now());
        user.role_ids.insert(admin_role.id);
        user.installation_admin = true;
        self.store
            .insert_audited(&user, Some(NewAuditEntry::create(system.clone(), &user)))
            .await?;
        let (token, _) = self.create_token(&user, "bootstrap", system).await?;
        Ok(Some((user, token)))
    }

    // ---- organizations ---------------------------------------------------------------------

    async fn create_org_unchecked(
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

    // ---- users, queues, roles ---------------------------------------------------------------

    pub async fn roles(&self, org: OrgId) -> Result<Vec<Role>> {
        Ok(self
            .store
            .list_all::<Role>(Some(org), &[])
            .await?
            .into_iter()
            .map(|s| s.value)
            .collect())
    }

    /// Creates a user and its mailbox (with the organization's default profile and methods).
    pub async fn create_user(
        &self,
        c: &Caller,
        org: OrgId,
        new: NewUser,
    ) -> Result<(User, Mailbox)> {
        c.require(Privilege::ManageUsers)?;
        let roles = self.roles(org).await?;
        let mut user = User::new(org, &new.full_name, &new.email, now());
        user.tenant_exchange_admin = new.tenant_exchange_admin;
        for r in &new.roles {
            if let Some(role) = roles.iter().find(|x| x.builtin == Some(*r)) {
                user.role_ids.insert(role.id);
            }
        }
        c.may_grant(
            &effective_privileges(&user, &roles),
            user.tenant_exchange_admin,
        )?;
        user.validate()?;
        crate::domains::check_address(&self.store, org, "email", &user.email).await?;
        self.store
            .insert_audited(&user, Some(NewAuditEntry::create(actor(c), &user)))
            .await?;
        let mailbox = self
            .create_mailbox(
                c,
                org,
                MailboxRegarding::User(user.id),
                user.id,
                &user.full_name,
                &user.email,
                new.password,
            )
            .await?;
        Ok((user, mailbox))
    }

    pub async fn create_queue(
        &self,
        c: &Caller,
        org: OrgId,
        name: &str,
        email: &str,
        owner: Option<UserId>,
        password: Option<Secret>,
    ) -> Result<(Queue, Mailbox)> {
        c.require(Privilege::ManageUsers)?;
        let owner_id = owner.unwrap_or(c.user.id);
        self.check_refs(org, &[("owner_id", RecordRef::User(owner_id))])
            .await?;
        let q = Queue {
            id: serversync_model::QueueId::new(),
            org_id: org,
            name: name.to_owned(),
            email: email.to_owned(),
            owner_id,
            member_ids: [owner_id].into(),
            created_at: now(),
        };
        q.validate()?;
        crate::domains::check_address(&self.store, org, "email", &q.email).await?;
        self.store
            .insert_audited(&q, Some(NewAuditEntry::create(actor(c), &q)))
            .await?;
        let mailbox = self
            .create_mailbox(
                c,
                org,
                MailboxRegarding::Queue(q.id),
                owner_id,
                name,
                email,
                password,
            )
            .await?;
        Ok((q, mailbox))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_mailbox(
        &self,
        c: &Caller,
        org: OrgId,
        regarding: MailboxRegarding,
        owner: UserId,
        name: &str,
        email: &str,
        password: Option<Secret>,
    ) -> Result<Mailbox> {
        let settings = self.settings(org).await?.value;
        let mut m =
            Mailbox::new_with_defaults(org, regarding, owner, name, email, &settings, now());
        if let Some(pid) = m.profile_id {
            let profile = self.profile(org, pid).await?;
            fit_act_to_profile(&mut m, &profile);
        }
        if let Some(p) = password {
            m.username = Some(email.to_owned());
            m.password = Some(self.store.put_secret(Some(org), &p).await?);
            m.allow_credentials_for_processing = true;
        }
        m.validate()?;
        self.store
            .insert_audited(&m, Some(NewAuditEntry::create(actor(c), &m)))
            .await?;
        Ok(m)
    }

    pub async fn user(&self, org: OrgId, id: UserId) -> Result<User> {
        match self.store.get::<User>(&id.to_string()).await? {
            Some(u) if u.value.org_id == org => Ok(u.value),
            _ => Err(AdminError::NotFound {
                entity: "user",
                id: id.to_string(),
            }),
        }
    }

    pub async fn list_users(
        &self,
        c: &Caller,
        org: OrgId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<User>> {
        if !c.has(Privilege::ManageUsers) && !c.has(Privilege::ReadMailboxes) {
            let me = self.store.fetch::<User>(&c.user.id.to_string()).await?;
            return Ok(Page {
                items: vec![me],
                next: None,
            });
        }
        Ok(self
            .store
            .list::<User>(Some(org), &[], after, limit)
            .await?)
    }

    /// Changes a user: the consent to let users holding "send as another user" send on their
    /// behalf, the display name, the admin center password (at least 12 characters; stored as
    /// a sealed PBKDF2 hash) and whether the user is disabled. The user themself (except
    /// disabling), or a holder of `manage_users` who may act on the user
    /// ([`Caller::may_act_on`]). A new password ends the user's sessions; disabling revokes all
    /// their tokens — in the same transaction as the change.
    pub async fn update_user(
        &self,
        c: &Caller,
        org: OrgId,
        id: UserId,
        changes: UserChanges,
    ) -> Result<User> {
        if id != c.user.id {
            c.require(Privilege::ManageUsers)?;
        }
        let s = match self.store.get::<User>(&id.to_string()).await? {
            Some(u) if u.value.org_id == org => u,
            _ => {
                return Err(AdminError::NotFound {
                    entity: "user",
                    id: id.to_string(),
                });
            }
        };
        self.check_may_act_on(c, &s.value).await?;
        if changes.disabled == Some(true) && id == c.user.id {
            return Err(AdminError::WrongState {
                code: "cannot_disable_self",
                message: "you cannot disable yourself: ask another administrator".into(),
            });
        }
        let mut u = s.value.clone();
        if let Some(a) = changes.allow_send_as {
            u.allow_send_as = a;
        }
        if let Some(n) = changes.full_name {
            if n.trim().is_empty() {
                return Err(invalid("required", "full_name", "enter a name"));
            }
            u.full_name = n;
        }
        if let Some(d) = changes.disabled {
            u.disabled = d;
        }
        let old_password = u.password;
        if let Some(p) = &changes.password {
            if p.expose().chars().count() < 12 {
                return Err(invalid(
                    "too_short",
                    "password",
                    "use at least 12 characters",
                ));
            }
            let plain = p.clone();
            let hash = self
                .sign_in
                .hasher
                .run(move || serversync_vault::hash_password(plain.expose()))
                .await?
                .map_err(StoreError::from)?;
            u.password = Some(self.store.put_secret(Some(org), &Secret::new(hash)).await?);
        }
        let by = actor(c);
        let (mut writes, mut audit) = if u.disabled && !s.value.disabled {
            self.revocations(&u, false, &by).await?
        } else if changes.password.is_some() {
            self.revocations(&u, true, &by).await?
        } else {
            Default::default()
        };
        writes.insert(0, EntityWrite::update(&u, Some(s.version))?);
        audit.insert(0, NewAuditEntry::update(by, &s.value, &u));
        let new_password = u.password.filter(|_| changes.password.is_some());
        if let Err(e) = self.store.write_all_audited(&writes, audit).await {
            if let Some(new) = new_password {
                let _ = self.store.delete_secret(new).await;
            }
            return Err(e.into());
        }
        if new_password.is_some()
            && let Some(old) = old_password
        {
            let _ = self.store.delete_secret(old).await;
        }
        Ok(u)
    }

    /// Signs in to the admin center with the name (or id) of an organization, the email
    /// address of a user of it, and that user's password; `client` is where the request came
    /// from.
    ///
    /// - The same answer for an unknown organization or address, a wrong password, a user
    ///   without a password and a disabled user — and, since a dummy hash is verified when
    ///   there is no real one, in about the same time.
    /// - Hashing runs on the blocking pool, a bounded number at once ([`AdminError::Busy`]
    ///   when too many wait).
    /// - After a few failures an address, or a client, must wait before the next attempt, the
    ///   wait doubling with each further failure ([`AdminError::Throttled`]; no password is
    ///   checked meanwhile).
    /// - Every checked failure is logged and audited (address, client, reason; never the
    ///   password).
    pub async fn authenticate_password(
        &self,
        org: &str,
        email: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Caller> {
        let org_key = org.trim().to_lowercase();
        let email = email.trim().to_lowercase();
        let address = Key::Address(format!("{org_key}/{email}"));
        let mut keys = vec![address.clone()];
        keys.extend(client.map(Key::client));
        let throttle = &self.sign_in.throttle;
        if let Some(wait) = throttle.wait(&keys, std::time::Instant::now()) {
            tracing::debug!(%email, org = %org_key, client = ?client, "sign-in refused: waiting after failed sign-ins");
            metrics::counter!("serversync_sign_in_throttled_total").increment(1);
            return Err(AdminError::Throttled { retry_after: wait });
        }
        let found_org = match org_key.parse::<OrgId>() {
            Ok(id) => self.store.get::<Organization>(&id.to_string()).await?,
            Err(_) if org_key.is_empty() => None,
            Err(_) => self
                .store
                .list_all::<Organization>(None, &[("name", Col::text(&org_key))])
                .await?
                .into_iter()
                .next(),
        }
        .map(|s| s.value);
        let user = match &found_org {
            Some(o) => self
                .store
                .list_all::<User>(Some(o.id), &[("email", Col::text(&email))])
                .await?
                .into_iter()
                .next()
                .map(|s| s.value),
            None => None,
        };
        let stored = match user.as_ref().and_then(|u| u.password) {
            Some(id) => Some(self.store.get_secret(id).await?),
            None => None,
        };
        let given = Secret::new(password);
        let hash = stored.clone().unwrap_or_else(|| Secret::new(DUMMY_HASH));
        let ok = self
            .sign_in
            .hasher
            .run(move || serversync_vault::verify_password(given.expose(), hash.expose()))
            .await?;
        let reason = match (&found_org, &user) {
            (None, _) => "unknown organization",
            (Some(_), None) => "unknown address",
            (Some(_), Some(u)) if u.disabled => "user disabled",
            (Some(_), Some(_)) if stored.is_none() => "no password set",
            (Some(_), Some(_)) if !ok => "wrong password",
            (Some(_), Some(u)) => {
                throttle.succeeded(&address);
                return self.caller_for(u.clone()).await;
            }
        };
        let wait = throttle.failed(&keys, std::time::Instant::now());
        let client_text = client.map(|c| c.to_string()).unwrap_or_default();
        tracing::warn!(
            %email,
            org = %org_key,
            client = %client_text,
            reason,
            wait_seconds = wait.map_or(0, |w| w.as_secs()),
            "sign-in failed"
        );
        metrics::counter!("serversync_sign_in_failures_total").increment(1);
        let entry = NewAuditEntry {
            org_id: found_org.as_ref().map(|o| o.id),
            actor: Actor::System("sign-in".into()),
            action: "sign_in_failed".into(),
            entity: "user".into(),
            entity_id: user.as_ref().map(|u| u.id.to_string()).unwrap_or_default(),
            before: None,
            after: Some(serde_json::json!({
                "org": org_key,
                "email": email,
                "client_ip": client_text,
                "reason": reason,
            })),
        };
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::warn!(error = %e, "recording a failed sign-in in the audit log failed");
        }
        Err(AdminError::Unauthenticated)
    }

    /// Sets who has read access to a queue (and so may send from its mailbox): its owner or a
    /// holder of `manage_users`.
    pub async fn set_queue_members(
        &self,
        c: &Caller,
        org: OrgId,
        id: QueueId,
        members: std::collections::BTreeSet<UserId>,
    ) -> Result<Queue> {
        let s = match self.store.get::<Queue>(&id.to_string()).await? {
            Some(q) if q.value.org_id == org => q,
            _ => {
                return Err(AdminError::NotFound {
                    entity: "queue",
                    id: id.to_string(),
                });
            }
        };
        if s.value.owner_id != c.user.id {
            c.require(Privilege::ManageUsers)?;
        }
        let mut e = ValidationErrors::default();
        for (i, m) in members.iter().enumerate() {
            if self.user(org, *m).await.is_err() {
                e.push(
                    "not_found",
                    &format!("member_ids[{i}]"),
                    "no such user in this organization",
                );
            }
        }
        if !e.is_empty() {
            return Err(AdminError::Invalid(e));
        }
        let mut q = s.value.clone();
        q.member_ids = members;
        self.store
            .update_audited(
                &q,
                Some(s.version),
                Some(NewAuditEntry::update(actor(c), &s.value, &q)),
            )
            .await?;
        Ok(q)
    }

    pub async fn list_queues(
        &self,
        org: OrgId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Queue>> {
        Ok(self
            .store
            .list::<Queue>(Some(org), &[], after, limit)
            .await?)
    }

    // ---- email server profiles --------------------------------------------------------------

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
        if let Some(secret) = s.oauth_client_secret {
            match p.oauth.as_mut() {
                Some(o) => put(&self.store, org, &mut o.client_secret, Some(secret)).await?,
                None => {
                    return Err(invalid(
                        "required",
                        "oauth",
                        "a client secret needs oauth settings (client_id, tenant_id)",
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
            p.oauth.and_then(|o| o.client_secret),
        ]
        .into_iter()
        .flatten()
        {
            self.store.delete_secret(sid).await?;
        }
        Ok(())
    }

    // ---- organization email settings ---------------------------------------------------------

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

    // ---- mailboxes ---------------------------------------------------------------------------

    pub async fn mailbox(&self, c: &Caller, org: OrgId, id: MailboxId) -> Result<Stored<Mailbox>> {
        match self.store.get::<Mailbox>(&id.to_string()).await? {
            Some(m) if m.value.org_id == org && c.can_read_mailbox(&m.value) => Ok(m),
            _ => Err(AdminError::NotFound {
                entity: "mailbox",
                id: id.to_string(),
            }),
        }
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
            crate::domains::check_address(&self.store, org, "email", &m.email).await?;
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

    /// "Sync now": asks the engine to synchronize a mailbox's incoming email at once, whatever
    /// its polling interval, and retries a mailbox postponed by the retry policy immediately
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
            if b.incoming_method != IncomingMethod::ServerSideSync {
                return Err(AdminError::WrongState {
                    code: "not_server_side_sync",
                    message: format!(
                        "mailbox {} receives email by {}, not by server-side synchronization: there is nothing to synchronize",
                        b.email,
                        serversync_model::wire_name(&b.incoming_method)
                    ),
                });
            }
            if !b.incoming.enabled {
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

    // ---- test and enable, jobs -----------------------------------------------------------------

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

    /// The item-level records of a mailbox: every message seen, with its decision and reasons;
    /// only those with `decision` when given.
    pub async fn items(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: MailboxId,
        decision: Option<ItemDecision>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<serversync_model::item::MailItem>> {
        let m = self.mailbox(c, org, mailbox).await?;
        Ok(self
            .store
            .list_items_with(m.value.id, decision, after, limit)
            .await?)
    }

    // ---- alerts and audit ----------------------------------------------------------------------

    /// Alerts the caller may see: all with "read mailboxes", else those addressed to it.
    pub async fn list_alerts(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: Option<MailboxId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Alert>> {
        let filters: Vec<(&'static str, Col)> = mailbox
            .map(|m| ("mailbox_id", Col::text(m)))
            .into_iter()
            .collect();
        let mut page = self
            .store
            .list::<Alert>(Some(org), &filters, after, limit)
            .await?;
        if !c.has(Privilege::ReadMailboxes) {
            page.items
                .retain(|a| a.value.recipients.contains(&c.user.id));
        }
        Ok(page)
    }

    pub async fn dismiss_alert(&self, c: &Caller, org: OrgId, id: AlertId) -> Result<Alert> {
        let s = match self.store.get::<Alert>(&id.to_string()).await? {
            Some(a)
                if a.value.org_id == org
                    && (c.has(Privilege::WriteMailboxes)
                        || a.value.recipients.contains(&c.user.id)) =>
            {
                a
            }
            _ => {
                return Err(AdminError::NotFound {
                    entity: "alert",
                    id: id.to_string(),
                });
            }
        };
        let mut a = s.value.clone();
        a.dismissed_at = Some(now());
        self.store.update(&a, Some(s.version)).await?;
        Ok(a)
    }

    pub async fn audit(
        &self,
        c: &Caller,
        org: OrgId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<serversync_model::audit::AuditEntry>> {
        c.require(Privilege::ReadAuditLog)?;
        Ok(self.store.list_audit(Some(org), after_seq, limit).await?)
    }

    /// The audit log newest first: `limit` entries before `before_seq` (from the newest when
    /// `None`).
    pub async fn audit_newest(
        &self,
        c: &Caller,
        org: OrgId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<serversync_model::audit::AuditEntry>> {
        c.require(Privilege::ReadAuditLog)?;
        Ok(self
            .store
            .list_audit_newest(Some(org), before_seq, limit)
            .await?)
    }

    // ---- CRM records needed to try things --------------------------------------------------------

    /// Creates a CRM record after checking that every record it refers to
    /// ([`RecordRefs::refs`]) is of the organization: a reference to another organization's
    /// record, or to none, is refused naming the field.
    pub async fn create_record<E: serversync_store::Entity + RecordRefs>(
        &self,
        c: &Caller,
        record: &E,
    ) -> Result<Stored<E>> {
        c.require(Privilege::WriteRecords)?;
        if let Some(org) = record.org_id() {
            self.check_refs(org, &record.refs()).await?;
        }
        Ok(self
            .store
            .insert_audited(record, Some(NewAuditEntry::create(actor(c), record)))
            .await?)
    }

    pub async fn list_records<E: serversync_store::Entity>(
        &self,
        c: &Caller,
        org: OrgId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<E>> {
        c.require(Privilege::ReadRecords)?;
        Ok(self.store.list::<E>(Some(org), &[], after, limit).await?)
    }

    /// Email activities of an organization matching `f`, in id (creation) order.
    pub async fn list_email_activities(
        &self,
        c: &Caller,
        org: OrgId,
        f: &ActivityFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<serversync_model::crm::EmailActivity>> {
        use serversync_store::{Col, Filter};
        c.require(Privilege::ReadRecords)?;
        let mut filters = vec![Filter::Eq("kind", Col::text("email"))];
        if let Some(m) = f.mailbox {
            filters.push(Filter::LinkedTo(m.to_string()));
        }
        if let Some(r) = f.regarding {
            filters.push(Filter::Eq(
                "regarding_id",
                Col::text(serversync_model::wire_name(&r)),
            ));
        }
        if let Some(conv) = &f.conversation {
            filters.push(Filter::Eq("conversation_id", Col::text(conv)));
        }
        if let Some(t) = f.since {
            filters.push(Filter::AtLeast("occurred_at", t.timestamp_millis()));
        }
        if let Some(t) = f.until {
            filters.push(Filter::Below("occurred_at", t.timestamp_millis()));
        }
        Ok(self
            .store
            .list_where(Some(org), &filters, after, limit)
            .await?)
    }

    /// The activities of the conversation of activity `id` (itself included), oldest first (by
    /// received, else sent, else created time).
    pub async fn activity_thread(
        &self,
        c: &Caller,
        org: OrgId,
        id: serversync_model::ActivityId,
    ) -> Result<Vec<serversync_model::crm::EmailActivity>> {
        let a = self.email_activity(c, org, id).await?;
        let Some(conv) = a.conversation_id.clone() else {
            return Ok(vec![a]);
        };
        let mut all: Vec<_> = self
            .store
            .list_all::<serversync_model::crm::EmailActivity>(
                Some(org),
                &[
                    ("kind", serversync_store::Col::text("email")),
                    ("conversation_id", serversync_store::Col::text(conv)),
                ],
            )
            .await?
            .into_iter()
            .map(|s| s.value)
            .collect();
        all.sort_by_key(|a| (a.received_at.or(a.sent_at).unwrap_or(a.created_at), a.id));
        Ok(all)
    }

    /// An attachment of an email activity, with its bytes when they were kept.
    pub async fn activity_attachment(
        &self,
        c: &Caller,
        org: OrgId,
        id: serversync_model::ActivityId,
        sha256: &str,
    ) -> Result<(serversync_model::crm::Attachment, AttachmentContent)> {
        let a = self.email_activity(c, org, id).await?;
        let sha = sha256.to_ascii_lowercase();
        let att = a
            .attachments
            .into_iter()
            .find(|t| t.sha256.eq_ignore_ascii_case(&sha))
            .ok_or_else(|| AdminError::NotFound {
                entity: "attachment",
                id: format!("{sha} of email activity {id}"),
            })?;
        if let Some(reason) = &att.dropped_reason {
            let reason = reason.clone();
            return Ok((att, AttachmentContent::Dropped(reason)));
        }
        Ok(match self.store.get_blob(&att.sha256).await? {
            Some(bytes) => (att, AttachmentContent::Bytes(bytes)),
            None => (
                att,
                AttachmentContent::Dropped("the stored content is no longer kept".into()),
            ),
        })
    }

    /// Queue items of an organization, optionally of one queue.
    pub async fn list_queue_items(
        &self,
        c: &Caller,
        org: OrgId,
        queue: Option<serversync_model::QueueId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<serversync_model::crm::QueueItem>> {
        c.require(Privilege::ReadRecords)?;
        let filters: Vec<_> = queue
            .map(|q| ("queue_id", serversync_store::Col::text(q)))
            .into_iter()
            .collect();
        Ok(self.store.list(Some(org), &filters, after, limit).await?)
    }

    /// One email activity of the organization.
    pub async fn email_activity(
        &self,
        c: &Caller,
        org: OrgId,
        id: serversync_model::ActivityId,
    ) -> Result<serversync_model::crm::EmailActivity> {
        c.require(Privilege::ReadRecords)?;
        let found = self
            .store
            .list::<serversync_model::crm::EmailActivity>(
                Some(org),
                &[
                    ("kind", serversync_store::Col::text("email")),
                    ("id", serversync_store::Col::text(id)),
                ],
                None,
                1,
            )
            .await?;
        found
            .items
            .into_iter()
            .next()
            .map(|s| s.value)
            .ok_or_else(|| AdminError::NotFound {
                entity: "email activity",
                id: id.to_string(),
            })
    }
}

/// The records a CRM record refers to, by the field that holds each.
pub trait RecordRefs {
    fn refs(&self) -> Vec<(&'static str, RecordRef)>;
}

impl RecordRefs for Account {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        vec![("owner_id", RecordRef::User(self.owner_id))]
    }
}

impl RecordRefs for Contact {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        let mut v = vec![("owner_id", RecordRef::User(self.owner_id))];
        v.extend(
            self.account_id
                .map(|a| ("account_id", RecordRef::Account(a))),
        );
        v
    }
}

impl RecordRefs for Lead {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        vec![("owner_id", RecordRef::User(self.owner_id))]
    }
}

impl Admin {
    /// Whether record `r` exists in organization `org`.
    pub(crate) async fn record_exists(&self, org: OrgId, r: RecordRef) -> Result<bool> {
        use serversync_model::crm::EmailActivity;
        use serversync_store::Filter;
        let store = &self.store;
        let (f, o) = (|id: String| [Filter::Eq("id", Col::text(id))], Some(org));
        let n = match r {
            RecordRef::User(i) => store.count_where::<User>(o, &f(i.to_string())).await?,
            RecordRef::Queue(i) => store.count_where::<Queue>(o, &f(i.to_string())).await?,
            RecordRef::Contact(i) => store.count_where::<Contact>(o, &f(i.to_string())).await?,
            RecordRef::Account(i) => store.count_where::<Account>(o, &f(i.to_string())).await?,
            RecordRef::Lead(i) => store.count_where::<Lead>(o, &f(i.to_string())).await?,
            // Emails, appointments and tasks share one table.
            RecordRef::Activity(i) => {
                store
                    .count_where::<EmailActivity>(o, &f(i.to_string()))
                    .await?
            }
        };
        Ok(n > 0)
    }

    /// Refuses, naming each field, references to records that are not of `org`.
    pub(crate) async fn check_refs(
        &self,
        org: OrgId,
        refs: &[(&'static str, RecordRef)],
    ) -> Result<()> {
        let mut e = ValidationErrors::default();
        for (field, r) in refs {
            if !self.record_exists(org, *r).await? {
                e.push(
                    "not_found",
                    field,
                    format!(
                        "no such {} in this organization",
                        match r {
                            RecordRef::User(_) => "user",
                            RecordRef::Queue(_) => "queue",
                            RecordRef::Contact(_) => "contact",
                            RecordRef::Account(_) => "account",
                            RecordRef::Lead(_) => "lead",
                            RecordRef::Activity(_) => "activity",
                        }
                    ),
                );
            }
        }
        Ok(e.into_result()?)
    }
}

/// Which email activities to list (every field optional; all given must match).
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    /// Seen through this mailbox.
    pub mailbox: Option<serversync_model::MailboxId>,
    /// Set regarding this record.
    pub regarding: Option<serversync_model::crm::RecordRef>,
    /// Of this conversation.
    pub conversation: Option<String>,
    /// Received (else sent, else created) at or after.
    pub since: Option<serversync_model::Timestamp>,
    /// Received (else sent, else created) before.
    pub until: Option<serversync_model::Timestamp>,
}

/// The bytes of an attachment, or why they are not there.
#[derive(Debug, Clone)]
pub enum AttachmentContent {
    Bytes(Vec<u8>),
    Dropped(String),
}

fn fit_act_to_profile(m: &mut Mailbox, p: &EmailServerProfile) {
    if !p.supports_act() {
        m.act_method = ActMethod::None;
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

/// An audit entry for a token: the record without its hash.
fn token_audit(
    by: Actor,
    action: &str,
    before: Option<&ApiToken>,
    after: Option<&ApiToken>,
) -> NewAuditEntry {
    let mut e = NewAuditEntry::change(by, action, before, after);
    for doc in [&mut e.before, &mut e.after].into_iter().flatten() {
        if let Some(o) = doc.as_object_mut() {
            o.remove("token_hash");
        }
    }
    e
}

/// Revoking a stored token: the revoked token, its write (from its version) and audit entry.
fn revocation(s: &Stored<ApiToken>, by: Actor) -> Result<(ApiToken, EntityWrite, NewAuditEntry)> {
    let mut t = s.value.clone();
    t.revoked = true;
    t.revoked_at = Some(now());
    let w = EntityWrite::update(&t, Some(s.version))?;
    let a = token_audit(by, "revoke", Some(&s.value), Some(&t));
    Ok((t, w, a))
}
