//! A protocol-faithful Microsoft Graph v1.0 and Entra ID (token endpoint) test double, built
//! from Microsoft's published Graph v1.0 reference and its CSDL metadata
//! (`shared/graph/v1.0-cleanMetadata.xml`), not from any client.
//!
//! One HTTPS server on 127.0.0.1 (the test CA's `localhost` certificate) plays both hosts:
//! the Entra ID authority (`/{tenant}/oauth2/v2.0/token`, client credentials with a secret or
//! a certificate assertion, and the OpenID configuration) and Graph (`/v1.0/...`: users,
//! mailboxSettings, mailFolders, message delta, `$value`, move, sendMail, `$batch` and change
//! notification subscriptions). State lives in memory; tests add tenants, apps and mailboxes,
//! deliver mail, inject faults and read back what clients did.
//!
//! ```no_run
//! # async fn demo(tls: &serversync_testkit::TlsFiles) -> anyhow::Result<()> {
//! use serversync_testkit::graph::{GraphConfig, GraphDouble};
//! let graph = GraphDouble::start(tls, GraphConfig::default()).await?;
//! let tenant = "11111111-2222-3333-4444-555555555555";
//! graph.add_tenant(tenant, "contoso.example");
//! graph.add_app(tenant, "app-id", "secret", &["Mail.ReadWrite", "Mail.Send"]);
//! graph.add_mailbox(tenant, "alice@contoso.example");
//! graph.deliver("alice@contoso.example", "inbox", b"Subject: hi\r\n\r\nhello\r\n", false);
//! # let _ = graph.token_url(tenant); Ok(()) }
//! ```
//!
//! What it does not model is listed in `docs/testing.md` ("The Microsoft Graph test double").

pub mod csdl;
mod items;
mod mail;
mod subs;
mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use axum::{Extension, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::tls::{TLS_SERVER_NAME, TlsFiles};
use crate::util::HOST;

/// Largest request body accepted (sendMail's documented 4 MB limit); larger ones get 413.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long a client may take for the TLS handshake and each request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a client may take to send a request body (then 408).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests one `$batch` may carry.
pub const MAX_BATCH: usize = 20;

/// How to run the double.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Items per delta and list page (a smaller `Prefer: odata.maxpagesize=N` wins).
    pub page_size: usize,
    /// Longest lifetime of a message subscription, in minutes (Graph: 4230).
    pub subscription_max_minutes: i64,
    /// Lifetime of issued access tokens (`expires_in`).
    pub token_lifetime: Duration,
    /// Most simultaneous requests one app may have in flight for one mailbox; one more gets
    /// 429 `ApplicationThrottled` (Exchange Online's MailboxConcurrency limit is 4).
    pub mailbox_concurrency: usize,
    /// When set, every JSON body the double sends (responses and notifications) is checked
    /// against this CSDL file and violations are recorded ([`GraphDouble::schema_violations`]).
    pub csdl: Option<PathBuf>,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            page_size: 50,
            subscription_max_minutes: 4230,
            token_lifetime: Duration::from_secs(3599),
            mailbox_concurrency: 4,
            csdl: None,
        }
    }
}

/// Microsoft's Graph v1.0 CSDL, `shared/graph/v1.0-cleanMetadata.xml` beside the project's
/// root (`SERVERSYNC_GRAPH_CSDL` overrides, e.g. in a worktree elsewhere). Panics when it is
/// missing: schema checks never pass by being skipped.
pub fn csdl_path() -> PathBuf {
    let path = std::env::var_os("SERVERSYNC_GRAPH_CSDL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/graph/v1.0-cleanMetadata.xml"
            ))
        });
    assert!(
        path.exists(),
        "Graph's CSDL is not at {}: ../shared must sit beside the project's root \
         (or set SERVERSYNC_GRAPH_CSDL)",
        path.display()
    );
    path
}

pub use items::ItemKind;

/// Which kind of request a [`Fault`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Token,
    /// `GET /v1.0/users/{u}`.
    User,
    /// `/v1.0/users/{u}/mailboxSettings`.
    MailboxSettings,
    /// `/v1.0/users/{u}/mailFolders...` (folders, not messages).
    MailFolders,
    /// Any delta query (`.../messages/delta`, `contacts/delta`, `tasks/delta`,
    /// `calendarView/delta`).
    Delta,
    /// `.../messages/{id}/$value`.
    Value,
    /// Other message requests (get, list, filter, patch, delete).
    Messages,
    /// `POST /v1.0/users/{u}/sendMail`.
    SendMail,
    /// `POST .../messages/{id}/move`.
    Move,
    /// `/v1.0/subscriptions...`.
    Subscriptions,
    /// `POST /v1.0/$batch`.
    Batch,
    /// Calendars and events (`calendar`, `calendars`, `events`; not delta).
    Events,
    /// Contact folders and contacts (not delta).
    Contacts,
    /// To Do lists and tasks (not delta).
    Tasks,
    /// Any request.
    Any,
}

/// A fault injected with [`GraphDouble::inject`]: queued, and consumed by the next request
/// matching `route` (Graph routes: after the token was checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Throttling: 429, 503 or 504 with an optional `Retry-After` (seconds).
    Throttle {
        /// Route to match.
        route: Route,
        /// 429, 503 or 504.
        status: u16,
        /// `Retry-After` header value in seconds (`None`: no header).
        retry_after: Option<u64>,
        /// Body code `ApplicationThrottled` "Application is over its MailboxConcurrency
        /// limit." instead of `TooManyRequests`.
        mailbox_concurrency: bool,
    },
    /// One Graph error with this status, code and message.
    Http {
        /// Route to match.
        route: Route,
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// The connection closes without an answer (nothing is done).
    DropConnection {
        /// Route to match.
        route: Route,
    },
    /// The request is carried out, then the connection closes without the answer.
    DropAfterServing {
        /// Route to match.
        route: Route,
    },
    /// The request is carried out, then no answer ever comes.
    HangAfterServing {
        /// Route to match.
        route: Route,
    },
    /// The answer comes this much later.
    Delay {
        /// Route to match.
        route: Route,
        /// Milliseconds.
        ms: u64,
    },
}

impl Fault {
    fn route(&self) -> Route {
        match self {
            Fault::Throttle { route, .. }
            | Fault::Http { route, .. }
            | Fault::DropConnection { route }
            | Fault::DropAfterServing { route }
            | Fault::HangAfterServing { route }
            | Fault::Delay { route, .. } => *route,
        }
    }
}

/// A message as the double holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleMessage {
    /// Graph message id.
    pub id: String,
    /// Current changeKey.
    pub change_key: String,
    /// Message-ID header (internetMessageId).
    pub internet_message_id: Option<String>,
    /// Subject header (unfolded, raw).
    pub subject: String,
    /// isRead.
    pub is_read: bool,
    /// Display name of the folder it is in.
    pub folder: String,
    /// The whole MIME message.
    pub mime: Vec<u8>,
}

/// A change notification subscription as the double holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleSubscription {
    /// Subscription id (GUID).
    pub id: String,
    /// The resource as the client gave it.
    pub resource: String,
    /// e.g. `created` or `created,updated,deleted`.
    pub change_type: String,
    /// Where change notifications go.
    pub notification_url: String,
    /// Where lifecycle notifications go.
    pub lifecycle_notification_url: Option<String>,
    /// Echoed in every notification.
    pub client_state: Option<String>,
    /// When it lapses.
    pub expiration: DateTime<Utc>,
}

/// A request the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path with query, as sent.
    pub path: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// Status answered (0: the connection was dropped or left hanging).
    pub status: u16,
}

#[derive(Debug, Clone)]
struct App {
    secret: String,
    secret_expired: bool,
    roles: Vec<String>,
    certs: Vec<Vec<u8>>,
    mfa: bool,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    tenant: String,
    client_id: String,
    roles: Vec<String>,
    expires: Instant,
    revoked: bool,
}

/// Who a Graph request is from (a valid access token).
#[derive(Debug, Clone)]
struct Caller {
    tenant: String,
    client_id: String,
    roles: Vec<String>,
}

impl Caller {
    fn has_any(&self, roles: &[&str]) -> bool {
        self.roles
            .iter()
            .any(|r| roles.iter().any(|w| r.eq_ignore_ascii_case(w)))
    }
}

struct DoubleState {
    cfg: GraphConfig,
    port: u16,
    /// Tenant id → default domain.
    tenants: HashMap<String, String>,
    /// (tenant id, client id) → app.
    apps: HashMap<(String, String), App>,
    tokens: HashMap<String, IssuedToken>,
    mailboxes: Vec<mail::Mailbox>,
    seq: u64,
    faults: Vec<Fault>,
    requests: Vec<RecordedRequest>,
    sent: Vec<Vec<u8>>,
    subs: Vec<subs::Sub>,
    violations: Vec<String>,
    /// (client id, user id) → requests in flight.
    inflight: HashMap<(String, String), usize>,
    csdl: Option<Arc<csdl::Csdl>>,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl DoubleState {
    fn base(&self) -> String {
        format!("https://{TLS_SERVER_NAME}:{}", self.port)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Checks a JSON request body a client sent against the CSDL type (when configured):
    /// violations are recorded with a `request` prefix, so client tests see them too.
    fn check_request(&mut self, what: &str, type_name: &str, body: &Value) {
        let Some(csdl) = self.csdl.clone() else {
            return;
        };
        let found = csdl.check(type_name, body);
        self.violations
            .extend(found.into_iter().map(|v| format!("request {what}: {v}")));
    }

    /// Checks the parameters of a bound action a client called (names as the CSDL declares
    /// them, matched case-insensitively as Graph does).
    fn check_action(&mut self, name: &str, binding: &str, body: &Value) {
        let Some(csdl) = self.csdl.clone() else {
            return;
        };
        let Some(params) = csdl.bound_operation(name, binding) else {
            self.violations
                .push(format!("request {name}: no such action bound to {binding}"));
            return;
        };
        if let Some(map) = body.as_object() {
            for k in map.keys() {
                if !k.starts_with('@') && !params.iter().any(|p| p.eq_ignore_ascii_case(k)) {
                    self.violations
                        .push(format!("request {name}: {k} is not a parameter of {name}"));
                }
            }
        }
    }

    /// Checks a JSON body the double sends against the CSDL (when configured).
    fn check_schema(&mut self, what: &str, schema: &Schema, body: &Value) {
        let Some(csdl) = self.csdl.clone() else {
            return;
        };
        let mut found = Vec::new();
        match schema {
            Schema::Entity(t) => found.extend(csdl.check(t, body)),
            Schema::Collection(t) => {
                if let Some(map) = body.as_object() {
                    for (k, v) in map {
                        if k == "value" {
                            match v.as_array() {
                                Some(items) => {
                                    for item in items {
                                        found.extend(csdl.check(t, item));
                                    }
                                }
                                None => found.push("value is not an array".into()),
                            }
                        } else if !k.starts_with("@odata.") {
                            found.push(format!("unexpected top-level member {k}"));
                        }
                    }
                }
            }
        }
        self.violations
            .extend(found.into_iter().map(|v| format!("{what}: {v}")));
    }
}

type Shared = Arc<Mutex<DoubleState>>;

fn lock(s: &Mutex<DoubleState>) -> std::sync::MutexGuard<'_, DoubleState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-connection state: lets a fault close the connection.
#[derive(Debug, Default)]
struct Conn {
    kill: Notify,
}

impl crate::https_server::Connection for Conn {
    fn kill(&self) -> &Notify {
        &self.kill
    }
}

/// What a JSON response body is, for the CSDL check.
#[derive(Debug, Clone)]
enum Schema {
    /// One entity or complex value of this type.
    Entity(&'static str),
    /// `{"value": [..]}` of this type, plus `@odata.*` members.
    Collection(&'static str),
}

/// A response before it becomes HTTP (also the unit of `$batch`).
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
    schema: Option<Schema>,
}

impl Reply {
    fn json(status: u16, body: &Value, schema: Option<Schema>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            content_type: Some(
                "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
                    .into(),
            ),
            body: serde_json::to_vec(body).unwrap_or_default(),
            schema,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            content_type: None,
            body: Vec::new(),
            schema: None,
        }
    }

    fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A Graph error (`{"error":{"code","message","innerError"}}`; innerError is filled in when
/// the reply is sent).
fn gerr(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
        None,
    )
}

fn now_str() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A running Graph + Entra ID double; the server stops when it is dropped.
pub struct GraphDouble {
    port: u16,
    state: Shared,
    task: JoinHandle<()>,
    _shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for GraphDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphDouble")
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for GraphDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GraphDouble {
    /// Starts the double on a free port of 127.0.0.1 (inside a tokio runtime), serving HTTPS
    /// with the `localhost` certificate of `tls`. Its outgoing requests (subscription
    /// validation, notifications) trust the test CA, and plain HTTP.
    pub async fn start(tls: &TlsFiles, cfg: GraphConfig) -> Result<GraphDouble> {
        let (acceptor, _leaf) = crate::https_server::acceptor(tls)?;
        let csdl = match &cfg.csdl {
            Some(p) => Some(Arc::new(csdl::Csdl::load(p)?)),
            None => None,
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*crate::tls::client_config(&tls.ca_cert)?).clone())
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the notification client")?;
        let listener = TcpListener::bind((HOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let state: Shared = Arc::new(Mutex::new(DoubleState {
            cfg,
            port,
            tenants: HashMap::new(),
            apps: HashMap::new(),
            tokens: HashMap::new(),
            mailboxes: Vec::new(),
            seq: 0,
            faults: Vec::new(),
            requests: Vec::new(),
            sent: Vec::new(),
            subs: Vec::new(),
            violations: Vec::new(),
            inflight: HashMap::new(),
            csdl,
            http,
            runtime: tokio::runtime::Handle::current(),
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let (task, shutdown) =
            crate::https_server::serve::<Conn>(listener, acceptor, app, HEADER_TIMEOUT);
        Ok(GraphDouble {
            port,
            state,
            task,
            _shutdown: shutdown,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DoubleState> {
        lock(&self.state)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://localhost:PORT`: the Graph root (requests go to `/v1.0/...`).
    pub fn graph_url(&self) -> String {
        format!("https://{TLS_SERVER_NAME}:{}", self.port)
    }

    /// `https://localhost:PORT`: the Entra ID authority host (the same server).
    pub fn login_url(&self) -> String {
        self.graph_url()
    }

    /// `https://localhost:PORT/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.login_url())
    }

    /// Adds a tenant: its id (a GUID string) and default domain; token requests may name
    /// either.
    pub fn add_tenant(&self, tenant_id: &str, domain: &str) {
        self.state()
            .tenants
            .insert(tenant_id.to_lowercase(), domain.to_lowercase());
    }

    /// Registers an app in a tenant with a client secret and the application permissions
    /// (app roles) an admin consented to, e.g. `["Mail.ReadWrite", "Mail.Send"]`; no roles:
    /// registered, but admin consent is missing (tokens carry no roles, Graph answers 403).
    pub fn add_app(&self, tenant_id: &str, client_id: &str, secret: &str, roles: &[&str]) {
        let mut s = self.state();
        let key = (tenant_id.to_lowercase(), client_id.to_lowercase());
        let certs = s
            .apps
            .get(&key)
            .map(|a| a.certs.clone())
            .unwrap_or_default();
        s.apps.insert(
            key,
            App {
                secret: secret.to_string(),
                secret_expired: false,
                roles: roles.iter().map(|r| r.to_string()).collect(),
                certs,
                mfa: false,
            },
        );
    }

    /// Adds a certificate credential (DER) to an app added with [`GraphDouble::add_app`]:
    /// `private_key_jwt` client assertions signed (RS256) by its key are accepted.
    pub fn add_app_certificate(&self, tenant_id: &str, client_id: &str, cert_der: &[u8]) {
        let mut s = self.state();
        let key = (tenant_id.to_lowercase(), client_id.to_lowercase());
        if let Some(app) = s.apps.get_mut(&key) {
            app.certs.push(cert_der.to_vec());
        } else {
            s.apps.insert(
                key,
                App {
                    secret: String::new(),
                    secret_expired: false,
                    roles: Vec::new(),
                    certs: vec![cert_der.to_vec()],
                    mfa: false,
                },
            );
        }
    }

    /// The app's client secret has expired (AADSTS7000222).
    pub fn expire_secret(&self, tenant_id: &str, client_id: &str) {
        if let Some(a) = self
            .state()
            .apps
            .get_mut(&(tenant_id.to_lowercase(), client_id.to_lowercase()))
        {
            a.secret_expired = true;
        }
    }

    /// A conditional access policy blocks the app (AADSTS53003).
    pub fn require_mfa(&self, tenant_id: &str, client_id: &str) {
        if let Some(a) = self
            .state()
            .apps
            .get_mut(&(tenant_id.to_lowercase(), client_id.to_lowercase()))
        {
            a.mfa = true;
        }
    }

    /// Every access token issued so far is expired (Graph answers 401
    /// `InvalidAuthenticationToken`).
    pub fn expire_access_tokens(&self) {
        for t in self.state().tokens.values_mut() {
            t.revoked = true;
        }
    }

    /// Adds a user with an Exchange Online mailbox (Inbox, Sent Items, Drafts, Deleted Items,
    /// Junk Email, Archive, Outbox); returns the user id (a GUID).
    pub fn add_mailbox(&self, tenant_id: &str, address: &str) -> String {
        self.add_user(tenant_id, address, false)
    }

    /// Adds a user whose mailbox is hosted on-premises (mail routes answer 404
    /// `MailboxNotEnabledForRESTAPI`); returns the user id.
    pub fn add_on_premises_user(&self, tenant_id: &str, address: &str) -> String {
        self.add_user(tenant_id, address, true)
    }

    fn add_user(&self, tenant_id: &str, address: &str, on_prem: bool) -> String {
        let mb = mail::Mailbox::new(&tenant_id.to_lowercase(), address, on_prem);
        let id = mb.user_id.clone();
        self.state().mailboxes.push(mb);
        id
    }

    /// Puts a message into a folder (well-known name such as `inbox`, id, or display name) as
    /// mail delivery would, and fires change notifications; returns the message id. Panics
    /// if the mailbox or folder does not exist (a mistake in the test).
    pub fn deliver(&self, address: &str, folder: &str, mime: &[u8], is_read: bool) -> String {
        self.deliver_received(address, folder, mime, is_read, Utc::now())
    }

    /// Like [`GraphDouble::deliver`], received by the server at `received`
    /// (`receivedDateTime`).
    pub fn deliver_received(
        &self,
        address: &str,
        folder: &str,
        mime: &[u8],
        is_read: bool,
        received: DateTime<Utc>,
    ) -> String {
        let mut s = self.state();
        let (mb, fid) = {
            let mb = mail::find_mailbox(&s.mailboxes, address, None)
                .unwrap_or_else(|| panic!("no mailbox {address}"));
            let f = s.mailboxes[mb]
                .folder(folder)
                .or_else(|| s.mailboxes[mb].folder_by_name(folder))
                .unwrap_or_else(|| panic!("no folder {folder} in {address}"));
            (mb, f.id.clone())
        };
        let id = mail::insert(&mut s, mb, &fid, mime.to_vec(), is_read, received);
        subs::notify(&mut s, mb, &fid, &id, "created");
        id
    }

    /// The messages of a folder (well-known name, id or display name), oldest first.
    pub fn messages(&self, address: &str, folder: &str) -> Vec<DoubleMessage> {
        let s = self.state();
        let Some(mb) = mail::find_mailbox(&s.mailboxes, address, None) else {
            return Vec::new();
        };
        let mb = &s.mailboxes[mb];
        let Some(f) = mb.folder(folder).or_else(|| mb.folder_by_name(folder)) else {
            return Vec::new();
        };
        let mut msgs: Vec<_> = mb.messages.values().filter(|m| m.folder == f.id).collect();
        msgs.sort_by_key(|m| m.order);
        msgs.into_iter()
            .map(|m| DoubleMessage {
                id: m.id.clone(),
                change_key: m.change_key(),
                internet_message_id: m.internet_message_id.clone(),
                subject: m.subject.clone(),
                is_read: m.is_read,
                folder: f.display_name.clone(),
                mime: m.mime.clone(),
            })
            .collect()
    }

    /// Requests being served now, over every app and mailbox.
    pub fn in_flight(&self) -> usize {
        self.state().inflight.values().sum()
    }

    /// MIME of every message sent with sendMail, in order.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.state().sent.clone()
    }

    /// Queues a fault.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Every delta and next link issued so far for that mailbox now answers 410 Gone
    /// (`syncStateNotFound`).
    pub fn expire_delta_tokens(&self, address: &str) {
        let mut s = self.state();
        if let Some(mb) = mail::find_mailbox(&s.mailboxes, address, None) {
            s.mailboxes[mb].epoch += 1;
        }
    }

    fn mailbox_index(s: &DoubleState, address: &str) -> usize {
        mail::find_mailbox(&s.mailboxes, address, None)
            .unwrap_or_else(|| panic!("no mailbox {address}"))
    }

    /// The id of the mailbox's default calendar, contact folder or To Do list.
    pub fn default_container(&self, address: &str, kind: ItemKind) -> String {
        let s = self.state();
        let mb = Self::mailbox_index(&s, address);
        s.mailboxes[mb].items.default_of(kind).id.clone()
    }

    /// The items of a collection (`calendar`, `calendars/{id}`, `contacts`,
    /// `contactFolders/{id}`, `todo/lists/{id}`) as Graph answers them, with their extended
    /// properties and linked resources. Panics on an unknown mailbox or collection.
    pub fn items(&self, address: &str, collection: &str) -> Vec<Value> {
        let s = self.state();
        let mb = Self::mailbox_index(&s, address);
        let (kind, c) = s.mailboxes[mb]
            .items
            .resolve(collection)
            .unwrap_or_else(|| panic!("no collection {collection}"));
        items::snapshot(&s, mb, kind, &c)
    }

    /// Creates an item in a collection as another client (Outlook, a phone) would, with the
    /// JSON a `POST` would carry (not checked against the CSDL: a test may serve what Graph
    /// would not); returns its id.
    pub fn create_item(&self, address: &str, collection: &str, entity: Value) -> String {
        let mut s = self.state();
        let mb = Self::mailbox_index(&s, address);
        let (kind, c) = s.mailboxes[mb]
            .items
            .resolve(collection)
            .unwrap_or_else(|| panic!("no collection {collection}"));
        items::create_as_other(&mut s, mb, kind, &c, entity)
            .unwrap_or_else(|| panic!("the item was not created"))
    }

    /// Changes an item as another client would (a `PATCH` without `If-Match`; on an
    /// occurrence's id, it becomes an exception); false when there is no such item.
    pub fn update_item(&self, address: &str, id: &str, changes: Value) -> bool {
        let mut s = self.state();
        let mb = Self::mailbox_index(&s, address);
        items::patch_as_other(&mut s, mb, id, changes)
    }

    /// Deletes an item as another client would (on an occurrence's id, cancels that
    /// occurrence); false when there is no such item.
    pub fn delete_item(&self, address: &str, id: &str) -> bool {
        let mut s = self.state();
        let mb = Self::mailbox_index(&s, address);
        items::remove(&mut s, mb, id)
    }

    /// The kind and container id of an item, if it exists.
    pub fn locate_item(&self, address: &str, id: &str) -> Option<(ItemKind, String)> {
        let s = self.state();
        let mb = Self::mailbox_index(&s, address);
        items::locate(&s, mb, id)
    }

    /// The ids calendarView lists for event `id` between `start` and `end` (itself, or a
    /// series' occurrences).
    pub fn instance_ids(
        &self,
        address: &str,
        id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Vec<String> {
        let s = self.state();
        let mb = Self::mailbox_index(&s, address);
        items::instance_ids(&s, mb, id, (start, end))
    }

    /// The occurrences and exceptions of series `id` between `start` and `end`, as
    /// `GET events/{id}/instances` answers them (cancelled occurrences are absent; an
    /// exception has type `exception` and its `originalStart`). Empty for a single event.
    pub fn instances(
        &self,
        address: &str,
        id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Vec<Value> {
        let s = self.state();
        let mb = Self::mailbox_index(&s, address);
        items::instances_json(&s, mb, id, (start, end))
    }

    /// Every request received so far, in order (refused ones included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// The live subscriptions.
    pub fn subscriptions(&self) -> Vec<DoubleSubscription> {
        self.state().subs.iter().map(subs::Sub::public).collect()
    }

    /// Sends a lifecycle notification (`reauthorizationRequired`, `subscriptionRemoved` or
    /// `missed`) to the subscription's lifecycleNotificationUrl; `subscriptionRemoved` also
    /// removes the subscription.
    pub fn fire_lifecycle(&self, subscription_id: &str, event: &str) {
        let mut s = self.state();
        subs::lifecycle(&mut s, subscription_id, event);
    }

    /// Removes a subscription on the server's side (a later PATCH gets 404).
    pub fn drop_subscription(&self, subscription_id: &str) {
        self.state().subs.retain(|s| s.id != subscription_id);
    }

    /// What the CSDL check found wrong in JSON the double sent (with [`GraphConfig::csdl`]).
    pub fn schema_violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }
}

/// Request context for error bodies and headers.
#[derive(Debug, Clone)]
struct Ids {
    request_id: String,
    client_request_id: Option<String>,
}

/// Turns a reply into HTTP: innerError and request-id headers, CSDL check.
fn finish(state: &Shared, ids: &Ids, mut reply: Reply, what: &str) -> Response<Body> {
    fill_inner_error(&mut reply, ids);
    if let Some(schema) = &reply.schema
        && let Ok(v) = serde_json::from_slice::<Value>(&reply.body)
    {
        lock(state).check_schema(what, schema, &v);
    }
    let mut r = Response::new(Body::from(reply.body));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    if let Some(ct) = reply.content_type
        && let Ok(v) = HeaderValue::from_str(&ct)
    {
        h.insert(header::CONTENT_TYPE, v);
    }
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            h.append(k, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&ids.request_id) {
        h.insert("request-id", v);
    }
    if let Some(c) = &ids.client_request_id
        && let Ok(v) = HeaderValue::from_str(c)
    {
        h.insert("client-request-id", v);
    }
    r
}

fn fill_inner_error(reply: &mut Reply, ids: &Ids) {
    if reply.status < 400 {
        return;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&reply.body) else {
        return;
    };
    if let Some(err) = v.get_mut("error").and_then(|e| e.as_object_mut())
        && !err.contains_key("innerError")
        && err.contains_key("code")
    {
        err.insert(
            "innerError".into(),
            json!({
                "date": now_str(),
                "request-id": ids.request_id,
                "client-request-id": ids.client_request_id.clone().unwrap_or_else(|| ids.request_id.clone()),
            }),
        );
        reply.body = serde_json::to_vec(&v).unwrap_or_default();
    }
}

async fn handle(
    AxState(state): AxState<Shared>,
    Extension(conn): Extension<Arc<Conn>>,
    req: Request<Body>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let ids = Ids {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id: parts
            .headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let record = |body: &[u8], status: u16| {
        lock(&state).requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: path_q.clone(),
            headers: headers.clone(),
            body: body.to_vec(),
            status,
        });
    };
    let too_big = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY);
    let too_large = || {
        gerr(
            413,
            "RequestEntityTooLarge",
            "The request body exceeds the maximum allowed size of 4 MB.",
        )
    };
    if too_big {
        // Read (and drop) a moderately oversized body first, so the client is not cut off
        // mid-upload and sees the 413.
        let _ = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, 4 * MAX_BODY)).await;
        record(b"", 413);
        return finish(&state, &ids, too_large(), "413");
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Err(_) => {
            record(b"", 408);
            return finish(
                &state,
                &ids,
                gerr(
                    408,
                    "RequestTimeout",
                    "The request body was not received in time.",
                ),
                "408",
            );
        }
        Ok(Err(e)) => {
            let limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            let reply = if limit {
                too_large()
            } else {
                gerr(400, "BadRequest", "The request body could not be read.")
            };
            record(b"", reply.status);
            return finish(&state, &ids, reply, "body");
        }
        Ok(Ok(b)) => b,
    };
    let path = parts.uri.path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_token =
        segs.len() == 4 && segs[1] == "oauth2" && segs[2] == "v2.0" && segs[3] == "token";
    let is_oidc = segs.len() == 4
        && segs[1] == "v2.0"
        && segs[2] == ".well-known"
        && segs[3] == "openid-configuration";
    if is_oidc {
        let reply = token::openid_configuration(&state, segs[0]);
        record(&body, reply.status);
        return token::finish_entra(reply);
    }
    if is_token {
        let fault = take_fault(&state, Route::Token);
        let mut after = After::None;
        if let Some(f) = fault {
            match apply_fault(f, &conn).await {
                FaultOutcome::Reply(r) => {
                    record(&body, r.status);
                    return token::finish_entra(token::entra_fault(r));
                }
                FaultOutcome::Drop => {
                    record(&body, 0);
                    conn.kill.notify_one();
                    return std::future::pending().await;
                }
                FaultOutcome::Continue(a) => after = a,
            }
        }
        let reply = if parts.method == Method::POST {
            token::token(&state, segs[0], &body)
        } else {
            token::entra_error(
                400,
                "invalid_request",
                900_561,
                "The endpoint only accepts POST requests.",
            )
        };
        record(
            &body,
            if after == After::None {
                reply.status
            } else {
                0
            },
        );
        return after_serving(&conn, after, token::finish_entra(reply)).await;
    }
    if segs.first() != Some(&"v1.0") {
        record(&body, 404);
        return finish(
            &state,
            &ids,
            gerr(
                404,
                "BadRequest",
                &format!("Invalid version: {}", segs.first().unwrap_or(&"")),
            ),
            "404",
        );
    }
    // Authentication.
    let caller = match authenticate(&state, &parts.headers) {
        Ok(c) => c,
        Err(reply) => {
            record(&body, reply.status);
            return finish(&state, &ids, reply, "auth");
        }
    };
    let rel = path_q.strip_prefix("/v1.0").unwrap_or("");
    let route = route_of(&parts.method, rel);
    // Requests for one mailbox by one app in flight (a delayed one counts).
    let _guard = match enter_mailbox(&state, &caller, rel) {
        Ok(g) => g,
        Err(reply) => {
            record(&body, reply.status);
            return finish(&state, &ids, reply, "concurrency");
        }
    };
    let mut after = After::None;
    if let Some(f) = take_fault(&state, route) {
        match apply_fault(f, &conn).await {
            FaultOutcome::Reply(r) => {
                record(&body, r.status);
                return finish(&state, &ids, r, "fault");
            }
            FaultOutcome::Drop => {
                record(&body, 0);
                conn.kill.notify_one();
                return std::future::pending().await;
            }
            FaultOutcome::Continue(a) => after = a,
        }
    }
    let reply = dispatch(
        &state,
        &caller,
        &parts.method,
        rel,
        &parts.headers,
        &body,
        true,
    )
    .await;
    record(
        &body,
        if after == After::None {
            reply.status
        } else {
            0
        },
    );
    let what = format!("{} {}", parts.method, path_q);
    let resp = finish(&state, &ids, reply, &what);
    after_serving(&conn, after, resp).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    None,
    Drop,
    Hang,
}

enum FaultOutcome {
    Reply(Reply),
    Drop,
    Continue(After),
}

fn take_fault(state: &Shared, route: Route) -> Option<Fault> {
    let mut s = lock(state);
    let i = s
        .faults
        .iter()
        .position(|f| f.route() == Route::Any || f.route() == route)?;
    Some(s.faults.remove(i))
}

async fn apply_fault(fault: Fault, _conn: &Conn) -> FaultOutcome {
    if let Some(r) = fault_reply(&fault) {
        return FaultOutcome::Reply(r);
    }
    match fault {
        Fault::Throttle { .. } | Fault::Http { .. } => unreachable!("answered above"),
        Fault::DropConnection { .. } => FaultOutcome::Drop,
        Fault::DropAfterServing { .. } => FaultOutcome::Continue(After::Drop),
        Fault::HangAfterServing { .. } => FaultOutcome::Continue(After::Hang),
        Fault::Delay { ms, .. } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            FaultOutcome::Continue(After::None)
        }
    }
}

/// The answer of a fault that is an answer (throttling, an HTTP error); `None` for the
/// connection faults.
fn fault_reply(fault: &Fault) -> Option<Reply> {
    match *fault {
        Fault::Throttle {
            status,
            retry_after,
            mailbox_concurrency,
            ..
        } => {
            let mut r = if mailbox_concurrency {
                throttled_concurrency(status)
            } else {
                gerr(
                    status,
                    if status == 429 {
                        "TooManyRequests"
                    } else {
                        "ServiceUnavailable"
                    },
                    if status == 429 {
                        "Too many requests."
                    } else {
                        "The service is temporarily unavailable. Try again later."
                    },
                )
            };
            if let Some(secs) = retry_after {
                r = r.with_header("Retry-After", secs.to_string());
            }
            Some(r)
        }
        Fault::Http {
            status,
            ref code,
            ref message,
            ..
        } => Some(gerr(status, code, message)),
        _ => None,
    }
}

fn throttled_concurrency(status: u16) -> Reply {
    gerr(
        status,
        "ApplicationThrottled",
        "Application is over its MailboxConcurrency limit.",
    )
}

async fn after_serving(conn: &Conn, after: After, resp: Response<Body>) -> Response<Body> {
    match after {
        After::None => resp,
        After::Drop => {
            conn.kill.notify_one();
            std::future::pending().await
        }
        After::Hang => std::future::pending().await,
    }
}

/// Checks `Authorization: Bearer`; `Err` is the 401 to send.
fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<Caller, Reply> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    let (scheme, token) = given.split_once(' ').unwrap_or((given, ""));
    if given.is_empty() {
        return Err(gerr(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(gerr(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        ));
    }
    let s = lock(state);
    match s.tokens.get(token.trim()) {
        None => Err(gerr(
            401,
            "InvalidAuthenticationToken",
            "IDX14100: JWT is not well formed, there are no dots (.).",
        )
        .with_header("WWW-Authenticate", "Bearer realm=\"\", error=\"invalid_token\"")),
        Some(t) if t.revoked || t.expires <= Instant::now() => Err(gerr(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )
        .with_header(
            "WWW-Authenticate",
            "Bearer realm=\"\", error=\"invalid_token\", error_description=\"The access token has expired\"",
        )),
        Some(t) => Ok(Caller {
            tenant: t.tenant.clone(),
            client_id: t.client_id.clone(),
            roles: t.roles.clone(),
        }),
    }
}

/// Which [`Route`] a Graph request (path after `/v1.0`) is.
fn route_of(method: &Method, rel: &str) -> Route {
    let segs: Vec<String> = path_segments(rel)
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let first = segs.first().map(String::as_str).unwrap_or("");
    match first {
        "$batch" => return Route::Batch,
        "subscriptions" => return Route::Subscriptions,
        "users" => {}
        _ => return Route::Any,
    }
    let rest: Vec<&str> = segs.iter().skip(2).map(String::as_str).collect();
    match rest.as_slice() {
        [.., "delta"] => Route::Delta,
        ["calendar" | "calendars" | "events" | "calendarview", ..] => Route::Events,
        ["contacts" | "contactfolders", ..] => Route::Contacts,
        ["todo", ..] => Route::Tasks,
        [] => Route::User,
        ["mailboxsettings", ..] => Route::MailboxSettings,
        ["sendmail"] => Route::SendMail,
        [.., "$value"] => Route::Value,
        [.., "move"] if method == Method::POST => Route::Move,
        ["mailfolders", _, "messages", ..] | ["messages", ..] => Route::Messages,
        ["mailfolders", ..] => Route::MailFolders,
        _ => Route::Any,
    }
}

/// Parses a query string (`a=b&c=d`, percent-decoded; `+` is a space).
fn query_of(rel: &str) -> HashMap<String, String> {
    rel.split_once('?')
        .map(|(_, q)| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Serves one Graph request (also each request of a `$batch`).
fn dispatch<'a>(
    state: &'a Shared,
    caller: &'a Caller,
    method: &'a Method,
    rel: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    counted: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + 'a>> {
    Box::pin(async move {
        let query = query_of(rel);
        let segs = path_segments(rel);
        let first = segs
            .first()
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        match first.as_str() {
            "$batch" if *method == Method::POST => batch(state, caller, body).await,
            "subscriptions" => subs::route(state, caller, method, &segs[1..], body).await,
            "users" if segs.len() >= 2 => {
                let _guard = if counted {
                    None
                } else {
                    match enter_mailbox(state, caller, rel) {
                        Ok(g) => g,
                        Err(r) => return r,
                    }
                };
                mail::route(state, caller, method, &segs[1..], &query, headers, body).await
            }
            _ => gerr(
                400,
                "BadRequest",
                &format!(
                    "Resource not found for the segment '{}'.",
                    segs.first().map(String::as_str).unwrap_or("")
                ),
            ),
        }
    })
}

/// Counts a request against its mailbox's concurrency limit (`Ok(None)`: not a mailbox
/// request); `Err` is the 429 to send.
fn enter_mailbox(state: &Shared, caller: &Caller, rel: &str) -> Result<Option<InFlight>, Reply> {
    let mut segs = path_segments(rel).into_iter();
    if !segs.next().is_some_and(|s| s.eq_ignore_ascii_case("users")) {
        return Ok(None);
    }
    let Some(key) = segs.next() else {
        return Ok(None);
    };
    let uid = {
        let s = lock(state);
        mail::find_mailbox(&s.mailboxes, &key, Some(&caller.tenant))
            .map(|i| s.mailboxes[i].user_id.clone())
    };
    let Some(uid) = uid else {
        return Ok(None);
    };
    match InFlight::enter(state, &caller.client_id, &uid) {
        Some(g) => Ok(Some(g)),
        None => Err(throttled_concurrency(429).with_header("Retry-After", "1")),
    }
}

/// The path of a Graph request (after `/v1.0`) as segments: percent-decoded, key
/// parentheses split off (`mailFolders('inbox')` → `mailFolders`, `inbox`), operation
/// segments normalized ([`op_segment`]).
fn path_segments(rel: &str) -> Vec<String> {
    let path = rel.split('?').next().unwrap_or("").trim_matches('/');
    let mut out = Vec::new();
    for raw in path.split('/') {
        let seg = percent_decode(raw);
        if !seg.ends_with("()")
            && let Some((name, key)) = seg.split_once('(')
            && let Some(key) = key.strip_suffix(')')
            && !name.is_empty()
        {
            out.push(name.to_string());
            out.push(key.trim_matches('\'').to_string());
            continue;
        }
        out.push(op_segment(&seg));
    }
    out
}

/// Graph accepts bound functions and actions with or without `()` and the
/// `microsoft.graph.` namespace (`delta`, `delta()`, `microsoft.graph.delta()`).
fn op_segment(s: &str) -> String {
    let s = s.strip_suffix("()").unwrap_or(s);
    s.strip_prefix("microsoft.graph.").unwrap_or(s).to_string()
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// One request in flight for a mailbox; counted down when dropped.
struct InFlight {
    state: Shared,
    key: (String, String),
}

impl InFlight {
    fn enter(state: &Shared, client: &str, user: &str) -> Option<InFlight> {
        let mut s = lock(state);
        let limit = s.cfg.mailbox_concurrency;
        let key = (client.to_string(), user.to_string());
        let n = s.inflight.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(InFlight {
            state: state.clone(),
            key,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if let Some(n) = s.inflight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// `POST /v1.0/$batch` (JSON batching): each request served as it would be alone.
async fn batch(state: &Shared, caller: &Caller, body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return gerr(400, "BadRequest", "Invalid batch payload format.");
    };
    let Some(reqs) = v.get("requests").and_then(|r| r.as_array()) else {
        return gerr(400, "BadRequest", "Invalid batch payload format.");
    };
    if reqs.len() > MAX_BATCH {
        return gerr(
            400,
            "BadRequest",
            "The number of batch requests exceeds the limit of 20.",
        );
    }
    let mut ids = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in reqs {
        let id = match r.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return gerr(400, "BadRequest", "Batch request id is missing."),
        };
        if !ids.insert(id.clone()) {
            return gerr(400, "BadRequest", "Batch request ids must be unique.");
        }
        let method = r
            .get("method")
            .and_then(|m| m.as_str())
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok());
        let url = r.get("url").and_then(|u| u.as_str());
        let (Some(method), Some(url)) = (method, url) else {
            return gerr(400, "BadRequest", "Batch request method or url is missing.");
        };
        let rel = {
            let u = url.trim();
            let u = u.find("/v1.0/").map(|i| &u[i + 5..]).unwrap_or(u);
            if u.starts_with('/') {
                u.to_string()
            } else {
                format!("/{u}")
            }
        };
        let mut headers = HeaderMap::new();
        if let Some(h) = r.get("headers").and_then(|h| h.as_object()) {
            for (k, v) in h {
                if let (Ok(k), Some(Ok(v))) = (
                    header::HeaderName::from_bytes(k.as_bytes()),
                    v.as_str().map(HeaderValue::from_str),
                ) {
                    headers.insert(k, v);
                }
            }
        }
        let body: Vec<u8> = match r.get("body") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(b) => serde_json::to_vec(b).unwrap_or_default(),
        };
        if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
            return gerr(
                400,
                "BadRequest",
                "Write request id : {id} does not contain Content-Type header or body.",
            );
        }
        // A throttling or error fault of this request's route answers it inside the batch.
        let fault = {
            let mut s = lock(state);
            let route = route_of(&method, &rel);
            s.faults
                .iter()
                .position(|f| f.route() == route && fault_reply(f).is_some())
                .map(|i| s.faults.remove(i))
        };
        let mut reply = if let Some(r) = fault.as_ref().and_then(fault_reply) {
            r
        } else if rel.trim_start_matches('/').starts_with("$batch") {
            gerr(
                400,
                "BadRequest",
                "Nested batch requests are not supported.",
            )
        } else {
            dispatch(state, caller, &method, &rel, &headers, &body, false).await
        };
        let ids = Ids {
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: None,
        };
        fill_inner_error(&mut reply, &ids);
        if let Some(schema) = &reply.schema
            && let Ok(v) = serde_json::from_slice::<Value>(&reply.body)
        {
            lock(state).check_schema(&format!("$batch {method} {rel}"), schema, &v);
        }
        let mut h = serde_json::Map::new();
        for (k, v) in &reply.headers {
            h.insert(k.clone(), Value::String(v.clone()));
        }
        if let Some(ct) = &reply.content_type {
            h.insert("Content-Type".into(), Value::String(ct.clone()));
        }
        let body = if reply.body.is_empty() {
            Value::Null
        } else if reply
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"))
        {
            serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
        } else {
            // Non-JSON bodies (e.g. $value) travel base64-encoded.
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(&reply.body))
        };
        let mut resp = json!({"id": id, "status": reply.status, "headers": h});
        if !body.is_null() {
            resp["body"] = body;
        }
        out.push(resp);
    }
    Reply::json(200, &json!({"responses": out}), None)
}
