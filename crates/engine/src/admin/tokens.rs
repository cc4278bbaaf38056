//! API tokens and admin center sessions: authenticating a bearer token, creating, issuing,
//! listing and revoking tokens, sessions, and the first start's bootstrap.

use super::{Admin, AdminError, Result, actor, invalid, now};
use serversync_model::audit::Actor;
use serversync_model::auth::{ApiToken, Caller, Denied, TokenKind};
use serversync_model::org::{BuiltinRole, Organization, Privilege, Role, User};
use serversync_model::{OrgId, Timestamp, TokenId, UserId};
use serversync_store::{Col, EntityWrite, Filter, NewAuditEntry, Page, StoreError, Stored};

impl Admin {
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
    pub(super) async fn revocations(
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
