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
