//! Exchange Web Services (EWS): SOAP 1.1 over HTTPS to Exchange Server 2013 SP1 and newer.
//!
//! - [`http`]: one HTTP/1.1 connection on our own classified DNS → TCP → TLS steps.
//! - [`EwsClient`]: signs in (Basic, NTLMv2 with the TLS channel binding, or an OAuth bearer
//!   token; "auto-detect" picks from the server's `WWW-Authenticate` in a fixed order), sends
//!   each operation in an envelope with `RequestServerVersion Exchange2013_SP1`, the
//!   `ExchangeImpersonation` header and `X-AnchorMailbox` when it acts for another mailbox,
//!   reads the server's `ServerVersionInfo` from every answer, and turns HTTP statuses, SOAP
//!   faults and `ResponseCode`s into [`ConnectError`]s ([`codes`]).
//! - [`ops`]: the operations serversync sends, as typed requests and answers.
//! - [`autodiscover`]: finding the EWS URL of a mailbox (POX, then SOAP `GetUserSettings`).
//!
//! Hand-written on quick-xml rather than the `ews` crate (thunderbird/ews-rs): that crate's
//! SOAP header type cannot carry `ExchangeImpersonation`, and it has no notifications,
//! `ConvertId` or Autodiscover (see ARCHITECTURE.md).

pub mod autodiscover;
pub mod codes;
pub mod events;
pub mod items;
pub mod occurrences;
pub mod ops;
pub mod probe;
pub mod xml;

use crate::https::{self as http, Conn, Target};
use crate::ntlm::{self, ChannelBinding, NtlmIdentity};
use crate::probe::StepLog;
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Login, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::Full;
use serversync_model::profile::{AuthProtocol, ExchangeVersion};
use std::time::Duration;
use xml::Element;

/// The schema version every request asks for.
pub const REQUEST_SERVER_VERSION: &str = "Exchange2013_SP1";
/// The largest answer read (a page of messages with their MIME content).
pub const MAX_ANSWER: usize = 160 * 1024 * 1024;
const TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
const MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const AUTODISCOVER_ACTIONS: &str =
    "http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover";
/// The workstation name NTLM announces.
const WORKSTATION: &str = "SERVERSYNC";

/// Whose mailbox the requests act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acting {
    /// The signed-in account's own mailbox.
    Own,
    /// Another mailbox, through the `ExchangeImpersonation` header (the service account holds
    /// the ApplicationImpersonation role).
    Impersonate(String),
    /// Another mailbox the account has full access to (delegate access: folders are named
    /// with the mailbox's address).
    Delegate(String),
}

impl Acting {
    /// The mailbox's address, when it is not the account's own.
    pub fn mailbox(&self) -> Option<&str> {
        match self {
            Acting::Own => None,
            Acting::Impersonate(m) | Acting::Delegate(m) => Some(m),
        }
    }
}

/// The HTTP authentication scheme a client signs in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    Ntlm,
    /// NTLM tokens under the `Negotiate` scheme (SPNEGO accepts a raw NTLM token).
    Negotiate,
    Bearer,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Basic => "Basic",
            Scheme::Ntlm => "NTLM",
            Scheme::Negotiate => "Negotiate",
            Scheme::Bearer => "Bearer",
        }
    }
}

/// How to reach and sign in to an EWS endpoint.
#[derive(Debug, Clone)]
pub struct EwsSettings {
    /// `https://mail.contoso.com/EWS/Exchange.asmx`.
    pub url: String,
    pub protocol: AuthProtocol,
    /// A password (Basic, NTLM) or an OAuth access token (bearer).
    pub login: Login,
    pub acting: Acting,
    /// SHA-256 fingerprints of certificates accepted as they are (the profile's pins).
    pub pinned: Vec<String>,
}

/// What the server says it is (`ServerVersionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub major_build: u32,
    pub minor_build: u32,
    /// The schema name (`Exchange2016`, or Exchange Online's `V2018_01_08`).
    pub version: String,
}

impl ServerVersion {
    fn read(header: &Element) -> Option<ServerVersion> {
        let info = header.find("ServerVersionInfo")?;
        let num = |n: &str| {
            info.attr(n)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Some(ServerVersion {
            major: num("MajorVersion"),
            minor: num("MinorVersion"),
            major_build: num("MajorBuildNumber"),
            minor_build: num("MinorBuildNumber"),
            version: info.attr("Version").unwrap_or_default().to_owned(),
        })
    }

    /// The product, from the version numbers (Exchange Online reports 15.20 and later, and
    /// a `V…` schema name; it counts as the newest).
    pub fn product(&self) -> ExchangeVersion {
        use ExchangeVersion::*;
        match (self.major, self.minor) {
            (0..=6, _) => Exchange2003,
            (7..=8, _) => Exchange2007,
            (14, 0..=2) => Exchange2010,
            (9..=14, _) => Exchange2010Sp3,
            (15, 0) if self.major_build >= 847 => Exchange2013Sp1,
            (15, 0) => Exchange2013,
            (15, 1) => Exchange2016,
            // Subscription Edition is 15.2 from build 2562.
            (15, 2) if self.major_build >= 2562 => ExchangeSubscriptionEdition,
            (15, 2) => Exchange2019,
            _ => ExchangeSubscriptionEdition,
        }
    }

    /// `Exchange 2019 (15.2.1544.4, Exchange2016)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}.{}.{}.{}{})",
            serversync_model::wire_name(&self.product()),
            self.major,
            self.minor,
            self.major_build,
            self.minor_build,
            if self.version.is_empty() {
                String::new()
            } else {
                format!(", {}", self.version)
            }
        )
    }
}

/// The answer to one operation: the element inside `soap:Body`.
#[derive(Debug)]
pub struct Answer {
    pub body: Element,
}

impl Answer {
    /// The `…ResponseMessage` elements, in request order.
    pub fn messages(&self) -> Vec<&Element> {
        self.body
            .child("ResponseMessages")
            .map(|m| m.children.iter().collect())
            .unwrap_or_default()
    }
}

/// The outcome of one response message: `Ok` for `Success` (and `Warning`), the failure
/// otherwise.
pub fn check(msg: &Element, what: &str) -> Result<()> {
    if msg.attr("ResponseClass") != Some("Error") {
        return Ok(());
    }
    let code = msg.text_of("ResponseCode").unwrap_or("ErrorUnknown");
    let text = msg.text_of("MessageText").unwrap_or_default();
    Err(codes::failure(what, code, text, back_off(msg)))
}

/// `BackOffMilliseconds` from a `MessageXml` (throttling).
fn back_off(el: &Element) -> Option<Duration> {
    let xml = el.find("MessageXml")?;
    xml.children
        .iter()
        .find(|v| v.attr("Name") == Some("BackOffMilliseconds") || v.name == "BackOffMilliseconds")
        .and_then(|v| v.text.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// What became of a request that may change something (sending): the caller must not
/// repeat one that may have been carried out.
#[derive(Debug)]
pub enum Sent {
    /// It never reached the server, or the server refused the sign-in: nothing happened.
    NotSent(ConnectError),
    /// The server answered (a result, or a refusal it gave before doing anything).
    Answered(Result<Answer>),
    /// It was handed over and no clear answer came back: it may have been carried out.
    NoAnswer(ConnectError),
}

/// Connects to `target`'s EWS (its URL, or the one Autodiscover finds) as `login`.
pub async fn open(
    target: &crate::server::EwsTarget,
    login: &Login,
    opts: &ConnectOptions,
) -> Result<EwsClient> {
    let url = match &target.url {
        Some(u) => u.clone(),
        None => {
            autodiscover::discover(
                &target.email,
                &target.settings("", login),
                opts,
                target.autodiscover,
            )
            .await
            .map_err(|(e, _)| e)?
            .ews_url
        }
    };
    EwsClient::connect(target.settings(&url, login), opts, &mut StepLog::new()).await
}

/// A signed-in EWS connection acting on one mailbox.
pub struct EwsClient {
    target: Target,
    settings: EwsSettings,
    opts: ConnectOptions,
    conn: Option<Conn>,
    /// The connection is authenticated (NTLM authenticates the connection, not requests).
    conn_authenticated: bool,
    scheme: Option<Scheme>,
    server: Option<ServerVersion>,
    /// Extra request headers the server asked to be echoed (`X-BackEndOverrideCookie`).
    affinity_cookie: Option<String>,
}

impl std::fmt::Debug for EwsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EwsClient")
            .field("url", &self.target.url())
            .field("acting", &self.settings.acting)
            .field("scheme", &self.scheme)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl EwsClient {
    /// Opens the connection (DNS, TCP and TLS recorded in `log`); signing in happens with the
    /// first request.
    pub async fn connect(
        settings: EwsSettings,
        opts: &ConnectOptions,
        log: &mut StepLog,
    ) -> Result<EwsClient> {
        let mut target = Target::parse(&settings.url).map_err(|e| {
            ConnectError::new(
                FailureStep::Dns,
                ErrorKind::Config,
                format!("{e}: enter the EWS URL, e.g. https://mail.contoso.com/EWS/Exchange.asmx"),
            )
            .with_code("invalid_ews_url")
        })?;
        target.addr = target.addr.with_pinned(settings.pinned.clone());
        let conn = Conn::open(&target.addr, opts, log).await?;
        Ok(EwsClient {
            target,
            settings,
            opts: opts.clone(),
            conn: Some(conn),
            conn_authenticated: false,
            scheme: None,
            server: None,
            affinity_cookie: None,
        })
    }

    /// The server's version, from the last answer.
    pub fn server_version(&self) -> Option<&ServerVersion> {
        self.server.as_ref()
    }

    /// The scheme the client signed in with.
    pub fn scheme(&self) -> Option<Scheme> {
        self.scheme
    }

    /// The endpoint's URL.
    pub fn url(&self) -> String {
        self.target.url()
    }

    /// Whose mailbox the client acts on.
    pub fn acting(&self) -> &Acting {
        &self.settings.acting
    }

    /// Sends operation `op` (its element as XML) and returns the answer; a SOAP fault, an
    /// HTTP error or a refused sign-in is the error.
    pub async fn call(&mut self, op: &str, body: &str) -> Result<Answer> {
        let acting = self.settings.acting.clone();
        self.call_acting(&acting, op, body).await
    }

    async fn call_acting(&mut self, acting: &Acting, op: &str, body: &str) -> Result<Answer> {
        let resp = self
            .exchange(op, Bytes::from(envelope(acting, body)), false)
            .await?;
        self.answer(op, resp)
    }

    /// Sends operation `op`, telling apart what was certainly not done from what may have
    /// been (see [`Sent`]).
    pub async fn send_operation(&mut self, op: &str, body: &str) -> Sent {
        let envelope = Bytes::from(envelope(&self.settings.acting, body));
        let resp = match self.exchange(op, envelope, false).await {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.step,
                    FailureStep::Dns
                        | FailureStep::TcpConnect
                        | FailureStep::Tls
                        | FailureStep::Authentication
                ) =>
            {
                return Sent::NotSent(e);
            }
            Err(e) => return Sent::NoAnswer(e),
        };
        let faulted = resp.status == 500
            && Element::parse(&resp.body).is_ok_and(|env| env.find("Fault").is_some());
        match resp.status {
            200 | 403 | 404 | 429 | 503 => Sent::Answered(self.answer(op, resp)),
            500 if faulted => Sent::Answered(self.answer(op, resp)),
            s if s >= 500 => Sent::NoAnswer(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Transient,
                format!("Exchange answered {op} with HTTP {s} without saying what it did"),
            )),
            _ => Sent::Answered(self.answer(op, resp)),
        }
    }

    /// Like [`EwsClient::call`], as the signed-in account itself (no impersonation header):
    /// the probe's sign-in step, which must not depend on the mailbox.
    pub async fn call_as_account(&mut self, op: &str, body: &str) -> Result<Answer> {
        self.call_acting(&Acting::Own, op, body).await
    }

    /// Posts `body` as it is (Autodiscover), signing in as for EWS; the raw response.
    pub(crate) async fn post(&mut self, what: &str, body: String) -> Result<http::Response> {
        self.exchange(what, Bytes::from(body), false).await
    }

    /// Like [`EwsClient::call`], the answer's body arriving piece by piece (streaming
    /// notifications); the head is checked like any other answer.
    pub async fn call_streaming(
        &mut self,
        op: &str,
        body: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let envelope = Bytes::from(envelope(&self.settings.acting, body));
        let req = self.request(op, envelope, self.auth_header_for_known_scheme()?)?;
        self.reconnect_if_closed().await?;
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        let resp = conn.send_streaming(req, op).await?;
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            return Err(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Transient,
                format!("Exchange answered {op} with HTTP {status}"),
            ));
        }
        Ok(resp)
    }

    /// The `Authorization` of a request on a connection already signed in: Basic and Bearer
    /// sign every request; NTLM signed the connection.
    fn auth_header_for_known_scheme(&self) -> Result<Option<String>> {
        match self.scheme {
            Some(s @ (Scheme::Basic | Scheme::Bearer)) => self.simple_auth(s).map(Some),
            _ => Ok(None),
        }
    }

    async fn reconnect_if_closed(&mut self) -> Result<()> {
        if self.conn.as_ref().is_some_and(Conn::is_open) {
            return Ok(());
        }
        let mut log = StepLog::new();
        self.conn = Some(Conn::open(&self.target.addr, &self.opts, &mut log).await?);
        self.conn_authenticated = false;
        Ok(())
    }

    fn request(
        &self,
        op: &str,
        body: Bytes,
        authorization: Option<String>,
    ) -> Result<hyper::Request<Full<Bytes>>> {
        let mut b = hyper::Request::post(self.target.path.as_str())
            .header(hyper::header::HOST, self.target.host_header.as_str())
            .header(hyper::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header(
                hyper::header::USER_AGENT,
                concat!("serversync/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                "SOAPAction",
                match op {
                    "GetUserSettings" => format!("\"{AUTODISCOVER_ACTIONS}/{op}\""),
                    _ => format!("\"{MESSAGES}/{op}\""),
                },
            )
            .header(hyper::header::ACCEPT, "text/xml");
        if let Some(m) = self.settings.acting.mailbox() {
            b = b.header("X-AnchorMailbox", m);
        }
        if op == "Subscribe" || op == "GetStreamingEvents" {
            b = b.header("X-PreferServerAffinity", "true");
            if let Some(c) = &self.affinity_cookie {
                b = b.header("Cookie", c.as_str());
            }
        }
        if let Some(a) = authorization {
            b = b.header(hyper::header::AUTHORIZATION, a);
        }
        b.body(Full::new(body)).map_err(|e| {
            ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Config,
                format!("cannot build the {op} request: {e}"),
            )
        })
    }

    fn simple_auth(&self, scheme: Scheme) -> Result<String> {
        match (scheme, &self.settings.login) {
            (Scheme::Basic, Login::Password { username, password }) => Ok(format!(
                "Basic {}",
                B64.encode(format!("{username}:{}", password.expose()))
            )),
            (Scheme::Bearer, Login::XOAuth2 { access_token, .. }) => {
                Ok(format!("Bearer {}", access_token.expose()))
            }
            (s, _) => Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                format!(
                    "{} authentication needs {}: check the profile's authentication settings",
                    s.name(),
                    if s == Scheme::Bearer {
                        "an OAuth access token"
                    } else {
                        "a user name and password"
                    }
                ),
            )),
        }
    }

    /// Sends `body` as `op`, signing in as needed; the response of the last leg.
    async fn exchange(&mut self, op: &str, body: Bytes, retried: bool) -> Result<http::Response> {
        self.reconnect_if_closed().await?;
        let scheme = match self.scheme {
            Some(s) => s,
            None => self.choose_scheme(op, &body).await?,
        };
        let resp = match scheme {
            Scheme::Basic | Scheme::Bearer => {
                let auth = self.simple_auth(scheme)?;
                let req = self.request(op, body.clone(), Some(auth))?;
                self.send(req, op).await?
            }
            Scheme::Ntlm | Scheme::Negotiate if self.conn_authenticated => {
                let req = self.request(op, body.clone(), None)?;
                self.send(req, op).await?
            }
            Scheme::Ntlm | Scheme::Negotiate => self.ntlm(scheme, op, &body).await?,
        };
        if resp.status == 401 && self.conn_authenticated && !retried {
            // The server forgot the connection's sign-in (a new back end): sign in again.
            self.conn_authenticated = false;
            return Box::pin(self.exchange(op, body, true)).await;
        }
        if resp.status == 401 {
            return Err(self.refused_sign_in(scheme, &resp));
        }
        self.scheme = Some(scheme);
        if let Some(c) = resp
            .header_values("set-cookie")
            .into_iter()
            .find(|c| c.starts_with("X-BackEndOverrideCookie="))
        {
            self.affinity_cookie = c.split(';').next().map(str::to_owned);
        }
        Ok(resp)
    }

    async fn send(&mut self, req: hyper::Request<Full<Bytes>>, op: &str) -> Result<http::Response> {
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        conn.send(req, MAX_ANSWER, op).await
    }

    /// Auto-detect: what the configured protocol names, or for auto-detect the first of
    /// NTLM, Negotiate and Basic (Bearer for a token) that the server's `WWW-Authenticate`
    /// offers, asked with an unauthenticated request.
    async fn choose_scheme(&mut self, op: &str, body: &Bytes) -> Result<Scheme> {
        let token = matches!(self.settings.login, Login::XOAuth2 { .. });
        let fixed = match self.settings.protocol {
            AuthProtocol::Basic => Some(Scheme::Basic),
            AuthProtocol::Ntlm => Some(Scheme::Ntlm),
            AuthProtocol::Negotiate => Some(Scheme::Negotiate),
            AuthProtocol::OAuth => Some(Scheme::Bearer),
            AuthProtocol::AutoDetect if token => Some(Scheme::Bearer),
            AuthProtocol::AutoDetect => None,
        };
        if let Some(s) = fixed {
            self.refuse_ntlm_in_fips(s)?;
            return Ok(s);
        }
        let req = self.request(op, body.clone(), None)?;
        let resp = self.send(req, op).await?;
        let offered = offered_schemes(&resp);
        let order: &[Scheme] = if self.opts.policy.fips() {
            &[Scheme::Basic]
        } else {
            &[Scheme::Ntlm, Scheme::Negotiate, Scheme::Basic]
        };
        if resp.status != 401 {
            // No sign-in asked for: keep Basic for the following requests.
            return Ok(Scheme::Basic);
        }
        order
            .iter()
            .copied()
            .find(|s| offered.iter().any(|o| o.eq_ignore_ascii_case(s.name())))
            .ok_or_else(|| {
                ConnectError::new(
                    FailureStep::Authentication,
                    ErrorKind::Config,
                    format!(
                        "the server offers {} and serversync signs in with {}: turn on Basic or \
                         NTLM (Windows authentication) for EWS on the server, or choose OAuth",
                        if offered.is_empty() {
                            "no authentication scheme".to_owned()
                        } else {
                            offered.join(", ")
                        },
                        order
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .with_code("authentication_not_offered")
            })
    }

    fn refuse_ntlm_in_fips(&self, s: Scheme) -> Result<()> {
        if self.opts.policy.fips() && matches!(s, Scheme::Ntlm | Scheme::Negotiate) {
            return Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                "NTLM is not FIPS 140-2 compliant (it uses MD4 and MD5) and this installation \
                 runs in FIPS mode: choose Basic over TLS or OAuth (Hybrid Modern Authentication)",
            )
            .with_code("ntlm_not_allowed_in_fips_mode"));
        }
        Ok(())
    }

    /// The three NTLM legs on this connection: NEGOTIATE, the server's CHALLENGE, then
    /// AUTHENTICATE (with the channel binding of the server's certificate) carrying the
    /// request.
    async fn ntlm(&mut self, scheme: Scheme, op: &str, body: &Bytes) -> Result<http::Response> {
        self.refuse_ntlm_in_fips(scheme)?;
        let Login::Password { username, password } = &self.settings.login else {
            return Err(self.simple_auth(scheme).unwrap_err());
        };
        let identity = NtlmIdentity::parse(username, password.clone());
        let name = scheme.name();
        let negotiate = format!(
            "{name} {}",
            B64.encode(ntlm::negotiate_message(WORKSTATION))
        );
        let req = self.request(op, body.clone(), Some(negotiate))?;
        let resp = self.send(req, op).await?;
        if resp.status != 401 {
            // Anonymous access, or the server answered anyway.
            return Ok(resp);
        }
        let challenge = offered_token(&resp, name).ok_or_else(|| {
            ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                format!(
                    "the server did not answer the {name} sign-in with a challenge (it offers {}): \
                     check that Windows authentication is on for EWS, or choose Basic",
                    offered_schemes(&resp).join(", ")
                ),
            )
        })?;
        let binding = self
            .conn
            .as_ref()
            .and_then(Conn::certificate)
            .map(ChannelBinding::tls_server_end_point);
        let auth = ntlm::authenticate_message(&identity, &challenge, binding.as_ref(), WORKSTATION)
            .map_err(|e| {
                ConnectError::new(
                    FailureStep::Authentication,
                    ErrorKind::Permanent,
                    format!("the server's NTLM challenge cannot be answered: {e}"),
                )
            })?;
        let req = self.request(
            op,
            body.clone(),
            Some(format!("{name} {}", B64.encode(auth))),
        )?;
        let resp = self.send(req, op).await?;
        if resp.status != 401 {
            self.conn_authenticated = true;
        }
        Ok(resp)
    }

    fn refused_sign_in(&self, scheme: Scheme, resp: &http::Response) -> ConnectError {
        let body = String::from_utf8_lossy(&resp.body);
        let www = resp.header_values("www-authenticate").join(" ");
        let mfa = [
            "interaction_required",
            "AADSTS50076",
            "AADSTS50079",
            "AADSTS50158",
        ]
        .iter()
        .any(|m| www.contains(m) || body.contains(m));
        if mfa {
            return ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Auth,
                "the service account has multi-factor authentication turned on, which a \
                 server-side service cannot answer: exclude the account from multi-factor \
                 authentication (a conditional access exception) or use OAuth server-to-server",
            )
            .with_code("mfa_not_supported");
        }
        let user = self.settings.login.username();
        let fix = match scheme {
            Scheme::Bearer => "the access token was refused: check the app registration's \
                               permissions and that Hybrid Modern Authentication is configured"
                .to_owned(),
            _ => format!(
                "Exchange refused the sign-in of {user} with {}: check the user name \
                 (DOMAIN\\user or user@domain) and password{}",
                scheme.name(),
                if matches!(scheme, Scheme::Ntlm | Scheme::Negotiate) {
                    "; with Extended Protection on, the TLS connection must reach Exchange \
                     directly (no TLS-terminating proxy)"
                } else {
                    ""
                }
            ),
        };
        ConnectError::new(FailureStep::Authentication, ErrorKind::Auth, fix)
    }

    /// Reads an answer: the server's version, then the body or the fault.
    fn answer(&mut self, op: &str, resp: http::Response) -> Result<Answer> {
        let status = resp.status;
        let parsed = Element::parse(&resp.body);
        if let Ok(env) = &parsed
            && let Some(v) = env.child("Header").and_then(ServerVersion::read)
        {
            self.server = Some(v);
        }
        match status {
            200 => {}
            403 => {
                return Err(ConnectError::new(
                    FailureStep::Permission,
                    ErrorKind::Permission,
                    format!(
                        "Exchange refused {op} with HTTP 403 Forbidden: the account may not use \
                         EWS (check Set-CASMailbox -EwsEnabled and the EWS application access \
                         policy)"
                    ),
                )
                .with_code("ews_access_denied"));
            }
            404 => {
                return Err(ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Config,
                    format!(
                        "there is no EWS at {} (HTTP 404): check the URL, or turn auto-discover on",
                        self.target.url()
                    ),
                )
                .with_code("ews_not_found"));
            }
            429 | 503 => {
                let after = resp
                    .header_values("retry-after")
                    .first()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut e = ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Throttled,
                    format!("Exchange answered {op} with HTTP {status}: it is busy; serversync waits and tries again"),
                )
                .with_code("throttled");
                if let Some(a) = after {
                    e = e.with_retry_after(a);
                }
                return Err(e);
            }
            500 => {
                // A SOAP fault, possibly with a ResponseCode.
                if let Ok(env) = &parsed
                    && let Some(fault) = env.find("Fault")
                {
                    let code = fault
                        .find("ResponseCode")
                        .map(|c| c.text.trim().to_owned())
                        .unwrap_or_else(|| {
                            fault
                                .text_of("faultcode")
                                .unwrap_or("SOAP fault")
                                .rsplit(':')
                                .next()
                                .unwrap_or_default()
                                .to_owned()
                        });
                    let text = fault.text_of("faultstring").unwrap_or_default();
                    let mut e = codes::failure(op, &code, text, back_off(fault));
                    if codes::classify(&code).code.is_none() && !code.starts_with("Error") {
                        // A bare SOAP fault without an EWS code: the server failed.
                        e.kind = ErrorKind::Transient;
                    }
                    return Err(e);
                }
                return Err(ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Transient,
                    format!("Exchange failed {op} (HTTP 500) without saying why: try again later"),
                ));
            }
            s if s >= 500 => {
                return Err(ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Transient,
                    format!("Exchange answered {op} with HTTP {s}: try again later"),
                ));
            }
            s => {
                return Err(ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Permanent,
                    format!(
                        "Exchange answered {op} with HTTP {s}: check that {} is the EWS URL",
                        self.target.url()
                    ),
                ));
            }
        }
        let env = parsed.map_err(|e| {
            ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Permanent,
                format!("the answer to {op} is not XML ({e}): check that the URL is the EWS URL"),
            )
        })?;
        let body = env
            .child("Body")
            .and_then(|b| b.children.first())
            .cloned()
            .ok_or_else(|| {
                ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Permanent,
                    format!("the answer to {op} has no SOAP body"),
                )
            })?;
        Ok(Answer { body })
    }

    /// Refuses a server older than Exchange 2013 SP1, from the version it reported.
    pub fn check_version(&self) -> Result<()> {
        match &self.server {
            Some(v) if !v.product().is_supported() => Err(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Config,
                format!(
                    "the server is {}, and serversync needs Exchange Server 2013 SP1 or newer: \
                     upgrade the server or move the mailboxes to a newer one",
                    v.describe()
                ),
            )
            .with_code("unsupported_exchange_version")),
            _ => Ok(()),
        }
    }
}

/// The SOAP envelope of `body` (one operation element), with the headers for acting on
/// `acting`'s mailbox.
pub fn envelope(acting: &Acting, body: &str) -> String {
    let impersonation = match acting {
        Acting::Impersonate(smtp) => format!(
            "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>",
            xml::escape(smtp)
        ),
        _ => String::new(),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP}\" xmlns:t=\"{TYPES}\" xmlns:m=\"{MESSAGES}\"><soap:Header><t:RequestServerVersion Version=\"{REQUEST_SERVER_VERSION}\"/>{impersonation}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

fn closed() -> ConnectError {
    ConnectError::new(
        FailureStep::Protocol,
        ErrorKind::Transient,
        "the connection to Exchange is closed",
    )
}

/// The schemes in the answer's `WWW-Authenticate` headers (`NTLM`, `Negotiate`, `Basic`).
fn offered_schemes(resp: &http::Response) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in resp.header_values("www-authenticate") {
        // One header may list several challenges: `Negotiate, NTLM, Basic realm="x"`.
        for part in v.split(',') {
            let first = part.split_whitespace().next().unwrap_or_default();
            if !first.is_empty() && !first.contains('=') && !out.iter().any(|o| o == first) {
                out.push(first.to_owned());
            }
        }
    }
    out
}

/// The token of the `scheme` challenge (`WWW-Authenticate: NTLM <base64>`), decoded.
fn offered_token(resp: &http::Response, scheme: &str) -> Option<Vec<u8>> {
    resp.header_values("www-authenticate").iter().find_map(|v| {
        let (name, token) = v.trim().split_once(' ')?;
        if !name.eq_ignore_ascii_case(scheme) {
            return None;
        }
        B64.decode(token.trim()).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_name_the_product() {
        let v = |major, minor, build| ServerVersion {
            major,
            minor,
            major_build: build,
            ..Default::default()
        };
        assert_eq!(v(14, 3, 123).product(), ExchangeVersion::Exchange2010Sp3);
        assert!(!v(14, 3, 123).product().is_supported());
        assert_eq!(v(15, 0, 620).product(), ExchangeVersion::Exchange2013);
        assert!(!v(15, 0, 620).product().is_supported());
        assert_eq!(v(15, 0, 847).product(), ExchangeVersion::Exchange2013Sp1);
        assert_eq!(v(15, 1, 2507).product(), ExchangeVersion::Exchange2016);
        assert_eq!(v(15, 2, 1544).product(), ExchangeVersion::Exchange2019);
        assert_eq!(
            v(15, 2, 2562).product(),
            ExchangeVersion::ExchangeSubscriptionEdition
        );
        assert!(v(15, 20, 7000).product().is_supported());
        let header = Element::parse(
            br#"<s:Header xmlns:s="x"><h:ServerVersionInfo MajorVersion="15" MinorVersion="20" MajorBuildNumber="7452" MinorBuildNumber="21" Version="V2018_01_08" xmlns:h="y"/></s:Header>"#,
        )
        .unwrap();
        let read = ServerVersion::read(&header).unwrap();
        assert_eq!(
            (read.major, read.minor, read.version.as_str()),
            (15, 20, "V2018_01_08")
        );
    }

    #[test]
    fn response_messages_carry_code_and_back_off() {
        let msg = Element::parse(
            br#"<m:SyncFolderItemsResponseMessage ResponseClass="Error" xmlns:m="m" xmlns:t="t"><m:MessageText>The server cannot service this request right now. Try again later., This operation exceeds the throttling budget for policy part 'ConcurrentSyncCalls', policy value '5'.</m:MessageText><m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:MessageXml><t:Value Name="BackOffMilliseconds">5000</t:Value></m:MessageXml></m:SyncFolderItemsResponseMessage>"#,
        )
        .unwrap();
        let e = check(&msg, "SyncFolderItems").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        let ok = Element::parse(br#"<m:R ResponseClass="Success" xmlns:m="m"/>"#).unwrap();
        assert!(check(&ok, "x").is_ok());
    }
}
