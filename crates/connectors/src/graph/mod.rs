//! Exchange Online over Microsoft Graph v1.0: a hand-written client for the few endpoints
//! mail synchronization needs, on our own HTTPS connection ([`crate::https`]), so DNS, TCP and
//! TLS are the same classified steps as for every other server.
//!
//! - Reading: a folder's `messages/delta` (the `@odata.nextLink` / `@odata.deltaLink` is the
//!   cursor), each message's MIME with `messages/{id}/$value`, extra folders by their path of
//!   display names; an expired delta link is `sync_state_invalid` (HTTP 410) and the folder is
//!   read again from the start.
//! - Sending: `sendMail` with the MIME message (base64, `Content-Type: text/plain`), which
//!   Exchange Online saves in Sent Items; the "outcome unknown" check finds the Message-ID
//!   there (`$filter=internetMessageId eq '…'`).
//! - Throttling: 429, 503 and 504 are waited out as `Retry-After` says (or with doubling
//!   waits when it is absent), a few times per request ([`THROTTLE_TRIES`]); the waits are kept
//!   for the send trace ([`GraphClient::take_waits`]).
//!
//! Links the server hands back are followed only on the Graph origin the client was opened
//! with; every answer's size is bounded.

pub mod codes;
pub mod itemmap;
pub mod items;
pub mod probe;

use crate::https::{Conn, Response, Target};
use crate::login::Login;
use crate::probe::StepLog;
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Result, Secret};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// Graph's root in the public cloud.
pub const PUBLIC: &str = "https://graph.microsoft.com";
/// Graph's root for US Government (L4).
pub const US_GOVERNMENT: &str = "https://graph.microsoft.us";
/// Graph's root in the cloud operated by 21Vianet (China).
pub const CHINA: &str = "https://microsoftgraph.chinacloudapi.cn";

/// Requests waited out when throttled, per request.
pub const THROTTLE_TRIES: u32 = 4;
/// The longest single wait.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The first wait when the server does not say (then doubling).
const FIRST_WAIT: Duration = Duration::from_secs(2);
/// The largest JSON answer read.
const MAX_JSON: usize = 16 << 20;
/// The largest MIME message read (Exchange Online's largest message is 150 MB).
const MAX_MIME: usize = 160 << 20;
/// Requests in one `$batch` (Graph's limit).
pub const MAX_BATCH: usize = 20;
/// The largest `$batch` answer read; a batch of larger messages is read one by one.
const MAX_BATCH_ANSWER: usize = 48 << 20;
/// The largest message `sendMail` takes in MIME form (4 MB of request).
pub const MAX_SEND: usize = 4 << 20;

/// Where a Graph client goes and for which mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphTarget {
    /// Graph's root (`https://graph.microsoft.com`, or a national cloud's).
    pub graph_url: String,
    /// The mailbox's address (requests go to `/users/{address}`).
    pub mailbox: String,
    /// SHA-256 fingerprints of certificates accepted as they are.
    pub pinned: Vec<String>,
}

/// A mail folder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MailFolder {
    pub id: String,
    #[serde(default)]
    pub display_name: String,
}

/// One entry of a delta page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaMessage {
    pub id: String,
    /// `@removed`: deleted or moved out of the folder.
    pub removed: bool,
    pub internet_message_id: Option<String>,
    pub received: Option<chrono::DateTime<chrono::Utc>>,
}

/// A page of changes and where to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPage {
    pub messages: Vec<DeltaMessage>,
    /// The link to go on from: the next page's, or the delta link once the folder is read.
    pub link: String,
    /// `link` is a next page (`@odata.nextLink`): more changes wait.
    pub more: bool,
}

/// A change-notification subscription as Graph answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub expires: chrono::DateTime<chrono::Utc>,
}

/// The longest a subscription to messages may last (Graph's limit, in minutes).
pub const MAX_SUBSCRIPTION_MINUTES: i64 = 4230;

/// What became of a `sendMail`.
#[derive(Debug)]
pub enum SendOutcome {
    /// Accepted (202): sent, and saved in Sent Items.
    Sent,
    /// It never reached Graph, or Graph refused the token: nothing happened.
    NotSent(ConnectError),
    /// Graph refused the message (it was not sent).
    Refused(ConnectError),
    /// Handed over without a clear answer: it may have been sent.
    Unknown(ConnectError),
}

/// A connection to Graph acting on one mailbox with the application's token.
pub struct GraphClient {
    target: Target,
    graph: GraphTarget,
    opts: ConnectOptions,
    conn: Option<Conn>,
    token: Secret,
    /// `/v1.0/users/{address}` with the address percent-encoded.
    user_path: String,
    waits: Vec<String>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("graph", &self.graph)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes a path segment (an address, an id).
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// An OData string literal (single quotes doubled).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn protocol(msg: impl Into<String>) -> ConnectError {
    ConnectError::new(FailureStep::Protocol, ErrorKind::Permanent, msg)
}

impl GraphClient {
    /// Opens the connection to Graph (DNS, TCP and TLS recorded in `log`); `login` carries the
    /// application's bearer token.
    pub async fn connect(
        graph: &GraphTarget,
        login: &Login,
        opts: &ConnectOptions,
        log: &mut StepLog,
    ) -> Result<GraphClient> {
        let Login::XOAuth2 { access_token, .. } = login else {
            return Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                "Microsoft Graph signs in only with the application's OAuth token \
                 (server-to-server authentication): check the profile's authentication type",
            )
            .with_code("credentials_missing"));
        };
        let mut target = Target::parse(&graph.graph_url).map_err(|e| {
            ConnectError::new(FailureStep::Dns, ErrorKind::Config, e).with_code("invalid_graph_url")
        })?;
        target.addr = target.addr.with_pinned(graph.pinned.clone());
        let conn = Conn::open(&target.addr, opts, log).await?;
        Ok(GraphClient {
            user_path: format!("/v1.0/users/{}", segment(graph.mailbox.trim())),
            target,
            graph: graph.clone(),
            opts: opts.clone(),
            conn: Some(conn),
            token: access_token.clone(),
            waits: Vec::new(),
        })
    }

    /// The mailbox acted on.
    pub fn mailbox(&self) -> &str {
        &self.graph.mailbox
    }

    /// Graph's root.
    pub fn url(&self) -> String {
        self.target.origin()
    }

    /// The throttling waits so far (for a send's trace), emptied.
    pub fn take_waits(&mut self) -> Vec<String> {
        std::mem::take(&mut self.waits)
    }

    /// A link the server handed back, as a path on our origin; a link elsewhere is refused.
    fn own_path(&self, link: &str) -> Result<String> {
        let origin = self.target.origin();
        link.strip_prefix(&origin)
            .filter(|p| p.starts_with("/v1.0/"))
            .map(str::to_owned)
            .ok_or_else(|| {
                protocol(format!(
                    "Microsoft Graph handed back a link outside {origin}/v1.0: refused"
                ))
            })
    }

    fn request(
        &self,
        method: &hyper::Method,
        path: &str,
        body: &Option<(&'static str, Bytes)>,
        extra: &[(&str, String)],
    ) -> Result<hyper::Request<Full<Bytes>>> {
        let mut b = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header("Host", &self.target.host_header)
            .header("Authorization", format!("Bearer {}", self.token.expose()))
            .header("Accept", "application/json")
            .header(
                "User-Agent",
                concat!("serversync/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in extra {
            b = b.header(*k, v);
        }
        let body = match body {
            Some((ct, bytes)) => {
                b = b.header("Content-Type", *ct);
                bytes.clone()
            }
            None => Bytes::new(),
        };
        b.body(Full::new(body))
            .map_err(|e| protocol(format!("building the request to {path}: {e}")))
    }

    /// One request on the connection (reopened when the server closed it).
    async fn once(
        &mut self,
        method: &hyper::Method,
        path: &str,
        body: &Option<(&'static str, Bytes)>,
        extra: &[(&str, String)],
        max: usize,
        what: &str,
    ) -> Result<Response> {
        if !self.conn.as_ref().is_some_and(Conn::is_open) {
            self.conn = None;
            self.conn = Some(Conn::open(&self.target.addr, &self.opts, &mut StepLog::new()).await?);
        }
        let req = self.request(method, path, body, extra)?;
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| protocol("no connection"))?;
        let r = conn.send(req, max, what).await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// A request whose repetition changes nothing: throttling and unavailability are waited
    /// out up to [`THROTTLE_TRIES`] times; any other non-2xx answer is the classified error.
    async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        extra: &[(&str, String)],
        max: usize,
        what: &str,
    ) -> Result<Response> {
        let mut tries = 0;
        loop {
            let resp = self.once(&method, path, &body, extra, max, what).await?;
            if (200..300).contains(&resp.status) {
                return Ok(resp);
            }
            let err = self.refusal(&resp, what);
            if err.is_transient() && tries < THROTTLE_TRIES {
                self.wait_out(&err, tries).await;
                tries += 1;
                continue;
            }
            return Err(err);
        }
    }

    fn refusal(&self, resp: &Response, what: &str) -> ConnectError {
        let retry = codes::retry_after(
            resp.headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
        );
        codes::classify(resp.status, &resp.body, retry, what)
    }

    /// Sleeps as `err` asks (or 2, 4, 8… s), and notes the wait.
    async fn wait_out(&mut self, err: &ConnectError, tries: u32) {
        let wait = err
            .retry_after()
            .unwrap_or(FIRST_WAIT * 2u32.pow(tries))
            .min(MAX_WAIT);
        let said = if err.retry_after().is_some() {
            "as Graph asked (Retry-After)"
        } else {
            "(no Retry-After; doubling)"
        };
        self.waits.push(format!(
            "{}, waited {} ms {said}: {}",
            err.code.as_deref().unwrap_or("throttled"),
            wait.as_millis(),
            err.message
        ));
        tracing::info!(wait_ms = wait.as_millis() as u64, error = %err, "Graph throttled; waiting");
        tokio::time::sleep(wait).await;
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        extra: &[(&str, String)],
        what: &str,
    ) -> Result<T> {
        let resp = self
            .call(hyper::Method::GET, path, None, extra, MAX_JSON, what)
            .await?;
        serde_json::from_slice(&resp.body).map_err(|e| {
            protocol(format!(
                "{what}: Graph's answer is not the expected JSON: {e}"
            ))
        })
    }

    /// A well-known folder (`inbox`, `sentitems`, …) or a folder by id.
    pub async fn folder_by_id(&mut self, id: &str) -> Result<MailFolder> {
        let path = format!(
            "{}/mailFolders/{}?$select=id,displayName",
            self.user_path,
            segment(id)
        );
        self.get_json(&path, &[], &format!("reading the folder {id}"))
            .await
    }

    /// The folder at `path` (display names separated by `/`; the first may be a well-known
    /// name such as `Inbox`), or `None`.
    pub async fn find_folder(&mut self, path: &str) -> Result<Option<MailFolder>> {
        #[derive(Deserialize)]
        struct List {
            value: Vec<MailFolder>,
        }
        let mut parent: Option<MailFolder> = None;
        for (i, name) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
            if i == 0
                && let Some(wk) = well_known(name)
            {
                parent = Some(self.folder_by_id(wk).await?);
                continue;
            }
            let filter = segment(&format!("displayName eq {}", literal(name)));
            let list = match &parent {
                None => format!("{}/mailFolders?$filter={filter}", self.user_path),
                Some(p) => format!(
                    "{}/mailFolders/{}/childFolders?$filter={filter}",
                    self.user_path,
                    segment(&p.id)
                ),
            };
            let found: List = self
                .get_json(&list, &[], &format!("looking up the folder {path}"))
                .await?;
            match found.value.into_iter().next() {
                Some(f) => parent = Some(f),
                None => return Ok(None),
            }
        }
        Ok(parent)
    }

    /// The top-level folder `name`, created when missing.
    pub async fn folder_or_create(&mut self, name: &str) -> Result<MailFolder> {
        if let Some(f) = self.find_folder(name).await? {
            return Ok(f);
        }
        let body = serde_json::json!({ "displayName": name }).to_string();
        let resp = self
            .call(
                hyper::Method::POST,
                &format!("{}/mailFolders", self.user_path),
                Some(("application/json", Bytes::from(body))),
                &[],
                MAX_JSON,
                &format!("creating the folder {name}"),
            )
            .await;
        match resp {
            Ok(r) => serde_json::from_slice(&r.body)
                .map_err(|e| protocol(format!("the created folder's answer: {e}"))),
            // Created meanwhile by someone else.
            Err(e) if e.message.contains("ErrorFolderExists") => self
                .find_folder(name)
                .await?
                .ok_or_else(|| protocol(format!("the folder {name} exists and cannot be found"))),
            Err(e) => Err(e),
        }
    }

    /// The first delta page of the folder with id `folder_id`.
    pub async fn delta_start(&mut self, folder_id: &str, page: u32) -> Result<DeltaPage> {
        let path = format!(
            "{}/mailFolders/{}/messages/delta?$select=id,internetMessageId,receivedDateTime",
            self.user_path,
            segment(folder_id)
        );
        self.delta_page(&path, page).await
    }

    /// The delta page at `link` (a next link or a delta link handed back before).
    pub async fn delta_from(&mut self, link: &str, page: u32) -> Result<DeltaPage> {
        let path = self.own_path(link)?;
        self.delta_page(&path, page).await
    }

    async fn delta_page(&mut self, path: &str, page: u32) -> Result<DeltaPage> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            value: Vec<serde_json::Value>,
            #[serde(rename = "@odata.nextLink")]
            next: Option<String>,
            #[serde(rename = "@odata.deltaLink")]
            delta: Option<String>,
        }
        let prefer = [("Prefer", format!("odata.maxpagesize={page}"))];
        let p: Page = self
            .get_json(path, &prefer, "reading the folder's changes")
            .await?;
        let messages = p
            .value
            .into_iter()
            .filter_map(|v| {
                let id = v.get("id")?.as_str()?.to_owned();
                Some(DeltaMessage {
                    id,
                    removed: v.get("@removed").is_some(),
                    internet_message_id: v
                        .get("internetMessageId")
                        .and_then(|m| m.as_str())
                        .map(str::to_owned),
                    received: v
                        .get("receivedDateTime")
                        .and_then(|d| d.as_str())
                        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                        .map(|d| d.with_timezone(&chrono::Utc)),
                })
            })
            .collect();
        let (link, more) = match (p.next, p.delta) {
            (Some(n), _) => (n, true),
            (None, Some(d)) => (d, false),
            (None, None) => {
                return Err(protocol(
                    "Microsoft Graph's delta page has neither a next link nor a delta link",
                ));
            }
        };
        // Checked now, so a foreign link is never stored as a cursor.
        self.own_path(&link)?;
        Ok(DeltaPage {
            messages,
            link,
            more,
        })
    }

    /// The message's MIME (`$value`), or `None` when it is gone.
    pub async fn mime(&mut self, id: &str) -> Result<Option<Vec<u8>>> {
        let path = format!("{}/messages/{}/$value", self.user_path, segment(id));
        match self
            .call(
                hyper::Method::GET,
                &path,
                None,
                &[],
                MAX_MIME,
                "reading a message",
            )
            .await
        {
            Ok(r) => Ok(Some(r.body.to_vec())),
            Err(e) if e.code.as_deref() == Some("item_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The MIME of up to [`MAX_BATCH`] messages in one `$batch` round trip (Graph sends the
    /// non-JSON `$value` bodies base64-encoded), in `ids`' order; `None` for a message gone.
    /// Messages the batch could not give (throttled or unavailable there, or a batch answer
    /// over [`MAX_BATCH_ANSWER`]) are read one by one with [`Self::mime`], which waits
    /// throttling out; any other refusal of an item is its error.
    pub async fn mime_batch(&mut self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        #[derive(serde::Deserialize)]
        struct Answer {
            responses: Vec<Item>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            id: String,
            status: u16,
            #[serde(default)]
            headers: HashMap<String, String>,
            #[serde(default)]
            body: serde_json::Value,
        }
        let user = self.user_path.trim_start_matches("/v1.0");
        let requests: Vec<serde_json::Value> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                serde_json::json!({
                    "id": n.to_string(),
                    "method": "GET",
                    "url": format!("{user}/messages/{}/$value", segment(id)),
                })
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "requests": requests }))
            .map_err(|e| protocol(format!("building a batch: {e}")))?;
        let what = "reading messages ($batch)";
        let answer = match self
            .call(
                hyper::Method::POST,
                "/v1.0/$batch",
                Some(("application/json", Bytes::from(body))),
                &[],
                MAX_BATCH_ANSWER,
                what,
            )
            .await
        {
            Ok(r) => serde_json::from_slice::<Answer>(&r.body).map_err(|e| {
                protocol(format!("{what}: Graph's answer is not a batch answer: {e}"))
            })?,
            Err(e) if e.code.as_deref() == Some(crate::https::TOO_LARGE) => Answer {
                responses: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        let mut out: Vec<Option<Option<Vec<u8>>>> = vec![None; ids.len()];
        for item in answer.responses {
            let Some(slot) = item.id.parse::<usize>().ok().and_then(|n| out.get_mut(n)) else {
                continue;
            };
            if (200..300).contains(&item.status) {
                // Not base64 text: read on its own below.
                let Some(text) = item.body.as_str() else {
                    continue;
                };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| {
                        protocol(format!("{what}: a message's body is not base64: {e}"))
                    })?;
                *slot = Some(Some(raw));
                continue;
            }
            let body = serde_json::to_vec(&item.body).unwrap_or_default();
            let retry = codes::retry_after(
                item.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .map(|(_, v)| v.as_str()),
            );
            let err = codes::classify(item.status, &body, retry, "reading a message");
            match err.code.as_deref() {
                Some("item_not_found") => *slot = Some(None),
                // Read again below, one by one, waiting as asked.
                _ if err.is_transient() => {}
                _ => return Err(err),
            }
        }
        let mut done = Vec::with_capacity(ids.len());
        for (id, got) in ids.iter().zip(out) {
            done.push(match got {
                Some(raw) => raw,
                None => self.mime(id).await?,
            });
        }
        Ok(done)
    }

    /// Moves message `id` to the folder `folder_id`.
    pub async fn move_message(&mut self, id: &str, folder_id: &str) -> Result<()> {
        let body = serde_json::json!({ "destinationId": folder_id }).to_string();
        let path = format!("{}/messages/{}/move", self.user_path, segment(id));
        match self
            .call(
                hyper::Method::POST,
                &path,
                Some(("application/json", Bytes::from(body))),
                &[],
                MAX_JSON,
                "moving a message",
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code.as_deref() == Some("item_not_found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether Sent Items holds a message with this Message-ID (`<…>`).
    pub async fn sent_contains(&mut self, message_id: &str) -> Result<bool> {
        #[derive(Deserialize)]
        struct List {
            value: Vec<serde_json::Value>,
        }
        let filter = segment(&format!("internetMessageId eq {}", literal(message_id)));
        let path = format!(
            "{}/mailFolders/sentitems/messages?$filter={filter}&$select=id",
            self.user_path
        );
        let list: List = self
            .get_json(&path, &[], "looking for the message in Sent Items")
            .await?;
        Ok(!list.value.is_empty())
    }

    /// Sends `mime` with `sendMail` in MIME form; Exchange Online keeps the copy in Sent
    /// Items. Throttling (429) is waited out up to [`THROTTLE_TRIES`] times: Graph refused
    /// the request, so repeating it sends once.
    pub async fn send_mime(&mut self, mime: &[u8]) -> SendOutcome {
        let body = Bytes::from(base64::engine::general_purpose::STANDARD.encode(mime));
        if body.len() > MAX_SEND {
            return SendOutcome::Refused(
                protocol(format!(
                    "the message is {} KB as base64, and Microsoft Graph takes at most 4 MB in \
                     one sendMail",
                    body.len() / 1024
                ))
                .with_code("too_large"),
            );
        }
        let path = format!("{}/sendMail", self.user_path);
        let mut tries = 0;
        loop {
            let resp = match self
                .once(
                    &hyper::Method::POST,
                    &path,
                    &Some(("text/plain", body.clone())),
                    &[],
                    MAX_JSON,
                    "sending the message",
                )
                .await
            {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.step,
                        FailureStep::Dns | FailureStep::TcpConnect | FailureStep::Tls
                    ) =>
                {
                    return SendOutcome::NotSent(e);
                }
                Err(e) => return SendOutcome::Unknown(e),
            };
            if (200..300).contains(&resp.status) {
                return SendOutcome::Sent;
            }
            let err = self.refusal(&resp, "sending the message");
            match resp.status {
                // Refused before anything was done.
                429 | 503 if tries < THROTTLE_TRIES => {
                    self.wait_out(&err, tries).await;
                    tries += 1;
                }
                401 => return SendOutcome::NotSent(err),
                400..=499 | 503 => return SendOutcome::Refused(err),
                // A gateway timeout or a failure may come after the work was done.
                _ => return SendOutcome::Unknown(err),
            }
        }
    }
}

impl GraphClient {
    /// Subscribes to new messages in the Inbox: Graph first checks `notification_url` (the
    /// validation handshake), then posts a notification there for every new message, with
    /// `client_state`; lifecycle events go to `lifecycle_url`.
    pub async fn subscribe(
        &mut self,
        notification_url: &str,
        lifecycle_url: &str,
        client_state: &str,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Result<Subscription> {
        let body = serde_json::json!({
            "changeType": "created",
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": format!("users/{}/mailFolders('inbox')/messages", self.graph.mailbox.trim()),
            "expirationDateTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "clientState": client_state,
        })
        .to_string();
        let resp = self
            .call(
                hyper::Method::POST,
                "/v1.0/subscriptions",
                Some(("application/json", Bytes::from(body))),
                &[],
                MAX_JSON,
                "subscribing to new mail",
            )
            .await?;
        subscription_answer(&resp.body)
    }

    /// Moves the subscription's end to `expires`; one Graph no longer has is `not_found`.
    pub async fn renew(
        &mut self,
        id: &str,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Result<Subscription> {
        let body = serde_json::json!({
            "expirationDateTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .to_string();
        let resp = self
            .call(
                hyper::Method::PATCH,
                &format!("/v1.0/subscriptions/{}", segment(id)),
                Some(("application/json", Bytes::from(body))),
                &[],
                MAX_JSON,
                "renewing the new-mail subscription",
            )
            .await?;
        subscription_answer(&resp.body)
    }
}

fn subscription_answer(body: &[u8]) -> Result<Subscription> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        id: String,
        expiration_date_time: String,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| {
        protocol(format!(
            "Graph's subscription answer is not as documented: {e}"
        ))
    })?;
    let expires = chrono::DateTime::parse_from_rfc3339(&a.expiration_date_time)
        .map_err(|e| protocol(format!("Graph's subscription expiry is not a date: {e}")))?
        .with_timezone(&chrono::Utc);
    Ok(Subscription { id: a.id, expires })
}

/// Graph's well-known folder name for a display name serversync uses, if any.
pub fn well_known(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase().replace(' ', "");
    Some(match n.as_str() {
        "inbox" => "inbox",
        "sentitems" | "sent" => "sentitems",
        "drafts" => "drafts",
        "deleteditems" => "deleteditems",
        "junkemail" | "junk" => "junkemail",
        "archive" => "archive",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_literals_are_escaped() {
        assert_eq!(segment("a.b+c@example.com"), "a.b%2Bc%40example.com");
        assert_eq!(segment("x y/z"), "x%20y%2Fz");
        assert_eq!(literal("O'Brien"), "'O''Brien'");
        assert_eq!(well_known("Sent Items"), Some("sentitems"));
        assert_eq!(well_known("INBOX"), Some("inbox"));
        assert_eq!(well_known("Projects"), None);
    }
}
