//! Administration: the operations behind the REST API and the CLI (SPEC.md §3), each checking
//! the caller's privileges, validating with the model's rules, writing an audit entry in the
//! same transaction as the change, and keeping mailboxes in step with users and queues.

use serversync_model::alert::{Alert, Severity};
use serversync_model::audit::Actor;
use serversync_model::auth::{ApiToken, Caller, Denied};
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
use serversync_store::{Col, NewAuditEntry, Page, Store, StoreError, Stored};
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

#[derive(Clone)]
pub struct Admin {
    store: Store,
    /// Wakes the engine's main loop: a job was queued or a mailbox asked to sync now.
    jobs_wake: Arc<Notify>,
}

impl Admin {
    pub fn new(store: Store, jobs_wake: Arc<Notify>) -> Self {
        Self { store, jobs_wake }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wakes the engine's main loop (a job was queued, a webhook resumed…).
    pub(crate) fn wake_engine(&self) {
        self.jobs_wake.notify_one();
    }

    // ---- authentication ---------------------------------------------------------------------

    /// The caller behind a bearer token.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let hash = serversync_vault::sha256_hex(token.as_bytes());
        let found = self
            .store
            .list_all::<ApiToken>(None, &[("token_hash", Col::text(&hash))])
            .await?;
        let Some(t) = found.into_iter().next().map(|s| s.value) else {
            return Err(AdminError::Unauthenticated);
        };
        if t.revoked || t.expires_at.is_some_and(|e| e <= now()) {
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
        let roles = self.store.list_all::<Role>(Some(user.org_id), &[]).await?;
        let privileges = effective_privileges(&user, roles.iter().map(|r| &r.value));
        Ok(Caller { user, privileges })
    }

    /// Creates an API token for a user; returns the token (shown once) and its record.
    pub async fn create_token(
        &self,
        user: &User,
        name: &str,
        by: Actor,
    ) -> Result<(String, ApiToken)> {
        self.create_token_until(user, name, by, None).await
    }

    /// [`Admin::create_token`], expiring at `expires_at` when given.
    async fn create_token_until(
        &self,
        user: &User,
        name: &str,
        by: Actor,
        expires_at: Option<Timestamp>,
    ) -> Result<(String, ApiToken)> {
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
        };
        self.store
            .insert_audited(&t, Some(NewAuditEntry::create(by, &t)))
            .await?;
        Ok((token, t))
    }

    /// A web session for the caller: an API token named "web session" that expires after
    /// `ttl`. Returns the token (kept only in the browser's cookie).
    pub async fn create_session(&self, c: &Caller, ttl: chrono::Duration) -> Result<String> {
        let (token, _) = self
            .create_token_until(&c.user, "web session", actor(c), Some(now() + ttl))
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
            let mut t = s.value;
            t.revoked = true;
            self.store.update(&t, Some(s.version)).await?;
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
        user.validate()?;
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
        self.user(org, owner_id).await?;
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

    /// Changes a user's own settings: the consent to let users holding "send as another
    /// user" send on their behalf, the display name, and the admin center password (at least
    /// 12 characters; stored as a sealed PBKDF2 hash). The user themself, or a holder of
    /// `manage_users`.
    pub async fn update_user(
        &self,
        c: &Caller,
        org: OrgId,
        id: UserId,
        allow_send_as: Option<bool>,
        full_name: Option<String>,
        password: Option<Secret>,
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
        let mut u = s.value.clone();
        if let Some(a) = allow_send_as {
            u.allow_send_as = a;
        }
        if let Some(n) = full_name {
            if n.trim().is_empty() {
                let mut e = ValidationErrors::default();
                e.push("required", "full_name", "enter a name");
                return Err(AdminError::Invalid(e));
            }
            u.full_name = n;
        }
        let old_password = u.password;
        if let Some(p) = &password {
            if p.expose().chars().count() < 12 {
                let mut e = ValidationErrors::default();
                e.push("too_short", "password", "use at least 12 characters");
                return Err(AdminError::Invalid(e));
            }
            let hash = serversync_vault::hash_password(p.expose()).map_err(StoreError::from)?;
            u.password = Some(self.store.put_secret(Some(org), &Secret::new(hash)).await?);
        }
        self.store
            .update_audited(
                &u,
                Some(s.version),
                Some(NewAuditEntry::update(actor(c), &s.value, &u)),
            )
            .await?;
        if password.is_some()
            && let Some(old) = old_password
        {
            let _ = self.store.delete_secret(old).await;
        }
        Ok(u)
    }

    /// Signs in with an email address and password (the admin center). The same answer for an
    /// unknown user, a wrong password, a user without a password and a disabled user.
    pub async fn authenticate_password(&self, email: &str, password: &str) -> Result<Caller> {
        let found = self
            .store
            .list_all::<User>(None, &[("email", Col::text(email.trim().to_lowercase()))])
            .await?;
        let user = found.into_iter().map(|s| s.value).find(|u| !u.disabled);
        let stored = match user.as_ref().and_then(|u| u.password) {
            Some(id) => Some(self.store.get_secret(id).await?),
            None => None,
        };
        // Without a stored hash, still spend the time of a verification.
        const DUMMY: &str = "pbkdf2-sha256$600000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let ok = serversync_vault::verify_password(
            password,
            stored.as_ref().map(|s| s.expose()).unwrap_or(DUMMY),
        );
        match user {
            Some(u) if ok && stored.is_some() => self.caller_for(u).await,
            _ => Err(AdminError::Unauthenticated),
        }
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

    async fn check_profile(&self, org: &Organization, p: &EmailServerProfile) -> Result<()> {
        p.validate(org.fips_mode)?;
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
        self.check_profile(org, &p).await?;
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
        self.check_profile(org, &p).await?;
        let make_default = p.is_default && !before.value.is_default;
        p.is_default = before.value.is_default && p.is_default;
        if before.value.is_default && !p.is_default {
            let mut s = self.settings(org.id).await?;
            s.value.default_profile_id = None;
            self.store.update(&s.value, Some(s.version)).await?;
        }
        self.store_profile_secrets(org.id, &mut p, secrets).await?;
        let stored = self
            .store
            .update_audited(
                &p,
                expected,
                Some(NewAuditEntry::update(actor(c), &before.value, &p)),
            )
            .await?;
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

    // ---- CRM records needed to try things --------------------------------------------------------

    pub async fn create_record<E: serversync_store::Entity>(
        &self,
        c: &Caller,
        record: &E,
    ) -> Result<Stored<E>> {
        c.require(Privilege::WriteRecords)?;
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
