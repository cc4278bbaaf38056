//! Users, queues and roles: creating users and queues (with their mailboxes), changing
//! them, admin center passwords, queue members.

use super::{Admin, AdminError, Result, actor, fit_act_to_profile, invalid, now};
use crate::sign_in::Key;
use serversync_model::audit::Actor;
use serversync_model::auth::Caller;
use serversync_model::crm::RecordRef;
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::org::{
    BuiltinRole, Organization, Privilege, Queue, Role, User, effective_privileges,
};
use serversync_model::{OrgId, QueueId, Secret, UserId, ValidationErrors};
use serversync_store::{Col, EntityWrite, NewAuditEntry, Page, StoreError};

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

impl Admin {
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
        super::domains::check_address(&self.store, org, "email", &user.email).await?;
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
        super::domains::check_address(&self.store, org, "email", &q.email).await?;
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
}
