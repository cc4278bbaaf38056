//! Organizations, users, queues, security roles and privileges.

use crate::{OrgId, QueueId, RoleId, Timestamp, UserId, ValidationErrors, validate};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// An organization: one CRM environment. An installation holds several; everything else
/// belongs to exactly one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub id: OrgId,
    /// Short, URL-safe, unique name (`contoso`, `contoso-test`).
    pub name: String,
    pub display_name: String,
    /// Stamped on items synchronized with Exchange so a mailbox syncs with one organization only.
    pub sync_stamp: String,
    /// FIPS 140-2 mode: refuse servers and algorithms that are not compliant.
    pub fips_mode: bool,
    pub created_at: DateTime<Utc>,
}

impl Organization {
    pub fn new(name: &str, display_name: &str, now: Timestamp) -> Self {
        let id = OrgId::new();
        Self {
            id,
            name: name.to_owned(),
            display_name: display_name.to_owned(),
            sync_stamp: id.to_string(),
            fips_mode: false,
            created_at: now,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            e.push(
                "invalid_name",
                "name",
                "use 1-64 lowercase letters, digits and dashes",
            );
        }
        validate::check_required(&mut e, "display_name", &self.display_name);
        e.into_result()
    }
}

/// Something a security role allows.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    /// Create, change and delete email server profiles and organization email settings.
    ManageEmailConfiguration,
    ReadMailboxes,
    WriteMailboxes,
    /// "Approve email addresses for users or queues".
    ApproveEmailAddresses,
    /// "Send email as another user" (the other user must also consent).
    SendAsAnotherUser,
    ManageUsers,
    ReadAuditLog,
    ReadRecords,
    WriteRecords,
}

/// A security role: a named set of privileges.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub id: RoleId,
    pub org_id: OrgId,
    pub name: String,
    pub builtin: Option<BuiltinRole>,
    pub privileges: BTreeSet<Privilege>,
}

/// The roles every organization has from the start.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinRole {
    SystemAdministrator,
    /// Delegated role: may approve mailboxes without being a system administrator.
    MailboxApprover,
    BasicUser,
}

impl BuiltinRole {
    pub const ALL: [BuiltinRole; 3] = [
        BuiltinRole::SystemAdministrator,
        BuiltinRole::MailboxApprover,
        BuiltinRole::BasicUser,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinRole::SystemAdministrator => "System Administrator",
            BuiltinRole::MailboxApprover => "Mailbox Approver",
            BuiltinRole::BasicUser => "Basic User",
        }
    }

    pub fn privileges(self) -> BTreeSet<Privilege> {
        use Privilege::*;
        match self {
            BuiltinRole::SystemAdministrator => [
                ManageEmailConfiguration,
                ReadMailboxes,
                WriteMailboxes,
                ApproveEmailAddresses,
                SendAsAnotherUser,
                ManageUsers,
                ReadAuditLog,
                ReadRecords,
                WriteRecords,
            ]
            .into(),
            BuiltinRole::MailboxApprover => [ReadMailboxes, ApproveEmailAddresses].into(),
            BuiltinRole::BasicUser => [ReadRecords, WriteRecords].into(),
        }
    }

    pub fn role(self, org_id: OrgId) -> Role {
        Role {
            id: RoleId::new(),
            org_id,
            name: self.name().to_owned(),
            builtin: Some(self),
            privileges: self.privileges(),
        }
    }
}

/// A CRM user. Each has one mailbox.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub org_id: OrgId,
    pub full_name: String,
    /// Primary email address; the user's mailbox follows it.
    pub email: String,
    pub role_ids: BTreeSet<RoleId>,
    /// Global or Exchange administrator of the (primary) Microsoft 365 tenant: needed, with the
    /// approve privilege, to approve mailboxes of Exchange Online profiles.
    pub tenant_exchange_admin: bool,
    /// Consent to let users holding "send as another user" send email on this user's behalf.
    pub allow_send_as: bool,
    pub disabled: bool,
    /// May create and manage organizations of the installation (the bootstrapped first
    /// administrator is one).
    #[serde(default)]
    pub installation_admin: bool,
    /// Password for signing in to the admin center: a sealed secret holding a PBKDF2 hash
    /// (never the password). Write-only in the API.
    #[serde(default)]
    pub password: Option<crate::SecretId>,
    pub created_at: DateTime<Utc>,
}

impl User {
    pub fn new(org_id: OrgId, full_name: &str, email: &str, now: Timestamp) -> Self {
        Self {
            id: UserId::new(),
            org_id,
            full_name: full_name.to_owned(),
            email: email.to_owned(),
            role_ids: BTreeSet::new(),
            tenant_exchange_admin: false,
            allow_send_as: false,
            password: None,
            disabled: false,
            installation_admin: false,
            created_at: now,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        validate::check_required(&mut e, "full_name", &self.full_name);
        if !validate::is_email_address(&self.email) {
            e.push(
                "invalid_email",
                "email",
                "enter an email address such as name@example.com",
            );
        }
        e.into_result()
    }
}

/// The privileges a user holds through its roles.
pub fn effective_privileges<'a>(
    user: &User,
    roles: impl IntoIterator<Item = &'a Role>,
) -> BTreeSet<Privilege> {
    roles
        .into_iter()
        .filter(|r| user.role_ids.contains(&r.id) && r.org_id == user.org_id)
        .flat_map(|r| r.privileges.iter().copied())
        .collect()
}

/// A queue: a shared mailbox (support@) whose mail becomes queue items.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub id: QueueId,
    pub org_id: OrgId,
    pub name: String,
    pub email: String,
    pub owner_id: UserId,
    /// Users and teams with read access to the queue may send from it.
    pub member_ids: BTreeSet<UserId>,
    pub created_at: DateTime<Utc>,
}

impl Queue {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        validate::check_required(&mut e, "name", &self.name);
        if !validate::is_email_address(&self.email) {
            e.push(
                "invalid_email",
                "email",
                "enter an email address such as support@example.com",
            );
        }
        e.into_result()
    }
}

/// A mail domain the installation administrator assigned to one organization. The Email
/// Router delivers a recipient only to a mailbox of the organization holding the recipient's
/// domain, and no other organization may give a user, queue or mailbox an address in it: an
/// address is unique only within an organization, a domain across the installation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    /// Lowercase ASCII (an internationalized domain in its `xn--` form).
    pub domain: String,
    pub org_id: OrgId,
    pub assigned_at: DateTime<Utc>,
}

impl Domain {
    /// `raw` as a domain name (trimmed, lowercase), or why it is not one (field `domain`).
    pub fn normalize(raw: &str) -> Result<String, ValidationErrors> {
        let d = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if d.is_empty() || d.len() > 253 || !d.split('.').all(label_ok) {
            let mut e = ValidationErrors::default();
            e.push(
                "invalid_domain",
                "domain",
                "enter a domain name such as example.com (letters, digits, dashes and dots; an internationalized name in its xn-- form)",
            );
            return Err(e);
        }
        Ok(d)
    }
}

/// The domain of an email address, lowercase (`None` without an `@`).
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_come_from_the_users_roles_in_its_org() {
        let org = OrgId::new();
        let admin = BuiltinRole::SystemAdministrator.role(org);
        let approver = BuiltinRole::MailboxApprover.role(org);
        let foreign = BuiltinRole::SystemAdministrator.role(OrgId::new());
        let mut u = User::new(org, "Ann", "ann@example.com", chrono::Utc::now());
        u.role_ids.insert(approver.id);
        u.role_ids.insert(foreign.id);
        let p = effective_privileges(&u, [&admin, &approver, &foreign]);
        assert!(p.contains(&Privilege::ApproveEmailAddresses));
        assert!(!p.contains(&Privilege::ManageEmailConfiguration));
    }

    #[test]
    fn domains_are_normalized_or_refused() {
        assert_eq!(Domain::normalize(" Example.COM. ").unwrap(), "example.com");
        assert_eq!(
            Domain::normalize("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            "a@b.com",
            "exa mple.com",
            "-x.com",
            "a..b",
            "bücher.example",
        ] {
            assert_eq!(
                Domain::normalize(bad).unwrap_err().codes(),
                ["invalid_domain"],
                "{bad:?}"
            );
        }
        assert_eq!(domain_of("Ann@Example.COM").as_deref(), Some("example.com"));
        assert_eq!(domain_of("no-at-sign"), None);
    }
}
