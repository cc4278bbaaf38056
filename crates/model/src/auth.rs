//! API tokens and the authorization rules of administration (REFERENCE.md part A: who may
//! change, approve and read mailboxes).

use crate::mailbox::Mailbox;
use crate::org::{Privilege, User};
use crate::profile::{EmailServerProfile, ServerType};
use crate::{OrgId, TokenId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The name of the API token behind a web session (the admin center's sign-in); expired
/// ones are removed by the pruner.
pub const WEB_SESSION: &str = "web session";

/// A bearer token for the API, tied to a user. Only a hash of the token is stored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: TokenId,
    pub org_id: OrgId,
    pub user_id: UserId,
    pub name: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// The first characters of the token, to tell tokens apart in lists.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// An API token, or the token of an admin center session.
    #[serde(default)]
    pub kind: TokenKind,
}

/// What a token is for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Made through the API or `serversync admin token create`, for scripts and the CLI.
    #[default]
    Api,
    /// Made by signing in to the admin center; ends with sign-out, a new password, or when
    /// the user is disabled.
    Session,
}

impl ApiToken {
    /// Whether the token still lets its user in at `now` (not revoked, not expired).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at.is_none_or(|e| e > now)
    }
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: &'static str,
    pub message: String,
}

/// A caller: the user and the privileges its roles give it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub privileges: BTreeSet<Privilege>,
}

impl Caller {
    pub fn has(&self, p: Privilege) -> bool {
        self.privileges.contains(&p)
    }

    pub fn require(&self, p: Privilege) -> Result<(), Denied> {
        if self.has(p) {
            Ok(())
        } else {
            Err(Denied {
                code: "missing_privilege",
                message: format!(
                    "this needs the privilege {}; ask a system administrator to grant a role that has it",
                    crate::wire_name(&p)
                ),
            })
        }
    }

    /// Whether the caller may act on `target` — set its password, disable it, revoke its
    /// tokens — given the privileges `target` holds. Oneself: always. Anybody else needs
    /// `manage_users`, and the target may hold nothing the caller does not: its privileges
    /// must be a subset of the caller's, and it may be a tenant administrator only if the
    /// caller is one. The installation administrator is reached only by an installation
    /// administrator, who may act on anyone.
    pub fn may_act_on(
        &self,
        target: &User,
        target_privileges: &BTreeSet<Privilege>,
    ) -> Result<(), Denied> {
        if target.id == self.user.id {
            return Ok(());
        }
        self.require(Privilege::ManageUsers)?;
        if self.user.installation_admin {
            return Ok(());
        }
        if target.installation_admin {
            return Err(Denied {
                code: "installation_admin_protected",
                message: "only an installation administrator may change the installation administrator or its tokens"
                    .into(),
            });
        }
        self.may_grant(target_privileges, target.tenant_exchange_admin)
    }

    /// Whether the caller may give a user these privileges (and tenant administration):
    /// nobody grants more than they hold. An installation administrator may grant anything.
    pub fn may_grant(
        &self,
        privileges: &BTreeSet<Privilege>,
        tenant_exchange_admin: bool,
    ) -> Result<(), Denied> {
        if self.user.installation_admin {
            return Ok(());
        }
        let beyond: Vec<String> = privileges
            .difference(&self.privileges)
            .map(crate::wire_name)
            .collect();
        if !beyond.is_empty() || (tenant_exchange_admin && !self.user.tenant_exchange_admin) {
            let what = if beyond.is_empty() {
                "tenant_exchange_admin".to_owned()
            } else {
                beyond.join(", ")
            };
            return Err(Denied {
                code: "more_privileged_user",
                message: format!(
                    "this user would hold more than you do ({what}): only someone who holds it may do this"
                ),
            });
        }
        Ok(())
    }

    /// Read a mailbox: with "read mailboxes", or one's own mailbox.
    pub fn can_read_mailbox(&self, m: &Mailbox) -> bool {
        self.has(Privilege::ReadMailboxes) || m.owner_id == self.user.id
    }

    /// Change a mailbox (delivery methods, profile, credentials): read and write on mailboxes.
    pub fn require_mailbox_write(&self) -> Result<(), Denied> {
        self.require(Privilege::ReadMailboxes)?;
        self.require(Privilege::WriteMailboxes)
    }

    /// Approve or reject a mailbox's email address. For mailboxes of an Exchange Online
    /// profile the approver must also be a global or Exchange administrator of the tenant.
    pub fn require_approve(&self, profile: Option<&EmailServerProfile>) -> Result<(), Denied> {
        self.require(Privilege::ApproveEmailAddresses)?;
        if profile.is_some_and(|p| p.server_type == ServerType::ExchangeOnline)
            && !self.user.tenant_exchange_admin
        {
            return Err(Denied {
                code: "tenant_admin_required",
                message: "approving mailboxes of an Exchange Online profile needs a global or Exchange \
                          administrator of the Microsoft 365 tenant: set tenant_exchange_admin on the approving user"
                    .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::org::BuiltinRole;

    #[test]
    fn nobody_acts_on_a_user_holding_more() {
        let sysadmin = caller(BuiltinRole::SystemAdministrator, false);
        let approver = caller(BuiltinRole::MailboxApprover, false);
        let mut root = caller(BuiltinRole::SystemAdministrator, false);
        root.user.installation_admin = true;
        let tenant_admin = caller(BuiltinRole::SystemAdministrator, true);
        let basic = caller(BuiltinRole::BasicUser, false);
        let code = |by: &Caller, on: &Caller| {
            by.may_act_on(&on.user, &on.privileges)
                .err()
                .map(|d| d.code)
        };
        // Oneself, always; a subset (or the same) with manage_users.
        assert_eq!(code(&basic, &basic), None);
        assert_eq!(code(&sysadmin, &basic), None);
        assert_eq!(code(&sysadmin, &approver), None);
        assert_eq!(
            code(&sysadmin, &caller(BuiltinRole::SystemAdministrator, false)),
            None
        );
        // Without manage_users, nobody else.
        assert_eq!(code(&approver, &basic), Some("missing_privilege"));
        // More privileges, tenant administration, the installation administrator: refused.
        assert_eq!(code(&sysadmin, &tenant_admin), Some("more_privileged_user"));
        assert_eq!(code(&sysadmin, &root), Some("installation_admin_protected"));
        assert_eq!(
            code(&tenant_admin, &root),
            Some("installation_admin_protected")
        );
        // A role with manage_users but less than a system administrator.
        let mut manager = caller(BuiltinRole::BasicUser, false);
        manager.privileges.insert(Privilege::ManageUsers);
        assert_eq!(code(&manager, &sysadmin), Some("more_privileged_user"));
        assert_eq!(code(&manager, &approver), Some("more_privileged_user"));
        assert_eq!(code(&manager, &basic), None);
        assert!(
            manager
                .may_grant(&BuiltinRole::SystemAdministrator.privileges(), false)
                .is_err()
        );
        // The installation administrator acts on anyone.
        assert_eq!(code(&root, &tenant_admin), None);
        assert_eq!(code(&root, &basic), None);
    }

    #[test]
    fn a_token_lives_until_it_expires_or_is_revoked() {
        let now = chrono::Utc::now();
        let mut t = ApiToken {
            id: TokenId::new(),
            org_id: OrgId::new(),
            user_id: UserId::new(),
            name: "t".into(),
            token_hash: String::new(),
            prefix: String::new(),
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(1)),
            revoked: false,
            revoked_at: None,
            kind: TokenKind::Api,
        };
        assert!(t.is_live(now));
        assert!(!t.is_live(now + chrono::Duration::seconds(1)));
        t.expires_at = None;
        assert!(t.is_live(now + chrono::Duration::days(10_000)));
        t.revoked = true;
        assert!(!t.is_live(now));
    }

    fn caller(role: BuiltinRole, tenant_admin: bool) -> Caller {
        let mut u = User::new(OrgId::new(), "U", "u@example.com", chrono::Utc::now());
        u.tenant_exchange_admin = tenant_admin;
        Caller {
            user: u,
            privileges: role.privileges(),
        }
    }

    #[test]
    fn approval_rules() {
        let org = OrgId::new();
        let now = chrono::Utc::now();
        let eo = EmailServerProfile::new(org, "EO", ServerType::ExchangeOnline, UserId::new(), now);
        let imap = EmailServerProfile::new(org, "I", ServerType::ImapSmtp, UserId::new(), now);
        assert!(
            caller(BuiltinRole::SystemAdministrator, false)
                .require_approve(Some(&imap))
                .is_ok()
        );
        assert_eq!(
            caller(BuiltinRole::SystemAdministrator, false)
                .require_approve(Some(&eo))
                .unwrap_err()
                .code,
            "tenant_admin_required"
        );
        assert!(
            caller(BuiltinRole::SystemAdministrator, true)
                .require_approve(Some(&eo))
                .is_ok()
        );
        assert!(
            caller(BuiltinRole::MailboxApprover, false)
                .require_approve(Some(&imap))
                .is_ok()
        );
        assert!(
            caller(BuiltinRole::MailboxApprover, false)
                .require_mailbox_write()
                .is_err()
        );
        assert_eq!(
            caller(BuiltinRole::BasicUser, false)
                .require_approve(None)
                .unwrap_err()
                .code,
            "missing_privilege"
        );
    }
}
