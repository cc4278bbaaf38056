//! Real-server test environment for serversync.
//!
//! `scripts/test.sh` runs `testenv up --dir DIR` (Dovecot, Postfix, PostgreSQL, Radicale on
//! 127.0.0.1 high ports, all state under DIR), exports `SERVERSYNC_TESTENV=DIR/env.json`, runs
//! the tests, and `testenv down --dir DIR` afterwards. Tests read the connection details with
//! [`TestEnv::from_env`]:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let env = serversync_testkit::TestEnv::from_env();
//! let imaps = (env.host.as_str(), env.imaps_port());
//! let db = env.pg_database().await?; // fresh database, dropped with `db`
//! # let _ = (imaps, db.url()); Ok(()) }
//! ```
//!
//! [`corpus`] is a seeded set of real-world message shapes (charsets, attachments, malformed
//! mail) shared by the intake, IMAP and POP3 tests.
//!
//! A test that needs a server of its own (to restart it mid-sync, say) starts a private one,
//! e.g. [`Dovecot::start`] in a temporary directory under /tmp; it is stopped when dropped.
//! Fault tests of outgoing mail that need an SMTP server answering errors on cue use a
//! [`ScriptedSmtp`] peer instead of Postfix. Network faults (delays, drops, cuts mid-response,
//! resets, refused connections) come from a [`FaultProxy`] placed between serversync and a server.
//! OAuth sign-in tests start an [`OAuthServer`] (token and introspection endpoints) and a
//! private Dovecot whose `oauth2` passdb asks it ([`DovecotOptions::oauth2_introspection_url`]).
//!
//! Exchange cannot run here: EWS tests start an [`ews::EwsDouble`], a protocol-faithful EWS
//! server in memory (SOAP operations, autodiscover, Basic/NTLM/Bearer sign-in, injectable
//! faults), over HTTPS with the test CA's certificate. Microsoft Graph tests start a
//! [`graph::GraphDouble`]: Graph v1.0 mail routes, change notifications and the Entra ID token
//! endpoint, checked against Microsoft's CSDL.
//!
//! Browser tests run playwright-core scripts from the repository's `e2e/` directory in
//! Debian's headless Chromium through [`browser::run_script`]; they need none of the servers.

pub mod accounts;
pub mod browser;
pub mod corpus;
pub mod db;
pub mod dnsmasq;
pub mod dovecot;
pub mod env;
pub mod ews;
pub mod fault_proxy;
pub mod graph;
mod https_server;
pub mod oauth;
pub mod postfix;
pub mod postgres;
pub mod radicale;
pub mod smtp_peer;
pub mod tls;
pub mod util;

pub use accounts::{Accounts, DOMAIN, QUEUE_MAILBOXES, TEST_PASSWORD, USERS};
pub use browser::{E2e, E2eOutput, Step, chromium_path, e2e_dir, run_script};
pub use db::{days_ago_ms, execute_sql};
pub use dovecot::{Dovecot, DovecotInfo, DovecotOptions};
pub use env::{ENV_VAR, PgDatabase, TestEnv, down, up};
pub use fault_proxy::{Fault, FaultProxy};
pub use oauth::OAuthServer;
pub use postfix::{Postfix, PostfixInfo, PostfixOptions};
pub use postgres::{PgInfo, Postgres};
pub use radicale::{Radicale, RadicaleInfo};
pub use smtp_peer::{Received, ScriptedSmtp, SmtpScript};
pub use tls::{TLS_SERVER_NAME, TlsFiles};
