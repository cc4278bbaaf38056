//! The test accounts every server knows.

use serde::{Deserialize, Serialize};

/// Mail domain of all test accounts (Postfix `virtual_mailbox_domains`).
pub const DOMAIN: &str = "example.test";
/// The one password of every test account (IMAP, POP3, SMTP AUTH, Radicale).
pub const TEST_PASSWORD: &str = "serversync-test-pw";
/// Personal test users.
pub const USERS: [&str; 4] = [
    "alice@example.test",
    "bob@example.test",
    "carol@example.test",
    // Whose INBOX only the outgoing tests read (bounces and replies come back there).
    "dana@example.test",
];
/// Shared queue mailboxes (a login like any other).
pub const QUEUE_MAILBOXES: [&str; 1] = ["support@example.test"];

/// Accounts and their password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accounts {
    pub users: Vec<String>,
    pub queue_mailboxes: Vec<String>,
    pub password: String,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            users: USERS.iter().map(|s| s.to_string()).collect(),
            queue_mailboxes: QUEUE_MAILBOXES.iter().map(|s| s.to_string()).collect(),
            password: TEST_PASSWORD.to_string(),
        }
    }
}

impl Accounts {
    /// Users then queue mailboxes.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.users
            .iter()
            .chain(self.queue_mailboxes.iter())
            .map(String::as_str)
    }
}
