//! A CalDAV (RFC 4791) / CardDAV (RFC 6352) client on one kept-alive HTTP/1.1 connection
//! ([`crate::https::Conn`]: DNS, TCP and TLS fail as classified steps, the network policy is
//! checked on the resolved address), and its [`ItemStore`] implementation.
//!
//! - **Discovery:** the profile's URL may be a collection, a principal, a calendar/addressbook
//!   home or the server's root; from a root, `/.well-known/caldav` or `/.well-known/carddav`
//!   (RFC 6764) is followed (same origin only), then `current-user-principal`, then the
//!   `calendar-home-set` / `addressbook-home-set`, whose collections are listed. When the
//!   home has no collection for a kind, serversync makes one (`MKCOL`, RFC 5689).
//! - **Changes:** `sync-collection` (RFC 6578) with the collection's `sync-token`, ETags only,
//!   then `calendar-multiget` / `addressbook-multiget` for the changed resources, 100 at a time.
//!   A truncated answer (the collection's own `507`) is asked again from its new token until
//!   it is complete; a token the server no longer knows fails with `sync_token_invalid`, so
//!   the syncer starts over from nothing (matching by link, creating no duplicates).
//! - **Writes:** a new item is `PUT` to `<collection><uid>.ics|.vcf` with `If-None-Match: *`,
//!   so a create repeated after a timeout finds its own first attempt (a `Conflict` with the
//!   item) instead of making a second one; updates and deletes carry `If-Match` with the ETag
//!   they were based on. An update starts from the server's current text, so properties
//!   serversync does not map (alarms, `X-` properties, parameters) are kept.
//! - **Hostile answers:** bodies are bounded ([`MAX_ANSWER`]), XML goes through the bounded
//!   tree of [`crate::ews::xml`], calendar data through [`super::vobject`]'s limits; a
//!   resource that cannot be read is reported in [`ChangeSet::unreadable`], never dropped
//!   silently.

use super::mapping;
use crate::ews::xml::{Element, escape};
use crate::https::{Conn, Response, Target};
use crate::items::{ChangeSet, ItemStore, RemoteItem, Written};
use crate::login::Login;
use crate::probe::StepLog;
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serversync_model::sync::ServerTokenCursor;
use serversync_model::webhook::RecordType;
use std::collections::HashMap;

/// Largest answer read (a multiget of 100 resources, a sync report of a big collection).
pub const MAX_ANSWER: usize = 32 * 1024 * 1024;
/// How long a listing (`REPORT`, `PROPFIND`) may take at least, whatever the connection
/// timeout: its answer grows with the collection.
pub const LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Resources fetched per multiget.
pub const MULTIGET: usize = 100;
/// Truncated sync answers followed before the round stops (and resumes from the last token).
const MAX_PAGES: usize = 1000;

/// The error code of a sync token the server no longer accepts.
pub const SYNC_TOKEN_INVALID: &str = "sync_token_invalid";

/// What a collection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionKind {
    /// A CalDAV calendar (VEVENT and/or VTODO).
    Calendar,
    /// A CardDAV address book.
    AddressBook,
}

/// A collection found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// The collection's path, ending in `/`.
    pub href: String,
    pub kind: CollectionKind,
    pub display_name: Option<String>,
    /// For calendars: the component types it accepts (`VEVENT`, `VTODO`); empty when the
    /// server does not say (then it accepts all).
    pub components: Vec<String>,
}

impl Collection {
    /// Whether items of `kind` may be stored here.
    pub fn holds(&self, kind: RecordType) -> bool {
        let comp = match kind {
            RecordType::Appointment => "VEVENT",
            RecordType::Task => "VTODO",
            RecordType::Contact => return self.kind == CollectionKind::AddressBook,
            _ => return false,
        };
        self.kind == CollectionKind::Calendar
            && (self.components.is_empty() || self.components.iter().any(|c| c == comp))
    }
}

/// A DAV server signed in to (see the module documentation).
pub struct DavClient {
    target: Target,
    opts: ConnectOptions,
    conn: Option<Conn>,
    authorization: String,
    /// The text of the resources last read, by href, with their ETag: an update starts from
    /// it when the ETag still matches, without reading the resource again.
    texts: HashMap<String, (String, String)>,
    /// Requests sent, for tests and traces (by method).
    requests: HashMap<&'static str, u64>,
    /// What each known collection holds.
    kinds: HashMap<String, CollectionKind>,
}

fn protocol(msg: impl Into<String>) -> ConnectError {
    ConnectError::new(FailureStep::Protocol, ErrorKind::Permanent, msg)
}

/// The href with its percent-escapes decoded, so two spellings of one path compare equal.
fn normalize_href(href: &str) -> String {
    let path = match href.find("://") {
        Some(i) => href[i + 3..].find('/').map_or("/", |j| &href[i + 3 + j..]),
        None => href,
    };
    percent_decode(path)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path segment made safe for a URL (UIDs may hold `@`, `/`, spaces).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The status code of a `<status>HTTP/1.1 404 Not Found</status>`.
fn status_code(el: &Element) -> Option<u16> {
    el.text_of("status")
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
}

/// The `200` propstat's `prop` of a response, if any.
fn ok_prop(resp: &Element) -> Option<&Element> {
    resp.children_named("propstat")
        .find(|p| status_code(p).is_none_or(|c| (200..300).contains(&c)))
        .and_then(|p| p.child("prop"))
}

fn kind_of_text(text: &str) -> Option<RecordType> {
    if text.contains("BEGIN:VCARD") {
        Some(RecordType::Contact)
    } else if text.contains("BEGIN:VEVENT") {
        Some(RecordType::Appointment)
    } else if text.contains("BEGIN:VTODO") {
        Some(RecordType::Task)
    } else {
        None
    }
}

impl DavClient {
    /// Opens the connection to the server of `url` (DNS, TCP and TLS recorded in `log`).
    /// `login`: a password (HTTP Basic) or an OAuth token (Bearer).
    pub async fn connect(
        url: &str,
        login: &Login,
        opts: &ConnectOptions,
        log: &mut StepLog,
    ) -> Result<DavClient> {
        let target = Target::parse(url).map_err(|e| {
            ConnectError::new(FailureStep::Dns, ErrorKind::Config, e).with_code("invalid_dav_url")
        })?;
        let authorization = match login {
            Login::Password { username, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()))
            ),
            Login::XOAuth2 { access_token, .. } => format!("Bearer {}", access_token.expose()),
        };
        let conn = Conn::open(&target.addr, opts, log).await?;
        Ok(DavClient {
            target,
            opts: opts.clone(),
            conn: Some(conn),
            authorization,
            texts: HashMap::new(),
            requests: HashMap::new(),
            kinds: HashMap::new(),
        })
    }

    /// The path of the URL connected to.
    pub fn path(&self) -> &str {
        &self.target.path
    }

    /// How many requests of each method were sent so far.
    pub fn requests(&self) -> &HashMap<&'static str, u64> {
        &self.requests
    }

    async fn send(
        &mut self,
        method: &'static str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(&str, String)>,
        what: &str,
    ) -> Result<Response> {
        *self.requests.entry(method).or_default() += 1;
        if !self.conn.as_ref().is_some_and(Conn::is_open) {
            self.conn = None;
            self.conn = Some(Conn::open(&self.target.addr, &self.opts, &mut StepLog::new()).await?);
        }
        let mut b = hyper::Request::builder()
            .method(
                hyper::Method::from_bytes(method.as_bytes())
                    .map_err(|e| protocol(format!("{method}: {e}")))?,
            )
            .uri(path)
            .header("Host", &self.target.host_header)
            .header("Authorization", &self.authorization)
            .header(
                "User-Agent",
                concat!("serversync/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let body = match body {
            Some((ct, text)) => {
                b = b.header("Content-Type", ct);
                Bytes::from(text)
            }
            None => Bytes::new(),
        };
        let req = b
            .body(Full::new(body))
            .map_err(|e| protocol(format!("building the request for {what}: {e}")))?;
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| protocol("no connection"))?;
        // A listing's answer grows with the collection, and a server may build all of it
        // before the first byte (Radicale takes over 30 s for 10,000 items it has not cached).
        let timeout = if matches!(method, "REPORT" | "PROPFIND") {
            self.opts.timeout.max(LISTING_TIMEOUT)
        } else {
            self.opts.timeout
        };
        let r = conn.send_within(req, MAX_ANSWER, what, timeout).await;
        if r.is_err() {
            self.conn = None;
        }
        let r = r?;
        match r.status {
            401 => Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Auth,
                format!(
                    "the CalDAV/CardDAV server refused the sign-in ({what}): check the \
                     mailbox's user name and password"
                ),
            )
            .with_code("auth_failed")),
            429 | 503 => Err(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Transient,
                format!(
                    "the CalDAV/CardDAV server is busy ({} during {what}): trying again later",
                    r.status
                ),
            )
            .with_code("throttled")),
            500..=599 => Err(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Transient,
                format!(
                    "the CalDAV/CardDAV server failed ({} during {what}): {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).trim()
                ),
            )
            .with_code("server_error")),
            _ => Ok(r),
        }
    }

    fn refused(r: &Response, what: &str) -> ConnectError {
        let (step, kind, code) = match r.status {
            403 => (
                FailureStep::Permission,
                ErrorKind::Config,
                "permission_denied",
            ),
            404 | 410 => (FailureStep::Protocol, ErrorKind::Config, "not_found"),
            _ => (
                FailureStep::Protocol,
                ErrorKind::Permanent,
                "protocol_error",
            ),
        };
        ConnectError::new(
            step,
            kind,
            format!(
                "the CalDAV/CardDAV server answered {} to {what}: {}",
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).trim()
            ),
        )
        .with_code(code)
    }

    async fn propfind(&mut self, path: &str, depth: &str, props: &str) -> Result<Element> {
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav" xmlns:a="urn:ietf:params:xml:ns:carddav" xmlns:cs="http://calendarserver.org/ns/"><d:prop>{props}</d:prop></d:propfind>"#
        );
        let what = format!("PROPFIND {path}");
        let r = self
            .send(
                "PROPFIND",
                path,
                &[("Depth", depth.to_owned())],
                Some(("application/xml; charset=utf-8", body)),
                &what,
            )
            .await?;
        if r.status != 207 {
            return Err(Self::refused(&r, &what));
        }
        Element::parse(&r.body).map_err(|e| protocol(format!("the answer to {what}: {e}")))
    }

    /// The collections of `kind` the signed-in user has, found from the URL connected to
    /// (see the module documentation).
    pub async fn discover(&mut self, kind: CollectionKind) -> Result<Vec<Collection>> {
        const PROPS: &str = "<d:resourcetype/><d:displayname/><d:current-user-principal/>\
            <c:calendar-home-set/><a:addressbook-home-set/><c:supported-calendar-component-set/>";
        let mut start = self.target.path.clone();
        let mut root = self.propfind(&start, "0", PROPS).await;
        if matches!(&root, Err(e) if e.code.as_deref() == Some("not_found"))
            || root.as_ref().is_ok_and(|r| {
                r.find("current-user-principal")
                    .and_then(|p| p.find("href"))
                    .is_none()
                    && collection_of(r.child("response"), kind).is_none()
            })
        {
            // RFC 6764: the well-known URI redirects to the context path.
            let well_known = match kind {
                CollectionKind::Calendar => "/.well-known/caldav",
                CollectionKind::AddressBook => "/.well-known/carddav",
            };
            let r = self
                .send(
                    "PROPFIND",
                    well_known,
                    &[("Depth", "0".into())],
                    None,
                    well_known,
                )
                .await?;
            if matches!(r.status, 301 | 302 | 307 | 308)
                && let Some(loc) = r.header_values("location").first()
            {
                let origin = self.target.origin();
                let path = loc.strip_prefix(&origin).unwrap_or(loc);
                if !path.starts_with('/') {
                    return Err(protocol(format!(
                        "{well_known} points to {loc}, another server: refused"
                    )));
                }
                start = path.to_owned();
                root = self.propfind(&start, "0", PROPS).await;
            } else if r.status == 207 {
                start = well_known.to_owned();
                root = Element::parse(&r.body).map_err(protocol);
            }
        }
        let root = root?;
        if let Some(c) = collection_of(root.child("response"), kind) {
            self.set_collection_kind(&c.href, kind);
            return Ok(vec![c]);
        }
        let home_prop = match kind {
            CollectionKind::Calendar => "calendar-home-set",
            CollectionKind::AddressBook => "addressbook-home-set",
        };
        let mut home = root
            .find(home_prop)
            .and_then(|h| h.find("href"))
            .map(|h| normalize_href(h.text.trim()));
        if home.is_none() {
            let principal = root
                .find("current-user-principal")
                .and_then(|p| p.find("href"))
                .map(|h| normalize_href(h.text.trim()))
                .ok_or_else(|| {
                    protocol(format!(
                        "{start} names no current-user-principal: enter the URL of the \
                         calendar or address book in the profile"
                    ))
                    .with_code("dav_not_found")
                })?;
            let p = self.propfind(&principal, "0", PROPS).await?;
            home = p
                .find(home_prop)
                .and_then(|h| h.find("href"))
                .map(|h| normalize_href(h.text.trim()));
        }
        let home = home.ok_or_else(|| {
            protocol(format!(
                "the server names no {home_prop} for this user: enter the URL of the \
                 collection in the profile"
            ))
            .with_code("dav_not_found")
        })?;
        self.list_home(&home, kind).await
    }

    async fn list_home(&mut self, home: &str, kind: CollectionKind) -> Result<Vec<Collection>> {
        let listing = self
            .propfind(
                home,
                "1",
                "<d:resourcetype/><d:displayname/><c:supported-calendar-component-set/>",
            )
            .await?;
        let mut found: Vec<Collection> = listing
            .children_named("response")
            .filter_map(|r| collection_of(Some(r), kind))
            .collect();
        found.sort_by(|a, b| a.href.cmp(&b.href));
        if found.is_empty() {
            let made = self.make_collection(home, kind).await?;
            found.push(made);
        }
        for c in &found {
            self.set_collection_kind(&c.href, kind);
        }
        Ok(found)
    }

    /// Makes a collection for serversync under `home` (extended MKCOL, RFC 5689).
    async fn make_collection(&mut self, home: &str, kind: CollectionKind) -> Result<Collection> {
        let (name, rt) = match kind {
            CollectionKind::Calendar => ("serversync-calendar", "<c:calendar/>"),
            CollectionKind::AddressBook => ("serversync-contacts", "<a:addressbook/>"),
        };
        let href = format!("{}/{name}/", home.trim_end_matches('/'));
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><d:mkcol xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav" xmlns:a="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/>{rt}</d:resourcetype><d:displayname>CRM</d:displayname></d:prop></d:set></d:mkcol>"#
        );
        let what = format!("MKCOL {href}");
        let r = self
            .send(
                "MKCOL",
                &href,
                &[],
                Some(("application/xml; charset=utf-8", body)),
                &what,
            )
            .await?;
        if !(200..300).contains(&r.status) && r.status != 405 {
            return Err(Self::refused(&r, &what));
        }
        Ok(Collection {
            href,
            kind,
            display_name: Some("CRM".into()),
            components: Vec::new(),
        })
    }

    /// The text of resources `hrefs` of `collection`, by href (those the server no longer
    /// has are left out).
    async fn multiget(
        &mut self,
        collection: &str,
        hrefs: &[String],
    ) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::with_capacity(hrefs.len());
        let card = match self.kinds.get(&normalize_href(collection)) {
            Some(k) => *k == CollectionKind::AddressBook,
            None => hrefs.iter().any(|h| h.ends_with(".vcf")),
        };
        for chunk in hrefs.chunks(MULTIGET) {
            let list: String = chunk
                .iter()
                .map(|h| format!("<d:href>{}</d:href>", escape(h)))
                .collect();
            let body = if card {
                format!(
                    r#"<?xml version="1.0" encoding="utf-8"?><a:addressbook-multiget xmlns:d="DAV:" xmlns:a="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><a:address-data/></d:prop>{list}</a:addressbook-multiget>"#
                )
            } else {
                format!(
                    r#"<?xml version="1.0" encoding="utf-8"?><c:calendar-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><c:calendar-data/></d:prop>{list}</c:calendar-multiget>"#
                )
            };
            let what = format!("REPORT multiget {collection}");
            let r = self
                .send(
                    "REPORT",
                    collection,
                    &[("Depth", "1".into())],
                    Some(("application/xml; charset=utf-8", body)),
                    &what,
                )
                .await?;
            if r.status != 207 {
                return Err(Self::refused(&r, &what));
            }
            let ms = Element::parse(&r.body)
                .map_err(|e| protocol(format!("the answer to {what}: {e}")))?;
            for resp in ms.children_named("response") {
                let Some(href) = resp.text_of("href").map(|h| normalize_href(h.trim())) else {
                    continue;
                };
                let Some(prop) = ok_prop(resp) else { continue };
                let etag = prop
                    .text_of("getetag")
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let data = prop
                    .child("calendar-data")
                    .or_else(|| prop.child("address-data"))
                    .map(|d| d.text.clone());
                if let Some(data) = data {
                    out.push((href, etag, data));
                }
            }
        }
        Ok(out)
    }

    /// Says what `collection` holds (discovery does it for the collections it finds), so its
    /// resources are read with the right multiget.
    pub fn set_collection_kind(&mut self, collection: &str, kind: CollectionKind) {
        self.kinds.insert(normalize_href(collection), kind);
    }

    fn item(
        &mut self,
        href: &str,
        etag: &str,
        text: &str,
    ) -> std::result::Result<RemoteItem, String> {
        let kind = kind_of_text(text).ok_or("neither a VEVENT, a VTODO nor a VCARD")?;
        let values = mapping::to_values(kind, text).map_err(|e| e.to_string())?;
        self.texts
            .insert(href.to_owned(), (etag.to_owned(), text.to_owned()));
        Ok(RemoteItem {
            id: href.to_owned(),
            version: etag.to_owned(),
            kind,
            values,
        })
    }

    /// One resource's current state (`None`: gone).
    async fn fetch(&mut self, href: &str) -> Result<Option<RemoteItem>> {
        let what = format!("GET {href}");
        let r = self.send("GET", href, &[], None, &what).await?;
        if matches!(r.status, 404 | 410) {
            return Ok(None);
        }
        if r.status != 200 {
            return Err(Self::refused(&r, &what));
        }
        let etag = r.header_values("etag").first().cloned().unwrap_or_default();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        self.item(href, &etag, &text).map(Some).map_err(|e| {
            protocol(format!("{href} cannot be read: {e}")).with_code("unreadable_item")
        })
    }

    /// After a write: the new ETag (from the answer, else read back).
    async fn written(&mut self, href: &str, r: &Response, text: String) -> Result<Written> {
        let etag = match r.header_values("etag").first() {
            Some(e) => e.clone(),
            None => match self.fetch(href).await? {
                Some(item) => {
                    return Ok(Written::Done {
                        id: item.id,
                        version: item.version,
                    });
                }
                None => return Ok(Written::Gone),
            },
        };
        self.texts.insert(href.to_owned(), (etag.clone(), text));
        Ok(Written::Done {
            id: href.to_owned(),
            version: etag,
        })
    }

    async fn conflict_or_gone(&mut self, href: &str) -> Result<Written> {
        Ok(match self.fetch(href).await? {
            Some(current) => Written::Conflict { current },
            None => Written::Gone,
        })
    }
}

/// The collection a PROPFIND `<response>` describes, if it is one of `kind`.
fn collection_of(resp: Option<&Element>, kind: CollectionKind) -> Option<Collection> {
    let resp = resp?;
    let prop = ok_prop(resp)?;
    let rt = prop.child("resourcetype")?;
    let is = match kind {
        CollectionKind::Calendar => rt.child("calendar").is_some(),
        CollectionKind::AddressBook => rt.child("addressbook").is_some(),
    };
    if !is {
        return None;
    }
    let mut href = normalize_href(resp.text_of("href")?.trim());
    if !href.ends_with('/') {
        href.push('/');
    }
    Some(Collection {
        href,
        kind,
        display_name: prop
            .text_of("displayname")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        components: prop
            .child("supported-calendar-component-set")
            .map(|s| {
                s.children_named("comp")
                    .filter_map(|c| c.attr("name").map(str::to_uppercase))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

impl ItemStore for DavClient {
    async fn changes(
        &mut self,
        collection: &str,
        since: Option<&ServerTokenCursor>,
    ) -> Result<ChangeSet> {
        let mut token = since.map(|t| t.token.clone());
        let mut set = ChangeSet::default();
        let mut changed: Vec<(String, String)> = Vec::new();
        let own = normalize_href(collection);
        for _ in 0..MAX_PAGES {
            let body = format!(
                r#"<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:"><d:sync-token>{}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#,
                escape(token.as_deref().unwrap_or(""))
            );
            let what = format!("REPORT sync-collection {collection}");
            let r = self
                .send(
                    "REPORT",
                    collection,
                    &[("Depth", "0".into())],
                    Some(("application/xml; charset=utf-8", body)),
                    &what,
                )
                .await?;
            if matches!(r.status, 403 | 409)
                && String::from_utf8_lossy(&r.body).contains("valid-sync-token")
            {
                return Err(protocol(format!(
                    "the server no longer accepts the sync token of {collection}: \
                     synchronizing the collection from the start"
                ))
                .with_code(SYNC_TOKEN_INVALID));
            }
            if r.status != 207 {
                return Err(Self::refused(&r, &what));
            }
            let ms = Element::parse(&r.body)
                .map_err(|e| protocol(format!("the answer to {what}: {e}")))?;
            let mut truncated = false;
            let mut page_items = 0;
            for resp in ms.children_named("response") {
                let Some(href) = resp.text_of("href").map(|h| normalize_href(h.trim())) else {
                    continue;
                };
                let status = status_code(resp);
                if href.trim_end_matches('/') == own.trim_end_matches('/') {
                    // RFC 6578 §3.6: the collection itself with 507 marks a truncated answer
                    // (some servers list the collection among the changes: skipped).
                    truncated |= status == Some(507);
                    continue;
                }
                page_items += 1;
                if matches!(status, Some(404 | 410)) {
                    changed.retain(|(h, _)| *h != href);
                    set.deleted.push(href);
                    continue;
                }
                let etag = ok_prop(resp)
                    .and_then(|p| p.text_of("getetag"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                set.deleted.retain(|h| *h != href);
                changed.retain(|(h, _)| *h != href);
                changed.push((href, etag));
            }
            let next = ms
                .text_of("sync-token")
                .map(|t| t.trim().to_owned())
                .ok_or_else(|| protocol(format!("the answer to {what} has no sync-token")))?;
            let advanced = token.as_deref() != Some(next.as_str());
            token = Some(next);
            if !truncated || page_items == 0 || !advanced {
                break;
            }
        }
        let hrefs: Vec<String> = changed.iter().map(|(h, _)| h.clone()).collect();
        let texts = self.multiget(collection, &hrefs).await?;
        let mut by_href: HashMap<String, (String, String)> =
            texts.into_iter().map(|(h, e, t)| (h, (e, t))).collect();
        for (href, etag) in changed {
            // Gone between the sync report and the multiget: the next round reports it.
            let Some((got_etag, text)) = by_href.remove(&href) else {
                continue;
            };
            let etag = if got_etag.is_empty() { etag } else { got_etag };
            match self.item(&href, &etag, &text) {
                Ok(item) => set.changed.push(item),
                Err(why) => set.unreadable.push((href, why)),
            }
        }
        set.next = token.map(|token| ServerTokenCursor { token });
        Ok(set)
    }

    async fn get(&mut self, _collection: &str, id: &str) -> Result<Option<RemoteItem>> {
        self.fetch(id).await
    }

    async fn create(
        &mut self,
        collection: &str,
        kind: RecordType,
        values: &serde_json::Value,
    ) -> Result<Written> {
        let uid = values["uid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| protocol("an item to create needs a uid"))?;
        let ext = if kind == RecordType::Contact {
            "vcf"
        } else {
            "ics"
        };
        let href = format!(
            "{}/{}.{ext}",
            collection.trim_end_matches('/'),
            segment(uid)
        );
        let text = mapping::from_values(kind, values, None)
            .map_err(|e| protocol(e.to_string()).with_code(crate::items::UNMAPPABLE_VALUES))?;
        let ct = if kind == RecordType::Contact {
            "text/vcard; charset=utf-8"
        } else {
            "text/calendar; charset=utf-8"
        };
        let what = format!("PUT {href}");
        let r = self
            .send(
                "PUT",
                &href,
                &[("If-None-Match", "*".into())],
                Some((ct, text.clone())),
                &what,
            )
            .await?;
        match r.status {
            200..=299 => self.written(&href, &r, text).await,
            // Made before (a create repeated after a timeout, or the UID is taken).
            412 => self.conflict_or_gone(&href).await,
            _ => Err(Self::refused(&r, &what)),
        }
    }

    async fn update(
        &mut self,
        _collection: &str,
        id: &str,
        if_version: &str,
        values: &serde_json::Value,
    ) -> Result<Written> {
        let existing = match self.texts.get(id) {
            Some((etag, text)) if etag == if_version => text.clone(),
            _ => match self.fetch(id).await? {
                Some(item) if item.version == if_version => self
                    .texts
                    .get(id)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default(),
                Some(current) => return Ok(Written::Conflict { current }),
                None => return Ok(Written::Gone),
            },
        };
        let kind = kind_of_text(&existing)
            .ok_or_else(|| protocol(format!("{id} is neither a VEVENT, a VTODO nor a VCARD")))?;
        let text = mapping::from_values(kind, values, Some(&existing))
            .map_err(|e| protocol(e.to_string()).with_code(crate::items::UNMAPPABLE_VALUES))?;
        let ct = if kind == RecordType::Contact {
            "text/vcard; charset=utf-8"
        } else {
            "text/calendar; charset=utf-8"
        };
        let what = format!("PUT {id}");
        let r = self
            .send(
                "PUT",
                id,
                &[("If-Match", if_version.to_owned())],
                Some((ct, text.clone())),
                &what,
            )
            .await?;
        match r.status {
            200..=299 => self.written(id, &r, text).await,
            412 => self.conflict_or_gone(id).await,
            404 | 410 => Ok(Written::Gone),
            _ => Err(Self::refused(&r, &what)),
        }
    }

    async fn delete(&mut self, _collection: &str, id: &str, if_version: &str) -> Result<Written> {
        let what = format!("DELETE {id}");
        let r = self
            .send(
                "DELETE",
                id,
                &[("If-Match", if_version.to_owned())],
                None,
                &what,
            )
            .await?;
        match r.status {
            200..=299 => {
                self.texts.remove(id);
                Ok(Written::Done {
                    id: id.to_owned(),
                    version: String::new(),
                })
            }
            412 => self.conflict_or_gone(id).await,
            404 | 410 => Ok(Written::Gone),
            _ => Err(Self::refused(&r, &what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_compare_decoded_and_without_origin() {
        assert_eq!(normalize_href("/a%40b/c.ics"), "/a@b/c.ics");
        assert_eq!(normalize_href("http://h:1/x/y/"), "/x/y/");
        assert_eq!(normalize_href("/bad%zz"), "/bad%zz");
        assert_eq!(segment("a b/c@d"), "a%20b%2Fc@d");
    }

    /// A server that answers every request after `delay`: a sync report of 207 with one item,
    /// anything else 404.
    async fn slow_server(delay: std::time::Duration) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + length {
                            continue;
                        }
                        let report = text.starts_with("REPORT");
                        buf.clear();
                        tokio::time::sleep(delay).await;
                        let (status, body) = if report {
                            (
                                "207 Multi-Status",
                                "<?xml version=\"1.0\"?><d:multistatus xmlns:d=\"DAV:\"><d:response><d:href>/c/a.vcf</d:href><d:propstat><d:prop><d:getetag>\"1\"</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response><d:sync-token>t1</d:sync-token></d:multistatus>",
                            )
                        } else {
                            ("404 Not Found", "")
                        };
                        let answer = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A listing may take longer than the connection timeout (its answer grows with the
    /// collection); a single item's request may not.
    #[tokio::test]
    async fn listings_get_longer_than_the_connection_timeout() {
        let addr = slow_server(std::time::Duration::from_millis(1500)).await;
        let opts =
            ConnectOptions::new(std::sync::Arc::new(crate::TlsTrust::system_only().unwrap()))
                .with_policy(crate::NetworkPolicy::loopback_allowed())
                .with_timeout(std::time::Duration::from_secs(1));
        let login = Login::password("u", crate::Secret::new("p"));
        let url = format!("http://{addr}/c/");
        let mut c = DavClient::connect(&url, &login, &opts, &mut StepLog::new())
            .await
            .unwrap();
        let set = c.changes("/c/", None).await;
        assert!(set.is_ok(), "the sync report waited: {set:?}");
        let e = c.get("/c/", "/c/a.vcf").await.unwrap_err();
        assert!(e.message.contains("no answer to"), "{e:?}");
    }
}
