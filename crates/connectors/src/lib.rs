//! The protocol layer for mail servers: connecting, securing, authenticating and probing
//! IMAP, POP3 and SMTP servers, with every failure classified by the step that failed.
//!
//! This crate knows nothing of the store or the engine. It depends only on
//! `serversync-model` among serversync's crates, for [`ErrorKind`], [`FailureStep`],
//! [`Secret`] and [`TlsMode`].
//!
//! # Layers
//!
//! - [`net`]: a [`ServerAddr`] (host, port, [`TlsMode`]) is reached in three separately
//!   classified steps: **DNS** ([`net::resolve`], `tokio::net::lookup_host`, so a bad host
//!   name fails here and not at TCP), **TCP** ([`net::connect_tcp`], the resolved addresses
//!   in order) and, for implicit TLS, **TLS** ([`net::tls_handshake`]). The result is a
//!   [`MailStream`] (plain or TLS).
//! - [`imap::connect`], [`pop3::Client::connect`], [`smtp::connect`]: the reusable base
//!   for synchronization and sending. Each reads the greeting, asks for capabilities, and
//!   upgrades a plain connection with STARTTLS/STLS when the address says so (refusing data
//!   the server sent before the handshake, and asking for capabilities again afterwards).
//!   Then `login` authenticates with a [`Login`] (password, or an XOAUTH2 token).
//! - [`imap::probe`], [`pop3::probe`], [`smtp::probe`]: "test and enable". They run every
//!   step in order, record each in a [`ProbeReport`] (step, action, outcome, detail,
//!   duration) with the server's capabilities, stop at the first failure, and change
//!   nothing on the server: IMAP opens INBOX with `EXAMINE` (read-only), POP3 runs `STAT`
//!   and never `DELE`, SMTP stops after `MAIL FROM` with `RSET` (no recipient, no DATA).
//!   [`probe::incoming`] and [`probe::outgoing`] pick the probe by the profile's protocol.
//! - [`transport`]: the mail transport and Sent folder roles, the only way the engine sends
//!   mail and keeps its copy: [`transport::MailTransport`] (SMTP: one pipelined envelope
//!   and the message per [`transport::MailTransport::submit`], whose
//!   [`transport::Submission`] says sent, refused or unknown) and [`transport::SentFolder`]
//!   (for SMTP on the incoming IMAP server: save a copy, find a Message-ID). Closed enums,
//!   one `match` per method; Exchange and Graph are not available yet.
//!
//! - [`source`]: the *mail source* role — [`source::MailSource`], one enum arm per protocol
//!   (IMAP, POP3): open a folder from its typed cursor, fetch a page, the next cursor, wait
//!   for a change (IDLE), acknowledge (POP3 `DELE`, move to Undeliverable).
//! - [`items`]: the *item store* role for two-way appointments, contacts and tasks —
//!   [`items::ItemStore`] (changes since a token, get, create, update, delete with a version
//!   check) and its reference implementation [`items::MemoryItemStore`].
//! - [`http`]: the shared HTTP client (reqwest on [`TlsTrust`], host names resolved through
//!   the [`NetworkPolicy`], no proxy, no redirects); [`oauth`]: OAuth 2.0 access tokens
//!   (client-credentials and refresh-token grants) cached by a [`oauth::TokenProvider`]
//!   until five minutes before they expire. A token signs in as [`Login::XOAuth2`]: SASL
//!   XOAUTH2, or OAUTHBEARER when the server offers only that.
//! - [`ntlm`]: NTLMv2 client messages for Exchange over HTTP, with the TLS channel binding
//!   (`MsvAvChannelBindings`, RFC 5929 `tls-server-end-point`) that Extended Protection
//!   requires, and a MIC; the caller refuses NTLM in FIPS mode.
//!
//! # Step classification
//!
//! Every error is a [`ConnectError`] `{ step, kind, message }`. The step says where it
//! failed (what the administrator looks at), the kind how the retry policy treats it, and
//! the message (one line) what happened and the fix:
//!
//! | step | typical causes | kind |
//! |---|---|---|
//! | `Dns` | name does not exist / has no address | `Config` |
//! | | resolver timeout or temporary failure | `Transient` |
//! | `TcpConnect` | refused, unreachable, timeout | `Transient` |
//! | `Tls` | untrusted / expired / wrong-name certificate, not TLS on this port, STARTTLS not offered, login refused without TLS | `Config` |
//! | | connection closed or reset during the handshake | `Transient` |
//! | `Authentication` | credentials rejected (IMAP `NO [AUTHENTICATIONFAILED]`, POP3 `-ERR [AUTH]`, SMTP 535) | `Auth` |
//! | | `[UNAVAILABLE]`, `[SYS/TEMP]`, `[IN-USE]`, SMTP 454 | `Transient` |
//! | | `[LIMIT]`, `[LOGIN-DELAY]`, SMTP 4xx rate limits | `Throttled` |
//! | `Permission` | IMAP `EXAMINE INBOX` refused, POP3 `STAT` refused, SMTP `MAIL FROM` refused (5xx) | `Permission` |
//! | `Protocol` | missing or garbled greeting, unexpected answers | `Transient` (closed, timed out) or `Permanent` |
//!
//! Server answers are classified by their machine-readable codes first: RFC 5530 IMAP
//! response codes, RFC 2449/3206 POP3 RESP-CODES, SMTP reply codes with RFC 3463 enhanced
//! status codes (kept in the message). The tables are pure functions with unit tests:
//! [`imap::parse::classify`], [`pop3::parse::classify`], [`smtp::parse::classify`].
//!
//! # Trust
//!
//! [`TlsTrust`] builds the rustls client configuration (aws-lc-rs provider; `ring` is not in
//! the tree): the system's trust anchors (`rustls-native-certs`) plus extra CA certificates
//! from PEM files or bytes (the installation's `tls.extra_ca_files`). Certificate and host
//! name checks are always on; there is no switch to turn them off. The certificate is
//! checked against [`ServerAddr::host`] (a DNS name or an IP address), or accepted because
//! its SHA-256 fingerprint is in [`ServerAddr::pinned`]. [`TlsMode::None`] sends passwords in
//! the clear: [`NetworkPolicy`] allows it only to `tls.plaintext_ranges` (loopback by default).
//!
//! # Where connections may go
//!
//! [`NetworkPolicy`] (in [`ConnectOptions::policy`]) is checked on the resolved addresses
//! right before the TCP connect: non-public addresses are refused unless the installation
//! allows their range, so a tenant's profile cannot reach the installation's own network.
//!
//! # Secrets
//!
//! [`Login`] holds its password or token as a [`Secret`] (redacted in `Debug`). Commands
//! carrying a secret are never logged or quoted; server answers quoted in errors pass
//! through [`Login::redact`], which removes the secret and its base64 encodings.
//!
//! # Why raw protocol code
//!
//! IMAP up to authentication, POP3 and SMTP are spoken directly on tokio with pure parsers
//! (`imap::parse`, `pop3::parse`, `smtp::parse`). async-imap reports response codes it does
//! not know (`[AUTHENTICATIONFAILED]`, `[UNAVAILABLE]`, `[LIMIT]`) only inside error text,
//! and lettre's SMTP connect folds DNS, TCP, TLS, greeting and EHLO into one call with its
//! own TLS parameters, so neither could say exactly which step failed. Synchronization
//! continues on the same connection with [`imap::sync::SyncSession`], our own byte-level
//! IMAP reader: bodies stay raw bytes, IDLE stops exactly on time, and response codes and
//! QRESYNC data are parsed rather than read from error text.

pub mod certificate;
pub mod dav;
pub mod dns;
pub mod dsn;
pub mod error;
pub mod ews;
pub mod graph;
pub mod http;
pub mod https;
pub mod imap;
pub mod items;
pub mod lmtp;
pub mod login;
pub mod mime;
pub mod net;
pub mod ntlm;
pub mod oauth;
pub mod policy;
pub mod pop3;
pub mod probe;
pub mod server;
pub mod smtp;
pub mod source;
pub mod tls;
pub mod transport;

pub use error::{ConnectError, Result};
pub use login::Login;
pub use net::{ConnectOptions, DEFAULT_TIMEOUT, MailStream, ServerAddr};
pub use policy::NetworkPolicy;
pub use probe::{ProbeReport, StepLog, StepOutcome};
pub use server::{EwsTarget, GraphTarget, Server};
pub use serversync_model::profile::TlsMode;
pub use serversync_model::{ErrorKind, FailureStep, Secret};
pub use tls::{TlsTrust, TlsTrustBuilder, TrustError};
