//! A protocol-faithful Exchange Web Services (EWS) test double, built from Microsoft's
//! published protocol documents, not from any client: SOAP operations per [MS-OXWSCORE],
//! [MS-OXWSFOLD], [MS-OXWSSYNC], [MS-OXWSSRCH], [MS-OXWSNTIF]/[MS-OXWSSTRM],
//! [MS-OXWSCVTID] (element names and order from the schemas in `shared/exchange/schemas`),
//! POX autodiscover per [MS-OXDSCLI], SOAP autodiscover `GetUserSettings` per
//! [MS-OXWSADISC], and HTTP sign-in by Basic, NTLMv2 per [MS-NLMP] (with Extended Protection:
//! the channel binding to the TLS certificate) and Bearer tokens.
//!
//! It serves HTTPS on 127.0.0.1 with the test CA's `localhost` certificate. State lives in
//! memory: accounts, mailboxes with the standard folders, items (whole MIME messages), a change
//! log per mailbox (SyncFolderItems) and subscriptions (GetEvents / GetStreamingEvents). Tests
//! add accounts and mailboxes, deliver mail, inject faults, and read back what clients did.
//!
//! ```no_run
//! # async fn demo(tls: &serversync_testkit::TlsFiles) -> anyhow::Result<()> {
//! use serversync_testkit::ews::{EwsConfig, EwsDouble};
//! let ews = EwsDouble::start(tls, EwsConfig::default()).await?;
//! ews.add_account("CONTOSO\\svc-sync", "secret", true);
//! ews.add_mailbox("alice@example.test", None);
//! let id = ews.deliver("alice@example.test", "inbox", b"Subject: hi\r\n\r\nhello\r\n", false);
//! # let _ = (id, ews.ews_url()); Ok(()) }
//! ```
//!
//! What it does not model is listed in `docs/testing.md` ("The Exchange (EWS) test double").

mod autodiscover;
pub mod ntlm;
mod occurrences;
mod ops;
mod pim;
mod store;
mod xml;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::{Extension, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::tls::{TLS_SERVER_NAME, TlsFiles};
use crate::util::HOST;

pub use ntlm::NtlmError;

/// Largest request body accepted (IIS's `maxAllowedContentLength` is larger, but EWS's
/// `maxReceivedMessageSize` refuses bigger SOAP messages); larger ones get 413.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Default of [`EwsConfig::header_timeout`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Default of [`EwsConfig::body_timeout`].
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Exchange build the double claims to be (SOAP header `ServerVersionInfo`, the highest
/// `RequestServerVersion` it accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeServerVersion {
    /// Exchange 2010 SP3 (14.3); accepts requests up to `Exchange2010_SP2`.
    Exchange2010Sp3,
    /// Exchange 2013 SP1 (15.0.847); accepts requests up to `Exchange2013_SP1`.
    Exchange2013Sp1,
    /// Exchange 2016 (15.1).
    Exchange2016,
    /// Exchange 2019 CU15 (15.2.1748).
    Exchange2019,
    /// Exchange Server Subscription Edition RTM (15.2.2562).
    ExchangeSubscriptionEdition,
    /// Exchange Online (15.20), which reports the odd `Version="V2018_01_08"`.
    ExchangeOnline,
}

impl ExchangeServerVersion {
    /// (MajorVersion, MinorVersion, MajorBuildNumber, MinorBuildNumber, Version).
    pub fn server_version_info(self) -> (u32, u32, u32, u32, &'static str) {
        match self {
            ExchangeServerVersion::Exchange2010Sp3 => (14, 3, 123, 4, "Exchange2010_SP2"),
            ExchangeServerVersion::Exchange2013Sp1 => (15, 0, 847, 32, "Exchange2013_SP1"),
            ExchangeServerVersion::Exchange2016 => (15, 1, 2507, 6, "V2017_07_11"),
            ExchangeServerVersion::Exchange2019 => (15, 2, 1748, 10, "V2017_07_11"),
            ExchangeServerVersion::ExchangeSubscriptionEdition => (15, 2, 2562, 17, "V2017_07_11"),
            ExchangeServerVersion::ExchangeOnline => (15, 20, 5000, 10, "V2018_01_08"),
        }
    }

    /// Rank of the newest `RequestServerVersion` this server accepts (see [`version_rank`]).
    fn max_request_rank(self) -> u8 {
        match self {
            ExchangeServerVersion::Exchange2010Sp3 => 5,
            ExchangeServerVersion::Exchange2013Sp1 => 7,
            _ => 10,
        }
    }
}

/// Rank of a `RequestServerVersion/@Version` value; `None` if the double does not know it
/// (answered like a too-new one, with ErrorInvalidServerVersion, which is what lets clients
/// such as exchangelib step down through version names an older server has never heard of).
fn version_rank(v: &str) -> Option<u8> {
    Some(match v {
        "Exchange2007" => 1,
        "Exchange2007_SP1" => 2,
        "Exchange2010" => 3,
        "Exchange2010_SP1" => 4,
        "Exchange2010_SP2" => 5,
        "Exchange2013" => 6,
        "Exchange2013_SP1" => 7,
        "Exchange2015" | "Exchange2015_SP1" => 8,
        "Exchange2016" => 9,
        v if v.starts_with("V20") && v.len() >= 5 => 10,
        _ => return None,
    })
}

/// What the NTLM acceptor demands of the client's channel binding (Extended Protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// EPA "Require": MsvAvChannelBindings must be present and match the TLS certificate.
    Required,
    /// EPA "Accept": checked only if the client sends one.
    Optional,
    /// EPA off.
    Ignored,
}

/// An HTTP authentication scheme the double offers (in `WWW-Authenticate`) and accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Basic` with the account's username and password.
    Basic,
    /// NTLMv2 (`WWW-Authenticate: NTLM`); all three legs on one connection.
    Ntlm {
        /// Extended Protection setting.
        channel_binding: ChannelBinding,
    },
    /// `Bearer` tokens, each mapped to an account (an account name that was not added with
    /// [`EwsDouble::add_account`] is an application with the impersonation right, like an
    /// Entra app with `full_access_as_app`).
    Bearer {
        /// (token, account) pairs.
        tokens: Vec<(String, String)>,
    },
}

/// How to run the double.
#[derive(Debug, Clone)]
pub struct EwsConfig {
    /// Which Exchange it claims to be.
    pub version: ExchangeServerVersion,
    /// Accepted schemes, offered in this order.
    pub auth: Vec<AuthScheme>,
    /// Cap on SyncFolderItems' MaxChangesReturned (forces paging).
    pub max_sync_items: u32,
    /// The DNS domain, e.g. `example.test` (server names, autodiscover).
    pub domain: String,
    /// The NetBIOS domain in NTLM, e.g. `CONTOSO`.
    pub netbios_domain: String,
    /// How often GetStreamingEvents sends `ConnectionStatus OK` when nothing happens.
    pub streaming_heartbeat: Duration,
    /// Caps GetStreamingEvents' ConnectionTimeout (minutes) so tests see a `Closed` soon.
    pub streaming_timeout_cap: Option<Duration>,
    /// The `shared/exchange` directory (its `wrappers/ews-envelope.xsd`). When set, every EWS
    /// request is first validated against the EWS schemas with `xmllint` (about 0.15 s each),
    /// and an invalid one gets `ErrorSchemaValidation`, as Exchange answers it.
    pub schema_dir: Option<PathBuf>,
    /// How long a client may take for the TLS handshake and for each request head (the
    /// connection is then closed, like IIS's `headerWaitTimeout`).
    pub header_timeout: Duration,
    /// How long a client may take to send a request body (then 408).
    pub body_timeout: Duration,
}

impl Default for EwsConfig {
    fn default() -> Self {
        EwsConfig {
            version: ExchangeServerVersion::Exchange2019,
            auth: vec![
                AuthScheme::Basic,
                AuthScheme::Ntlm {
                    channel_binding: ChannelBinding::Required,
                },
            ],
            max_sync_items: 512,
            domain: "example.test".into(),
            netbios_domain: "CONTOSO".into(),
            streaming_heartbeat: Duration::from_secs(30),
            streaming_timeout_cap: None,
            schema_dir: None,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

/// A fault injected with [`EwsDouble::inject`]; queued, and consumed by the next request whose
/// operation matches (`None`: any operation; autodiscover requests count as operations
/// `Autodiscover` (POX) and `GetUserSettings` (SOAP)). Faults apply after sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `ErrorServerBusy` with `MessageXml` `BackOffMilliseconds`: as a response message
    /// (`ResponseClass="Error"`, HTTP 200, how Exchange Online throttles) or as a SOAP fault
    /// (HTTP 500).
    ServerBusy {
        /// Operation to match.
        operation: Option<String>,
        /// BackOffMilliseconds.
        back_off_ms: u64,
        /// Send a SOAP Fault instead of a response message.
        as_soap_fault: bool,
    },
    /// A SOAP Fault `ErrorInternalServerError` with HTTP 500.
    SoapFault {
        /// Operation to match.
        operation: Option<String>,
    },
    /// A bare HTTP status (e.g. 401, 503) with no SOAP body.
    Http {
        /// Operation to match.
        operation: Option<String>,
        /// The status.
        status: u16,
    },
    /// The connection closes without an answer.
    DropConnection {
        /// Operation to match.
        operation: Option<String>,
    },
    /// The request is carried out (a message sent, an item created), and then the connection
    /// closes without the answer: what a client sees when the server or the network fails
    /// right after the work was done.
    DropAfterServing {
        /// Operation to match.
        operation: Option<String>,
    },
    /// The request is carried out, and then no answer ever comes (the connection stays open):
    /// a client still waiting is the moment to kill it.
    HangAfterServing {
        /// Operation to match.
        operation: Option<String>,
    },
    /// The answer comes this much later (the request is then served normally).
    Delay {
        /// Operation to match.
        operation: Option<String>,
        /// Milliseconds.
        ms: u64,
    },
    /// One error response message with this `ResponseCode` (e.g. `ErrorMailboxMoveInProgress`).
    ResponseCode {
        /// Operation to match.
        operation: Option<String>,
        /// The code.
        code: String,
    },
}

impl Fault {
    fn operation(&self) -> Option<&str> {
        match self {
            Fault::ServerBusy { operation, .. }
            | Fault::SoapFault { operation }
            | Fault::Http { operation, .. }
            | Fault::DropConnection { operation }
            | Fault::DropAfterServing { operation }
            | Fault::HangAfterServing { operation }
            | Fault::Delay { operation, .. }
            | Fault::ResponseCode { operation, .. } => operation.as_deref(),
        }
    }
}

/// An item as the double holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleItem {
    /// EWS ItemId.
    pub id: String,
    /// Current ChangeKey.
    pub change_key: String,
    /// The whole MIME message.
    pub mime: Vec<u8>,
    /// IsRead.
    pub is_read: bool,
    /// Message-ID header (InternetMessageId).
    pub internet_message_id: Option<String>,
    /// Subject header (raw).
    pub subject: String,
    /// Display name of the folder it is in.
    pub folder: String,
    /// Its element: `Message`, `CalendarItem`, `Contact`, `Task`, `DistributionList`.
    pub kind: String,
}

/// A request the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// SOAP operation (the local name of the first element in `Body`), `Autodiscover` for
    /// POX autodiscover, or empty if the body was not a SOAP envelope.
    pub operation: String,
    /// The raw body.
    pub body: String,
    /// HTTP headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The account the request was authenticated as (`None`: refused or an NTLM leg).
    pub authenticated_as: Option<String>,
}

#[derive(Debug, Clone)]
struct Account {
    username: String,
    password: String,
    impersonation: bool,
    mailbox: Option<String>,
    /// Multi-factor authentication is required: a right password is still refused.
    mfa: bool,
}

struct DoubleState {
    cfg: EwsConfig,
    port: u16,
    cert_hash: [u8; 16],
    accounts: HashMap<String, Account>,
    mailboxes: BTreeMap<String, store::Mailbox>,
    redirects: HashMap<String, String>,
    faults: Vec<Fault>,
    requests: Vec<RecordedRequest>,
    sent: Vec<Vec<u8>>,
    counter: u64,
    seq: u64,
    subs: store::Subscriptions,
    /// Accounts of bearer tokens an identity provider issued (`None`: not one of its tokens).
    token_validator: Option<TokenValidator>,
}

/// Tells whose a bearer token is, e.g. by asking the test's OAuth server.
pub type TokenValidator = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

type Shared = Arc<Mutex<DoubleState>>;

fn lock(s: &Mutex<DoubleState>) -> std::sync::MutexGuard<'_, DoubleState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// NTLM state of one TCP connection.
#[derive(Debug, Default)]
struct NtlmLegs {
    negotiate: Option<Vec<u8>>,
    challenge: Option<Vec<u8>>,
    authenticated: Option<String>,
}

/// Per-connection state (NTLM is connection-oriented).
#[derive(Debug, Default)]
struct Conn {
    ntlm: Mutex<NtlmLegs>,
    kill: Notify,
}

impl crate::https_server::Connection for Conn {
    fn kill(&self) -> &Notify {
        &self.kill
    }
}

/// Microsoft's EWS schemas and their validator (`validate.sh`), in `../shared/exchange`
/// beside the project's root (`SERVERSYNC_EWS_SCHEMAS` overrides). Panics when they are
/// missing: the schema checks never pass by being skipped.
pub fn schema_dir() -> PathBuf {
    let dir = std::env::var_os("SERVERSYNC_EWS_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/exchange"
            ))
        });
    assert!(
        dir.join("validate.sh").exists() && dir.join("wrappers/ews-envelope.xsd").exists(),
        "the EWS schemas are not at {}: ../shared must sit beside the project's root",
        dir.display()
    );
    dir
}

/// A running EWS double; the server stops when it is dropped.
pub struct EwsDouble {
    port: u16,
    state: Shared,
    task: JoinHandle<()>,
    _shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for EwsDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EwsDouble")
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for EwsDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EwsDouble {
    /// Starts the double on a free port of 127.0.0.1 (inside a tokio runtime), serving HTTPS
    /// with the `localhost` certificate of `tls`.
    pub async fn start(tls: &TlsFiles, cfg: EwsConfig) -> Result<EwsDouble> {
        let (acceptor, leaf) = crate::https_server::acceptor(tls)?;
        let listener = TcpListener::bind((HOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let header_timeout = cfg.header_timeout;
        let state: Shared = Arc::new(Mutex::new(DoubleState {
            cfg,
            port,
            cert_hash: ntlm::channel_bindings_hash(&leaf),
            accounts: HashMap::new(),
            mailboxes: BTreeMap::new(),
            redirects: HashMap::new(),
            faults: Vec::new(),
            requests: Vec::new(),
            sent: Vec::new(),
            counter: 0,
            seq: 0,
            subs: HashMap::new(),
            token_validator: None,
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let (task, shutdown) =
            crate::https_server::serve::<Conn>(listener, acceptor, app, header_timeout);
        Ok(EwsDouble {
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

    /// `https://localhost:PORT/EWS/Exchange.asmx`.
    pub fn ews_url(&self) -> String {
        format!("https://{TLS_SERVER_NAME}:{}/EWS/Exchange.asmx", self.port)
    }

    /// `https://localhost:PORT/autodiscover/autodiscover.xml` (POX); SOAP autodiscover is at
    /// [`autodiscover_svc_url`](Self::autodiscover_svc_url).
    pub fn autodiscover_url(&self) -> String {
        format!(
            "https://{TLS_SERVER_NAME}:{}/autodiscover/autodiscover.xml",
            self.port
        )
    }

    /// `https://localhost:PORT/autodiscover/autodiscover.svc` (SOAP, MS-OXWSADISC).
    pub fn autodiscover_svc_url(&self) -> String {
        format!(
            "https://{TLS_SERVER_NAME}:{}/autodiscover/autodiscover.svc",
            self.port
        )
    }

    /// Adds (or replaces) an account: `DOMAIN\user` for NTLM/Basic, or a UPN. `impersonation`
    /// grants the ApplicationImpersonation role.
    pub fn add_account(&self, username: &str, password: &str, impersonation: bool) {
        let mut s = self.state();
        let key = username.to_lowercase();
        let mailbox = s.accounts.get(&key).and_then(|a| a.mailbox.clone());
        s.accounts.insert(
            key,
            Account {
                username: username.to_string(),
                password: password.to_string(),
                impersonation,
                mailbox,
                mfa: false,
            },
        );
    }

    /// Makes `username` an account with multi-factor authentication turned on: signing in
    /// with its right password is refused as Exchange Online refused legacy authentication
    /// for such accounts (HTTP 401 naming `AADSTS50076`, "you must use multi-factor
    /// authentication"); a wrong password is refused as usual.
    pub fn require_mfa(&self, username: &str) {
        if let Some(a) = self.state().accounts.get_mut(&username.to_lowercase()) {
            a.mfa = true;
        }
    }

    /// Grants or revokes the impersonation right of an account.
    pub fn set_impersonation(&self, username: &str, allowed: bool) {
        if let Some(a) = self.state().accounts.get_mut(&username.to_lowercase()) {
            a.impersonation = allowed;
        }
    }

    /// Adds a mailbox with msgfolderroot, Inbox, Sent Items, Drafts, Deleted Items, Outbox and
    /// Junk Email. `owner_username` (an account added before or after) signs in as itself and
    /// acts on it without impersonation.
    pub fn add_mailbox(&self, smtp: &str, owner_username: Option<&str>) {
        let mut s = self.state();
        let mut counter = s.counter;
        let mb = store::Mailbox::new(smtp, owner_username, &mut counter);
        s.counter = counter;
        s.mailboxes.insert(smtp.to_lowercase(), mb);
        if let Some(owner) = owner_username {
            let key = owner.to_lowercase();
            match s.accounts.get_mut(&key) {
                Some(a) => a.mailbox = Some(smtp.to_lowercase()),
                None => {
                    s.accounts.insert(
                        key,
                        Account {
                            username: owner.to_string(),
                            password: String::new(),
                            impersonation: false,
                            mailbox: Some(smtp.to_lowercase()),
                            mfa: false,
                        },
                    );
                }
            }
        }
    }

    /// POX autodiscover for `from_smtp` answers `<Action>redirectAddr</Action>` to `to_smtp`
    /// (SOAP autodiscover answers `RedirectAddress`).
    pub fn redirect_autodiscover(&self, from_smtp: &str, to_smtp: &str) {
        self.state()
            .redirects
            .insert(from_smtp.to_lowercase(), to_smtp.to_string());
    }

    /// Puts a message into a folder (distinguished id such as `inbox`, or display name) as
    /// mail delivery would, raising NewMailEvent and CreatedEvent; returns its ItemId.
    /// Panics if the mailbox or folder does not exist (a mistake in the test).
    pub fn deliver(&self, mailbox: &str, folder: &str, mime: &[u8], is_read: bool) -> String {
        self.deliver_received(mailbox, folder, mime, is_read, chrono::Utc::now())
    }

    /// Like [`EwsDouble::deliver`], received by the server at `received` (`DateTimeReceived`).
    pub fn deliver_received(
        &self,
        mailbox: &str,
        folder: &str,
        mime: &[u8],
        is_read: bool,
        received: chrono::DateTime<chrono::Utc>,
    ) -> String {
        let mut s = self.state();
        let mb_key = mailbox.to_lowercase();
        let folder_id = s
            .mailboxes
            .get(&mb_key)
            .unwrap_or_else(|| panic!("no mailbox {mailbox}"))
            .folder(folder)
            .unwrap_or_else(|| panic!("no folder {folder} in {mailbox}"))
            .id
            .clone();
        let id = ops::insert_item(
            &mut s,
            &mb_key,
            &folder_id,
            mime.to_vec(),
            is_read,
            received,
        );
        ops::emit(&mut s, &mb_key, "NewMailEvent", &id, &folder_id, None);
        ops::emit(&mut s, &mb_key, "CreatedEvent", &id, &folder_id, None);
        id
    }

    /// Accepts bearer tokens `validator` vouches for (the account it names), besides the
    /// configured ones: an identity provider's tokens (Hybrid Modern Authentication).
    pub fn accept_tokens(&self, validator: TokenValidator) {
        self.state().token_validator = Some(validator);
    }

    /// The items of a folder, oldest first.
    pub fn items(&self, mailbox: &str, folder: &str) -> Vec<DoubleItem> {
        let s = self.state();
        let Some(mb) = s.mailboxes.get(&mailbox.to_lowercase()) else {
            return Vec::new();
        };
        let Some(f) = mb.folder(folder) else {
            return Vec::new();
        };
        let mut items: Vec<_> = mb.items_in(&f.id).collect();
        items.sort_by_key(|i| i.order);
        items
            .into_iter()
            .map(|i| DoubleItem {
                id: i.id.clone(),
                change_key: store::change_key("M", i.version),
                mime: i.mime.clone(),
                is_read: i.is_read,
                internet_message_id: i.internet_message_id.clone(),
                subject: i.subject.clone(),
                folder: f.display_name.clone(),
                kind: i
                    .pim
                    .as_ref()
                    .map_or_else(|| "Message".to_string(), |p| p.kind.clone()),
            })
            .collect()
    }

    /// Creates a calendar item, contact, task or distribution list in `folder` as another
    /// client (Outlook, a phone) would: `element` is its XML (`<CalendarItem><Subject>…`, any
    /// namespace or none), completed as CreateItem completes it; raises CreatedEvent. Returns
    /// its ItemId. Panics on a mistake in the test (no such mailbox or folder, bad XML).
    pub fn create_item(&self, mailbox: &str, folder: &str, element: &str) -> String {
        let node = xml::parse(element.as_bytes()).expect("the item's XML");
        assert!(
            pim::KINDS.contains(&node.name.as_str()),
            "{} is not a calendar item, contact, task or distribution list",
            node.name
        );
        let mut s = self.state();
        let mb_key = mailbox.to_lowercase();
        let m = s
            .mailboxes
            .get(&mb_key)
            .unwrap_or_else(|| panic!("no mailbox {mailbox}"));
        let folder_id = m
            .folder(folder)
            .unwrap_or_else(|| panic!("no folder {folder} in {mailbox}"))
            .id
            .clone();
        let (smtp, name) = (m.smtp.clone(), m.display_name.clone());
        let p = pim::new_pim(
            &node,
            &pim::Owner {
                smtp: &smtp,
                name: &name,
            },
        );
        let id = ops::insert_item_with(
            &mut s,
            &mb_key,
            &folder_id,
            Vec::new(),
            true,
            chrono::Utc::now(),
            Some(p),
        );
        ops::emit(&mut s, &mb_key, "CreatedEvent", &id, &folder_id, None);
        id
    }

    /// Changes an item as another client would: each element of `properties` (XML such as
    /// `<Subject>New</Subject>`, several wrapped in any one element) replaces the property of
    /// that name, and each name in `remove` is deleted. The ChangeKey changes; the change is
    /// logged for SyncFolderItems and raises ModifiedEvent. Panics when the item is not there.
    pub fn change_item(&self, mailbox: &str, id: &str, properties: &[&str], remove: &[&str]) {
        let mut s = self.state();
        let mb_key = mailbox.to_lowercase();
        let folder = {
            let item = s
                .mailboxes
                .get_mut(&mb_key)
                .and_then(|m| m.items.get_mut(id))
                .unwrap_or_else(|| panic!("no item {id} in {mailbox}"));
            let p = item.pim.as_mut().expect("a calendar item, contact or task");
            for x in properties {
                p.put(xml::parse(x.as_bytes()).expect("the property's XML"));
            }
            for name in remove {
                p.remove(name);
            }
            item.subject = p
                .field("Subject")
                .map(|n| n.text.trim().to_string())
                .unwrap_or_default();
            item.version += 1;
            item.modified = chrono::Utc::now();
            item.folder.clone()
        };
        ops::log_change(&mut s, &mb_key, &folder, id, store::ChangeKind::Update);
        ops::emit(&mut s, &mb_key, "ModifiedEvent", id, &folder, None);
    }

    /// Cancels occurrence `index` (1-based) of the series `master` as another client would
    /// (DeleteItem of an OccurrenceItemId): a DeletedOccurrence, the master's ChangeKey
    /// changes, logged and raised as the master's ModifiedEvent. Panics when the item is no
    /// series or the index is none of its occurrences.
    pub fn cancel_occurrence(&self, mailbox: &str, master: &str, index: u32) {
        self.change_series(mailbox, master, index, |p, original| {
            occurrences::cancel(p, original)
        });
    }

    /// Changes occurrence `index` (1-based) of the series `master` as another client would
    /// (UpdateItem of an OccurrenceItemId): each element of `properties` (`<Start>…</Start>`,
    /// `<Subject>…</Subject>`) replaces the occurrence's property of that name; it becomes a
    /// ModifiedOccurrence. Panics as [`EwsDouble::cancel_occurrence`] does.
    pub fn change_occurrence(&self, mailbox: &str, master: &str, index: u32, properties: &[&str]) {
        let nodes: Vec<xml::Node> = properties
            .iter()
            .map(|x| xml::parse(x.as_bytes()).expect("the property's XML"))
            .collect();
        let id = master.to_string();
        self.change_series(mailbox, master, index, move |p, original| {
            occurrences::modify(p, &id, original, |o| {
                for n in nodes {
                    o.put(n);
                }
                Ok(())
            })
            .map(|_| ())
        });
    }

    fn change_series(
        &self,
        mailbox: &str,
        master: &str,
        index: u32,
        change: impl FnOnce(&mut store::Pim, chrono::DateTime<chrono::Utc>) -> Result<(), pim::Refusal>,
    ) {
        let mut s = self.state();
        let mb_key = mailbox.to_lowercase();
        let folder = {
            let item = s
                .mailboxes
                .get_mut(&mb_key)
                .and_then(|m| m.items.get_mut(master))
                .unwrap_or_else(|| panic!("no item {master} in {mailbox}"));
            let mut p = item.pim.clone().expect("a calendar item");
            let original = occurrences::resolve(&p, &index.to_string())
                .unwrap_or_else(|e| panic!("occurrence {index}: {e:?}"));
            change(&mut p, original).unwrap_or_else(|e| panic!("occurrence {index}: {e:?}"));
            item.pim = Some(p);
            item.version += 1;
            item.modified = chrono::Utc::now();
            item.folder.clone()
        };
        ops::log_change(&mut s, &mb_key, &folder, master, store::ChangeKind::Update);
        ops::emit(&mut s, &mb_key, "ModifiedEvent", master, &folder, None);
    }

    /// Deletes an item for good as another client would (logged for SyncFolderItems, raises
    /// DeletedEvent). Returns whether it was there.
    pub fn remove_item(&self, mailbox: &str, id: &str) -> bool {
        let mut s = self.state();
        let mb_key = mailbox.to_lowercase();
        let Some(item) = s
            .mailboxes
            .get_mut(&mb_key)
            .and_then(|m| m.items.remove(id))
        else {
            return false;
        };
        ops::log_change(&mut s, &mb_key, &item.folder, id, store::ChangeKind::Delete);
        ops::emit(&mut s, &mb_key, "DeletedEvent", id, &item.folder, None);
        true
    }

    /// A calendar item, contact or task as stored: every property and every extended
    /// property, in the schema's order (`None`: no such item, or a message).
    pub fn item_xml(&self, mailbox: &str, id: &str) -> Option<String> {
        let s = self.state();
        let m = s.mailboxes.get(&mailbox.to_lowercase())?;
        let i = m.items.get(id)?;
        let p = i.pim.as_ref()?;
        let uris: Vec<&xml::Node> = p
            .extended
            .iter()
            .filter_map(|e| e.child("ExtendedFieldURI"))
            .collect();
        Some(pim::render(
            p,
            &i.id,
            &store::change_key("M", i.version),
            None,
            i.received,
            i.modified,
            &pim::Wanted {
                all: true,
                names: Vec::new(),
                indexed: Vec::new(),
                extended: uris,
                body_type: "Best",
            },
        ))
    }

    /// Queues a fault.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Every request received so far, in order (NTLM legs and refused ones included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// MIME of every message sent (CreateItem with SendOnly or SendAndSaveCopy), in order.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.state().sent.clone()
    }

    /// Ids of the live subscriptions.
    pub fn subscriptions(&self) -> Vec<String> {
        self.state().subs.keys().cloned().collect()
    }
}

/// Builds a response.
fn respond(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

const XML_UTF8: &str = "text/xml; charset=utf-8";

/// Which service a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Ews,
    Pox,
    SoapAutodiscover,
}

async fn handle(
    AxState(state): AxState<Shared>,
    Extension(conn): Extension<Arc<Conn>>,
    req: Request<Body>,
) -> Response<Body> {
    let path = req.uri().path().to_ascii_lowercase();
    let endpoint = match path.as_str() {
        "/ews/exchange.asmx" => Endpoint::Ews,
        "/autodiscover/autodiscover.xml" => Endpoint::Pox,
        "/autodiscover/autodiscover.svc" => Endpoint::SoapAutodiscover,
        _ => return respond(StatusCode::NOT_FOUND, "text/html", "Not Found"),
    };
    let (parts, body) = req.into_parts();
    let too_big = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_big {
        return respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/html",
            "Request Entity Too Large",
        );
    }
    let body_timeout = lock(&state).cfg.body_timeout;
    let body = match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Err(_) => return respond(StatusCode::REQUEST_TIMEOUT, "text/html", "Request Timeout"),
        Ok(Err(e)) => {
            let limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return if limit {
                respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "text/html",
                    "Request Entity Too Large",
                )
            } else {
                respond(StatusCode::BAD_REQUEST, "text/html", "Bad Request")
            };
        }
        Ok(Ok(b)) => b,
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
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let doc = xml::parse(&body);
    let operation = match (&doc, endpoint) {
        (_, Endpoint::Pox) => "Autodiscover".to_string(),
        (Ok(root), _) => root
            .child("Body")
            .and_then(|b| b.children.first())
            .map(|op| {
                if endpoint == Endpoint::SoapAutodiscover {
                    op.name.trim_end_matches("RequestMessage").to_string()
                } else {
                    op.name.clone()
                }
            })
            .unwrap_or_default(),
        (Err(_), _) => String::new(),
    };
    let auth = authenticate(&state, &conn, &parts.headers);
    let record = |who: Option<String>| {
        lock(&state).requests.push(RecordedRequest {
            operation: operation.clone(),
            body: body_text.clone(),
            headers: headers.clone(),
            authenticated_as: who,
        });
    };
    let who = match auth {
        Ok(who) => {
            record(Some(who.clone()));
            who
        }
        Err(refusal) => {
            record(None);
            return *refusal;
        }
    };
    // What IIS and Exchange answer to other methods once signed in.
    if parts.method != axum::http::Method::POST {
        let get =
            parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
        return match endpoint {
            Endpoint::Ews if get => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<html><head><title>Service</title></head><body><h1>Service</h1>\
                 <p>You have created a service.</p></body></html>",
            ),
            Endpoint::Pox if get => autodiscover::pox_error(600, "Invalid Request"),
            _ => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/html",
                "Method Not Allowed",
            ),
        };
    }
    // Injected faults.
    let fault = {
        let mut s = lock(&state);
        let i = s
            .faults
            .iter()
            .position(|f| f.operation().is_none_or(|o| o == operation));
        i.map(|i| s.faults.remove(i))
    };
    let (mut drop_after, mut hang_after) = (false, false);
    if let Some(fault) = fault {
        let version = lock(&state).cfg.version;
        match fault {
            Fault::DropAfterServing { .. } => drop_after = true,
            Fault::HangAfterServing { .. } => hang_after = true,
            Fault::Delay { ms, .. } => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::DropConnection { .. } => {
                conn.kill.notify_one();
                std::future::pending::<()>().await;
            }
            Fault::Http { status: 401, .. } => {
                // As when a password changed or a token expired: sign in again, on this
                // connection too.
                conn.ntlm
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .authenticated = None;
                let offered = challenges(&lock(&state).cfg);
                return *unauthorized(&offered);
            }
            Fault::Http { status, .. } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return respond(status, "text/html", "");
            }
            Fault::SoapFault { .. } => {
                return ops::soap_fault(
                    version,
                    "ErrorInternalServerError",
                    "An internal server error occurred. The operation failed.",
                    "",
                );
            }
            Fault::ServerBusy {
                back_off_ms,
                as_soap_fault,
                ..
            } => {
                let text = "The server cannot service this request right now. Try again later.";
                let xml = format!("<t:Value Name=\"BackOffMilliseconds\">{back_off_ms}</t:Value>");
                return if as_soap_fault {
                    ops::soap_fault(version, "ErrorServerBusy", text, &xml)
                } else {
                    ops::error_response(version, &operation, "ErrorServerBusy", text, &xml)
                };
            }
            Fault::ResponseCode { code, .. } => {
                return ops::error_response(version, &operation, &code, &code, "");
            }
        }
    }
    let doc = match doc {
        Ok(d) => d,
        Err(e) => {
            let version = lock(&state).cfg.version;
            return match endpoint {
                Endpoint::Pox => autodiscover::pox_error(600, "Invalid Request"),
                _ => ops::schema_fault(version, &e.message, e.line),
            };
        }
    };
    match endpoint {
        Endpoint::Pox => autodiscover::pox(&state, &doc),
        Endpoint::SoapAutodiscover => autodiscover::soap(&state, &doc),
        Endpoint::Ews => {
            let (version, schema_dir) = {
                let s = lock(&state);
                (s.cfg.version, s.cfg.schema_dir.clone())
            };
            if let Some(dir) = schema_dir
                && let Err((violation, line)) = schema_check(&dir, &body).await
            {
                return ops::schema_fault(version, &violation, line);
            }
            let anchor = parts
                .headers
                .get("x-anchormailbox")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let answer = ops::dispatch(&state, &who, anchor.as_deref(), &doc).await;
            if drop_after {
                conn.kill.notify_one();
            }
            if drop_after || hang_after {
                std::future::pending::<()>().await;
            }
            answer
        }
    }
}

/// Validates a SOAP request with xmllint against `wrappers/ews-envelope.xsd` under `dir`;
/// `Err` carries xmllint's first complaint and its line.
async fn schema_check(dir: &std::path::Path, body: &[u8]) -> Result<(), (String, usize)> {
    use tokio::io::AsyncWriteExt;
    let xsd = dir.join("wrappers").join("ews-envelope.xsd");
    let child = tokio::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Err((format!("xmllint could not run: {e}"), 0)),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body).await;
    }
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => return Err((format!("xmllint failed: {e}"), 0)),
    };
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let first = text
        .lines()
        .find(|l| l.starts_with("-:"))
        .unwrap_or("the request does not match the EWS schemas");
    let line = first
        .split(':')
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Err((first.trim_start_matches("-:").to_string(), line))
}

/// `WWW-Authenticate` values for the configured schemes, in order.
fn challenges(cfg: &EwsConfig) -> Vec<String> {
    cfg.auth
        .iter()
        .map(|a| match a {
            AuthScheme::Basic => format!("Basic realm=\"{}\"", cfg.domain),
            AuthScheme::Ntlm { .. } => "NTLM".to_string(),
            AuthScheme::Bearer { .. } => {
                "Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\"".to_string()
            }
        })
        .collect()
}

fn unauthorized(values: &[String]) -> Box<Response<Body>> {
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "text/html",
        "<html><body>401 - Unauthorized: Access is denied due to invalid credentials.</body></html>",
    );
    for v in values {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    Box::new(r)
}

/// The refusal of a right password for an account that must use multi-factor
/// authentication.
fn mfa_required(cfg: &EwsConfig) -> Box<Response<Body>> {
    let mut r = unauthorized(&challenges(cfg));
    *r.body_mut() = Body::from(
        "AADSTS50076: Due to a configuration change made by your administrator, or because \
         you moved to a new location, you must use multi-factor authentication to access \
         '00000002-0000-0ff1-ce00-000000000000'.",
    );
    r
}

/// Signs a request in; `Err` is the 401 to send (an NTLM CHALLENGE or a refusal).
fn authenticate(
    state: &Shared,
    conn: &Conn,
    headers: &HeaderMap,
) -> Result<String, Box<Response<Body>>> {
    let s = lock(state);
    let refuse = || unauthorized(&challenges(&s.cfg));
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let Some(given) = given else {
        let legs = conn.ntlm.lock().unwrap_or_else(|p| p.into_inner());
        return match &legs.authenticated {
            Some(who) => Ok(who.clone()),
            None => Err(refuse()),
        };
    };
    let (scheme, token) = given.split_once(' ').unwrap_or((given, ""));
    let token = token.trim();
    let scheme = scheme.to_ascii_lowercase();
    let ntlm_binding = s.cfg.auth.iter().find_map(|a| match a {
        AuthScheme::Ntlm { channel_binding } => Some(*channel_binding),
        _ => None,
    });
    match scheme.as_str() {
        "basic" if s.cfg.auth.contains(&AuthScheme::Basic) => {
            let decoded = B64
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(refuse)?;
            let (user, password) = decoded.split_once(':').ok_or_else(refuse)?;
            match s.accounts.get(&user.to_lowercase()) {
                Some(a) if !a.password.is_empty() && a.password == password => {
                    if a.mfa {
                        return Err(mfa_required(&s.cfg));
                    }
                    Ok(a.username.clone())
                }
                _ => Err(refuse()),
            }
        }
        "bearer" => {
            let account = s
                .cfg
                .auth
                .iter()
                .find_map(|a| match a {
                    AuthScheme::Bearer { tokens } => tokens
                        .iter()
                        .find(|(t, _)| t == token)
                        .map(|(_, acct)| acct.clone()),
                    _ => None,
                })
                .or_else(|| s.token_validator.as_ref().and_then(|v| v(token)));
            account.ok_or_else(|| {
                unauthorized(&["Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", error=\"invalid_token\"".to_string()])
            })
        }
        "ntlm" | "negotiate" if ntlm_binding.is_some() => {
            let binding = match ntlm_binding {
                Some(ChannelBinding::Required) => ntlm::Binding::Required(s.cert_hash),
                Some(ChannelBinding::Optional) => ntlm::Binding::Optional(s.cert_hash),
                _ => ntlm::Binding::Ignored,
            };
            let msg = B64.decode(token).map_err(|_| refuse())?;
            let mut legs = conn.ntlm.lock().unwrap_or_else(|p| p.into_inner());
            let kind = msg
                .get(8..12)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            match kind {
                Some(1) => {
                    let flags = ntlm::parse_negotiate(&msg).map_err(|_| refuse())?;
                    let mut challenge_bytes = [0u8; 8];
                    challenge_bytes.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
                    let names = ntlm::ServerNames {
                        nb_domain: s.cfg.netbios_domain.clone(),
                        nb_computer: "EXCH01".into(),
                        dns_domain: s.cfg.domain.clone(),
                        dns_computer: format!("exch01.{}", s.cfg.domain),
                    };
                    let ch = ntlm::challenge(flags, challenge_bytes, &names);
                    let value = format!(
                        "{} {}",
                        if scheme == "ntlm" {
                            "NTLM"
                        } else {
                            "Negotiate"
                        },
                        B64.encode(&ch)
                    );
                    *legs = NtlmLegs {
                        negotiate: Some(msg),
                        challenge: Some(ch),
                        authenticated: None,
                    };
                    Err(unauthorized(&[value]))
                }
                Some(3) => {
                    let (Some(neg), Some(ch)) = (legs.negotiate.take(), legs.challenge.take())
                    else {
                        return Err(refuse());
                    };
                    let claimed = ntlm::claimed(&msg).map_err(|_| refuse())?;
                    let account = lookup_ntlm(&s.accounts, &claimed).ok_or_else(refuse)?;
                    match ntlm::verify(&neg, &ch, &msg, &account.password, binding) {
                        Ok(_) if account.mfa => Err(mfa_required(&s.cfg)),
                        Ok(_) => {
                            legs.authenticated = Some(account.username.clone());
                            Ok(account.username.clone())
                        }
                        Err(_) => Err(refuse()),
                    }
                }
                _ => Err(refuse()),
            }
        }
        _ => Err(refuse()),
    }
}

fn lookup_ntlm<'a>(
    accounts: &'a HashMap<String, Account>,
    c: &ntlm::Claimed,
) -> Option<&'a Account> {
    let candidates = [
        format!("{}\\{}", c.domain, c.user).to_lowercase(),
        c.user.to_lowercase(),
    ];
    candidates
        .iter()
        .filter(|k| !k.starts_with('\\'))
        .find_map(|k| accounts.get(k))
        .filter(|a| !a.password.is_empty())
}
