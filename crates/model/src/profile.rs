//! Email server profiles: how an organization reaches a mail system (SPEC.md §3, REFERENCE.md
//! part A "Email server profile"), with the reference defaults, ranges and presets.

use crate::validate::{self, check_range, check_required};
use crate::{OrgId, ProfileId, SecretId, Timestamp, UserId, ValidationErrors};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The kind of mail system a profile talks to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerType {
    /// Exchange Server on-premises, over EWS.
    ExchangeServer,
    /// Exchange Server (hybrid): on-premises mailboxes of a hybrid deployment, over EWS.
    ExchangeServerHybrid,
    /// Exchange Online / Microsoft 365, over Microsoft Graph.
    ExchangeOnline,
    ImapSmtp,
    Pop3Smtp,
}

impl ServerType {
    pub fn is_exchange(self) -> bool {
        matches!(
            self,
            ServerType::ExchangeServer
                | ServerType::ExchangeServerHybrid
                | ServerType::ExchangeOnline
        )
    }
    /// The protocols this type uses by default for incoming and outgoing email.
    pub fn default_protocols(self) -> (IncomingProtocol, OutgoingProtocol) {
        match self {
            ServerType::ExchangeServer | ServerType::ExchangeServerHybrid => {
                (IncomingProtocol::Ews, OutgoingProtocol::Ews)
            }
            ServerType::ExchangeOnline => (IncomingProtocol::Graph, OutgoingProtocol::Graph),
            ServerType::ImapSmtp => (IncomingProtocol::Imap, OutgoingProtocol::Smtp),
            ServerType::Pop3Smtp => (IncomingProtocol::Pop3, OutgoingProtocol::Smtp),
        }
    }
    /// Whether appointments, contacts and tasks can be synchronized natively.
    pub fn supports_act(self) -> bool {
        self.is_exchange()
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingProtocol {
    Ews,
    Graph,
    Imap,
    Pop3,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutgoingProtocol {
    Ews,
    Graph,
    Smtp,
}

/// How serversync authenticates to the mail system.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthenticationType {
    /// Each mailbox carries its own user name and password.
    CredentialsSpecifiedByUserOrQueue,
    /// One set of credentials in the profile, used for every mailbox (delegation rights).
    CredentialsSpecifiedInProfile,
    /// A service account holding the ApplicationImpersonation role (Exchange Server).
    Impersonation,
    /// OAuth 2.0 client credentials of an app registration (Exchange Online).
    ServerToServer,
    /// Hybrid Modern Authentication: OAuth towards on-premises Exchange.
    HybridModernAuth,
    /// OAuth 2.0 for Gmail (required by Google since 2022). `gmail_oauth` on the wire
    /// (`gmail_o_auth`, the name before, is read too).
    #[serde(rename = "gmail_oauth", alias = "gmail_o_auth")]
    GmailOAuth,
}

impl AuthenticationType {
    pub fn credentials_on_mailbox(self) -> bool {
        self == AuthenticationType::CredentialsSpecifiedByUserOrQueue
    }
    pub fn is_oauth(self) -> bool {
        matches!(
            self,
            AuthenticationType::ServerToServer
                | AuthenticationType::HybridModernAuth
                | AuthenticationType::GmailOAuth
        )
    }
}

/// HTTP authentication protocol towards Exchange Server.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthProtocol {
    #[default]
    AutoDetect,
    /// NTLM tokens under the `Negotiate` scheme (no Kerberos).
    Negotiate,
    Ntlm,
    Basic,
    /// A bearer token (Hybrid Modern Authentication). `oauth` on the wire (`o_auth` is read
    /// too).
    #[serde(rename = "oauth", alias = "o_auth")]
    OAuth,
}

/// Which Microsoft identity cloud issues tokens.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthAuthority {
    #[default]
    Automatic,
    /// Public cloud and GCC.
    Public,
    UsGovernment,
    China,
}

/// Transport security of one connection.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// TLS from the first byte (IMAPS 993, POP3S 995, SMTPS 465, HTTPS).
    Implicit,
    /// Plain connection upgraded with STARTTLS/STLS before authentication (587, 143, 110).
    StartTls,
    /// No TLS. Only where an administrator explicitly allows it (test servers, loopback).
    None,
}

/// Where one direction's server is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Host name (IMAP, POP3, SMTP) or URL (EWS).
    pub location: String,
    pub port: u16,
    pub tls: TlsMode,
}

/// Exchange Server versions, including the ones we must refuse.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeVersion {
    Exchange2003,
    Exchange2007,
    Exchange2010,
    Exchange2010Sp3,
    Exchange2013,
    Exchange2013Sp1,
    Exchange2016,
    Exchange2019,
    ExchangeSubscriptionEdition,
}

impl ExchangeVersion {
    /// EWS from Exchange Server 2013 SP1 on (SPEC.md §2 product decision).
    pub fn is_supported(self) -> bool {
        self >= ExchangeVersion::Exchange2013Sp1
    }
}

/// OAuth 2.0 client-credentials settings (server-to-server, Gmail OAuth, hybrid modern auth).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthSettings {
    /// Directory (tenant) id; not used by Gmail.
    pub tenant_id: Option<String>,
    /// Application (client) id.
    pub client_id: String,
    /// The client secret, encrypted in the secret store.
    pub client_secret: Option<SecretId>,
    /// Instead of a secret: the app registration's certificate and its RSA private key (PEM),
    /// encrypted in the secret store; tokens are then asked for with a signed assertion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<SecretId>,
    #[serde(default)]
    pub authority: OAuthAuthority,
    /// The token endpoint (`https://`), for Gmail OAuth; empty: Google's,
    /// `https://oauth2.googleapis.com/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
}

impl OAuthSettings {
    /// Google's token endpoint, where Gmail OAuth tokens come from unless the profile says
    /// otherwise.
    pub const GOOGLE_TOKEN_ENDPOINT: &'static str = "https://oauth2.googleapis.com/token";

    /// The token endpoint Gmail OAuth uses: the profile's, else Google's.
    pub fn gmail_token_endpoint(&self) -> &str {
        self.token_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or(Self::GOOGLE_TOKEN_ENDPOINT)
    }
}

/// CalDAV/CardDAV extension: appointments, contacts and tasks for non-Exchange providers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DavSettings {
    pub caldav_url: String,
    pub carddav_url: Option<String>,
}

/// "Advanced" settings of a profile (REFERENCE.md part A, with its defaults).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdvancedSettings {
    /// Process only email received on or after this time. A mailbox may set its own; the later
    /// of the two wins.
    pub process_email_from: Option<DateTime<Utc>>,
    /// Minimum time between two polls of a mailbox, in minutes (0–1440). 0: no minimum; IMAP
    /// IDLE and push notifications deliver as soon as mail arrives.
    pub min_polling_interval_minutes: u32,
    /// Connections to the server at once, across all workers (1–300, default 10). Counted per
    /// profile when the credentials are in the profile, per mailbox otherwise.
    pub max_concurrent_connections: u32,
    /// Move email that fails processing to an "Undeliverable" folder.
    pub move_failed_to_undeliverable: bool,
    /// Email the profile owner when more than half of the profile's mailboxes fail within an hour.
    pub email_owner_on_failures: bool,
    /// Give up on a server that does not answer within this many milliseconds (1–100000);
    /// `None` waits as long as the operating system does.
    pub connection_timeout_ms: Option<u32>,
    /// Folders tracked besides the Inbox.
    pub tracked_folders: Vec<String>,
    /// Most emails one mailbox may send per minute (1–600): serversync is not a bulk mailer.
    pub max_sends_per_minute: u32,
}

impl Default for AdvancedSettings {
    fn default() -> Self {
        Self {
            process_email_from: None,
            min_polling_interval_minutes: 0,
            max_concurrent_connections: 10,
            move_failed_to_undeliverable: false,
            email_owner_on_failures: false,
            connection_timeout_ms: Some(30_000),
            tracked_folders: Vec::new(),
            max_sends_per_minute: 30,
        }
    }
}

/// An email server profile.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailServerProfile {
    pub id: ProfileId,
    pub org_id: OrgId,
    pub name: String,
    pub description: String,
    /// Receives the profile's alerts.
    pub owner_id: UserId,
    /// Set as the default profile for new mailboxes.
    pub is_default: bool,
    pub server_type: ServerType,
    pub incoming_protocol: IncomingProtocol,
    pub outgoing_protocol: OutgoingProtocol,
    /// Only for Exchange Server types.
    pub exchange_version: Option<ExchangeVersion>,
    pub authentication: AuthenticationType,
    /// Exchange Server only.
    pub auth_protocol: AuthProtocol,
    pub use_impersonation: bool,
    /// Find the server through Autodiscover (recommended for Exchange).
    pub auto_discover: bool,
    /// Required when `auto_discover` is off.
    pub incoming: Option<Endpoint>,
    /// Required when `auto_discover` is off.
    pub outgoing: Option<Endpoint>,
    /// Use the incoming credentials for outgoing too.
    pub use_same_settings_for_outgoing: bool,
    /// Credentials in the profile (service account or shared credentials).
    pub username: Option<String>,
    pub password: Option<SecretId>,
    /// Separate outgoing credentials when `use_same_settings_for_outgoing` is off.
    pub outgoing_username: Option<String>,
    pub outgoing_password: Option<SecretId>,
    pub oauth: Option<OAuthSettings>,
    pub dav: Option<DavSettings>,
    /// The preset the profile was created from, if any (decides FIPS compliance).
    pub preset: Option<Preset>,
    pub advanced: AdvancedSettings,
    /// SHA-256 fingerprints (`AB:CD:…`) of server certificates accepted as they are, whatever
    /// their chain, name or dates: for a self-hosted server with a self-signed certificate.
    /// Test and enable shows the fingerprint of the certificate a server presents.
    #[serde(default)]
    pub pinned_certificates: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Ready-made profiles for well-known providers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Gmail,
    Yahoo,
    OutlookCom,
    ExchangeOnline,
}

impl Preset {
    /// MSN, Outlook.com and Windows Live Mail are not FIPS 140-2 compliant.
    pub fn fips_compliant(self) -> bool {
        !matches!(self, Preset::OutlookCom)
    }
}

impl EmailServerProfile {
    /// A profile of the given type with the reference defaults: TLS on, auto-discover on for
    /// Exchange (off otherwise), same settings for outgoing, no impersonation.
    pub fn new(
        org_id: OrgId,
        name: &str,
        server_type: ServerType,
        owner_id: UserId,
        now: Timestamp,
    ) -> Self {
        let (incoming_protocol, outgoing_protocol) = server_type.default_protocols();
        let authentication = match server_type {
            ServerType::ExchangeOnline => AuthenticationType::ServerToServer,
            ServerType::ExchangeServer | ServerType::ExchangeServerHybrid => {
                AuthenticationType::Impersonation
            }
            ServerType::ImapSmtp | ServerType::Pop3Smtp => {
                AuthenticationType::CredentialsSpecifiedByUserOrQueue
            }
        };
        Self {
            id: ProfileId::new(),
            org_id,
            name: name.to_owned(),
            description: String::new(),
            owner_id,
            is_default: false,
            server_type,
            incoming_protocol,
            outgoing_protocol,
            exchange_version: None,
            authentication,
            auth_protocol: AuthProtocol::AutoDetect,
            use_impersonation: false,
            auto_discover: server_type.is_exchange(),
            incoming: None,
            outgoing: None,
            use_same_settings_for_outgoing: true,
            username: None,
            password: None,
            outgoing_username: None,
            outgoing_password: None,
            oauth: None,
            dav: None,
            preset: None,
            advanced: AdvancedSettings::default(),
            pinned_certificates: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// A profile filled in from a provider preset.
    pub fn from_preset(
        org_id: OrgId,
        name: &str,
        preset: Preset,
        owner_id: UserId,
        now: Timestamp,
    ) -> Self {
        let imap = |host: &str, smtp: &str| {
            (
                Endpoint {
                    location: host.into(),
                    port: 993,
                    tls: TlsMode::Implicit,
                },
                Endpoint {
                    location: smtp.into(),
                    port: 587,
                    tls: TlsMode::StartTls,
                },
            )
        };
        let mut p = match preset {
            Preset::ExchangeOnline => {
                EmailServerProfile::new(org_id, name, ServerType::ExchangeOnline, owner_id, now)
            }
            Preset::Gmail | Preset::Yahoo | Preset::OutlookCom => {
                let mut p =
                    EmailServerProfile::new(org_id, name, ServerType::ImapSmtp, owner_id, now);
                let (i, o) = match preset {
                    Preset::Gmail => imap("imap.gmail.com", "smtp.gmail.com"),
                    Preset::Yahoo => imap("imap.mail.yahoo.com", "smtp.mail.yahoo.com"),
                    _ => imap("outlook.office365.com", "smtp-mail.outlook.com"),
                };
                p.incoming = Some(i);
                p.outgoing = Some(o);
                if preset == Preset::Gmail {
                    p.authentication = AuthenticationType::GmailOAuth;
                }
                p
            }
        };
        p.preset = Some(preset);
        p
    }

    /// Appointments, contacts and tasks need Exchange, or a CalDAV/CardDAV endpoint.
    pub fn supports_act(&self) -> bool {
        self.server_type.supports_act() || self.dav.is_some()
    }

    /// Who holds the connection budget: the profile (shared credentials) or each mailbox.
    pub fn connections_counted_per_mailbox(&self) -> bool {
        self.authentication.credentials_on_mailbox()
    }

    /// Checks every field and every unsupported combination (SPEC.md §5) that can be decided
    /// from the profile alone. `fips_mode` is FIPS 140-2 mode (the installation's or the
    /// organization's): it refuses non-compliant presets, NTLM and connections without TLS.
    pub fn validate(&self, fips_mode: bool) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_required(&mut e, "name", &self.name);
        if self.name.len() > 200 {
            e.push("too_long", "name", "use at most 200 characters");
        }
        let a = &self.advanced;
        check_range(
            &mut e,
            "advanced.min_polling_interval_minutes",
            a.min_polling_interval_minutes.into(),
            0,
            1440,
        );
        check_range(
            &mut e,
            "advanced.max_concurrent_connections",
            a.max_concurrent_connections.into(),
            1,
            300,
        );
        if let Some(t) = a.connection_timeout_ms {
            check_range(
                &mut e,
                "advanced.connection_timeout_ms",
                t.into(),
                1,
                100_000,
            );
        }
        check_range(
            &mut e,
            "advanced.max_sends_per_minute",
            a.max_sends_per_minute.into(),
            1,
            600,
        );
        for (i, f) in a.tracked_folders.iter().enumerate() {
            if f.trim().is_empty() {
                e.push(
                    "required",
                    &format!("advanced.tracked_folders[{i}]"),
                    "enter a folder name",
                );
            }
        }

        // Protocol families must not be mixed (Exchange with SMTP, POP3 with Exchange...).
        let allowed = self.server_type.default_protocols();
        if (self.incoming_protocol, self.outgoing_protocol) != allowed {
            e.push(
                "unsupported_protocol_mix",
                "outgoing_protocol",
                format!(
                    "a {:?} profile receives over {:?} and sends over {:?}; mixing protocol \
                     families (such as Exchange with SMTP or POP3 with Exchange) is not \
                     supported: create one profile per mail system",
                    self.server_type, allowed.0, allowed.1
                ),
            );
        }

        match self.server_type {
            ServerType::ExchangeOnline => {
                if self.authentication != AuthenticationType::ServerToServer {
                    e.push(
                        "exchange_online_requires_server_to_server",
                        "authentication",
                        "Exchange Online profiles authenticate server-to-server (OAuth client \
                         credentials): set authentication to server_to_server",
                    );
                }
                if !self.auto_discover {
                    e.push(
                        "exchange_online_requires_autodiscover",
                        "auto_discover",
                        "Exchange Online profiles must auto-discover the server location: turn \
                         auto_discover on",
                    );
                }
                if self.use_impersonation {
                    e.push(
                        "exchange_online_no_impersonation",
                        "use_impersonation",
                        "Exchange Online profiles act on mailboxes with the application's own \
                         permissions, not impersonation: turn use_impersonation off",
                    );
                }
                for (ep, field) in [(&self.incoming, "incoming"), (&self.outgoing, "outgoing")] {
                    if ep.is_some() {
                        e.push(
                            "exchange_online_default_ports_only",
                            field,
                            "Exchange Online is reached at Microsoft Graph's own address on its \
                             default port: leave the server location and port empty",
                        );
                    }
                }
                if self.exchange_version.is_some() {
                    e.push(
                        "exchange_version_not_applicable",
                        "exchange_version",
                        "Exchange Online has no version: leave exchange_version empty",
                    );
                }
            }
            ServerType::ExchangeServer | ServerType::ExchangeServerHybrid => {
                if let Some(v) = self.exchange_version
                    && !v.is_supported()
                {
                    e.push(
                        "unsupported_exchange_version",
                        "exchange_version",
                        format!(
                            "{v:?} is not supported: upgrade to Exchange Server 2013 SP1 or newer"
                        ),
                    );
                }
                if matches!(self.authentication, AuthenticationType::GmailOAuth) {
                    e.push(
                        "unsupported_authentication",
                        "authentication",
                        "Gmail OAuth is for Gmail profiles: choose impersonation, credentials or \
                         hybrid modern authentication",
                    );
                }
            }
            ServerType::ImapSmtp | ServerType::Pop3Smtp => {
                if matches!(
                    self.authentication,
                    AuthenticationType::Impersonation
                        | AuthenticationType::ServerToServer
                        | AuthenticationType::HybridModernAuth
                ) {
                    e.push(
                        "unsupported_authentication",
                        "authentication",
                        "IMAP and POP3 profiles authenticate with credentials (of the user or \
                         queue, or in the profile) or Gmail OAuth",
                    );
                }
                if self.auto_discover {
                    e.push(
                        "autodiscover_not_available",
                        "auto_discover",
                        "auto-discover is only for Exchange: turn it off and enter the incoming \
                         and outgoing server locations",
                    );
                }
                if self.use_impersonation {
                    e.push(
                        "impersonation_not_available",
                        "use_impersonation",
                        "impersonation is only for Exchange Server: turn it off",
                    );
                }
            }
        }

        if self.authentication.is_oauth() {
            match &self.oauth {
                None => e.push(
                    "required",
                    "oauth",
                    "OAuth authentication needs the app registration: enter oauth.client_id \
                     and the client secret",
                ),
                Some(o) => {
                    check_required(&mut e, "oauth.client_id", &o.client_id);
                    if let Some(t) = o.token_endpoint.as_deref().map(str::trim)
                        && !t.is_empty()
                        && !t
                            .strip_prefix("https://")
                            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
                    {
                        e.push(
                            "invalid_token_endpoint",
                            "oauth.token_endpoint",
                            "the token endpoint must be an https:// URL (tokens and secrets \
                             never travel in the clear), e.g. https://oauth2.googleapis.com/token",
                        );
                    }
                    if self.server_type == ServerType::ExchangeOnline
                        && o.tenant_id.as_deref().is_none_or(|t| t.trim().is_empty())
                    {
                        e.push(
                            "required",
                            "oauth.tenant_id",
                            "enter the directory (tenant) id of the app registration",
                        );
                    }
                }
            }
        }
        if matches!(
            self.authentication,
            AuthenticationType::CredentialsSpecifiedInProfile | AuthenticationType::Impersonation
        ) && self.username.as_deref().is_none_or(|u| u.trim().is_empty())
        {
            e.push(
                "required",
                "username",
                "this authentication type uses credentials in the profile: enter the user name \
                 (and password) of the service account",
            );
        }

        if !self.auto_discover {
            for (field, ep) in [("incoming", &self.incoming), ("outgoing", &self.outgoing)] {
                match ep {
                    // Exchange sends over the same EWS URL it receives from.
                    None if field == "outgoing"
                        && self.outgoing_protocol == OutgoingProtocol::Ews => {}
                    None => e.push(
                        "required",
                        field,
                        format!("auto-discover is off: enter the {field} server location and port"),
                    ),
                    Some(ep) => check_endpoint(&mut e, field, ep, self.server_type),
                }
            }
        }

        if let Some(d) = &self.dav {
            if self.server_type.is_exchange() {
                e.push(
                    "dav_not_applicable",
                    "dav",
                    "Exchange profiles synchronize appointments, contacts and tasks natively: \
                     remove the CalDAV/CardDAV settings",
                );
            }
            if !validate::is_http_url(&d.caldav_url) {
                e.push("invalid_url", "dav.caldav_url", "enter an http(s) URL");
            }
            if let Some(u) = &d.carddav_url
                && !validate::is_http_url(u)
            {
                e.push("invalid_url", "dav.carddav_url", "enter an http(s) URL");
            }
        }

        for (i, pin) in self.pinned_certificates.iter().enumerate() {
            if crate::certificate::normalize_sha256(pin).is_none() {
                e.push(
                    "invalid_fingerprint",
                    &format!("pinned_certificates[{i}]"),
                    "enter the certificate's SHA-256 fingerprint (64 hexadecimal digits, colons \
                     allowed), as test and enable shows it",
                );
            }
        }

        if fips_mode {
            self.fips_problems(&mut e);
        }
        e.into_result()
    }

    /// What FIPS 140-2 mode refuses: presets of providers that are not compliant, NTLM (MD4
    /// and MD5 are not approved algorithms) and connections without TLS.
    fn fips_problems(&self, e: &mut ValidationErrors) {
        if self.preset.is_some_and(|p| !p.fips_compliant()) {
            e.push(
                "not_fips_compliant",
                "preset",
                "FIPS 140-2 mode is on and MSN, Outlook.com and Windows Live Mail are not FIPS \
                 compliant: use another provider or turn FIPS mode off",
            );
        }
        if matches!(
            self.auth_protocol,
            AuthProtocol::Ntlm | AuthProtocol::Negotiate
        ) {
            e.push(
                "not_fips_compliant",
                "auth_protocol",
                "FIPS 140-2 mode is on and NTLM uses algorithms FIPS does not approve: choose \
                 OAuth or basic over TLS",
            );
        }
        for (field, ep) in [("incoming", &self.incoming), ("outgoing", &self.outgoing)] {
            if ep.as_ref().is_some_and(|ep| ep.tls == TlsMode::None) {
                e.push(
                    "not_fips_compliant",
                    &format!("{field}.tls"),
                    "FIPS 140-2 mode is on and connections without TLS are not allowed: choose \
                     implicit TLS or STARTTLS",
                );
            }
        }
    }
}

fn check_endpoint(e: &mut ValidationErrors, field: &str, ep: &Endpoint, t: ServerType) {
    if ep.port == 0 {
        e.push(
            "out_of_range",
            &format!("{field}.port"),
            "must be between 1 and 65535, got 0",
        );
    }
    let loc = ep.location.trim();
    if loc.is_empty() {
        e.push(
            "required",
            &format!("{field}.location"),
            "enter the server host name",
        );
    } else if t.is_exchange() {
        if !validate::is_http_url(loc) {
            e.push(
                "invalid_url",
                &format!("{field}.location"),
                "enter the EWS URL, such as https://mail.example.com/EWS/Exchange.asmx",
            );
        }
    } else if !validate::is_host(loc) {
        e.push(
            "invalid_host",
            &format!("{field}.location"),
            "enter a host name or IP address without scheme or port, such as imap.example.com",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        chrono::Utc::now()
    }

    fn imap_profile() -> EmailServerProfile {
        let mut p = EmailServerProfile::new(
            OrgId::new(),
            "IMAP",
            ServerType::ImapSmtp,
            UserId::new(),
            now(),
        );
        p.incoming = Some(Endpoint {
            location: "127.0.0.1".into(),
            port: 993,
            tls: TlsMode::Implicit,
        });
        p.outgoing = Some(Endpoint {
            location: "127.0.0.1".into(),
            port: 587,
            tls: TlsMode::StartTls,
        });
        p
    }

    #[test]
    fn reference_defaults() {
        let p = EmailServerProfile::new(
            OrgId::new(),
            "x",
            ServerType::ExchangeServer,
            UserId::new(),
            now(),
        );
        assert!(p.auto_discover);
        assert!(p.use_same_settings_for_outgoing);
        assert!(!p.use_impersonation);
        assert_eq!(p.advanced.max_concurrent_connections, 10);
        assert!(!p.advanced.move_failed_to_undeliverable);
        assert!(!p.advanced.email_owner_on_failures);
        assert_eq!(p.advanced.connection_timeout_ms, Some(30_000));
        let g =
            EmailServerProfile::from_preset(OrgId::new(), "g", Preset::Gmail, UserId::new(), now());
        assert_eq!(g.incoming.as_ref().unwrap().port, 993);
        assert_eq!(g.outgoing.as_ref().unwrap().port, 587);
        assert_eq!(g.authentication, AuthenticationType::GmailOAuth);
        assert_eq!(crate::wire_name(&g.authentication), "gmail_oauth");
        assert_eq!(
            serde_json::from_str::<AuthenticationType>("\"gmail_o_auth\"").unwrap(),
            AuthenticationType::GmailOAuth,
            "the earlier wire name is still read"
        );
    }

    #[test]
    fn a_complete_imap_profile_is_valid() {
        imap_profile().validate(false).unwrap();
    }

    #[test]
    fn each_unsupported_configuration_has_its_own_code() {
        type Change = Box<dyn Fn(&mut EmailServerProfile)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "unsupported_protocol_mix",
                Box::new(|p| p.outgoing_protocol = OutgoingProtocol::Ews),
            ),
            (
                "out_of_range",
                Box::new(|p| p.advanced.max_concurrent_connections = 301),
            ),
            (
                "out_of_range",
                Box::new(|p| p.advanced.min_polling_interval_minutes = 1441),
            ),
            (
                "out_of_range",
                Box::new(|p| p.advanced.connection_timeout_ms = Some(100_001)),
            ),
            (
                "out_of_range",
                Box::new(|p| p.incoming.as_mut().unwrap().port = 0),
            ),
            (
                "invalid_host",
                Box::new(|p| p.incoming.as_mut().unwrap().location = "imap://x".into()),
            ),
            ("required", Box::new(|p| p.outgoing = None)),
            (
                "autodiscover_not_available",
                Box::new(|p| p.auto_discover = true),
            ),
            (
                "unsupported_authentication",
                Box::new(|p| p.authentication = AuthenticationType::Impersonation),
            ),
        ];
        for (code, change) in cases {
            let mut p = imap_profile();
            change(&mut p);
            let err = p.validate(false).unwrap_err();
            assert!(err.codes().contains(&code), "expected {code}, got {err}");
        }

        let mut eo = EmailServerProfile::new(
            OrgId::new(),
            "EO",
            ServerType::ExchangeOnline,
            UserId::new(),
            now(),
        );
        eo.oauth = Some(OAuthSettings {
            tenant_id: Some("t".into()),
            client_id: "c".into(),
            client_secret: None,
            client_certificate: None,
            authority: OAuthAuthority::Public,
            token_endpoint: None,
        });
        eo.validate(false).unwrap();
        let mut bad = eo.clone();
        if let Some(o) = bad.oauth.as_mut() {
            o.token_endpoint = Some("http://oauth.example/token".into());
        }
        assert!(
            bad.validate(false)
                .unwrap_err()
                .codes()
                .contains(&"invalid_token_endpoint")
        );
        assert_eq!(
            eo.oauth.as_ref().unwrap().gmail_token_endpoint(),
            "https://oauth2.googleapis.com/token"
        );
        let mut bad = eo.clone();
        bad.authentication = AuthenticationType::CredentialsSpecifiedInProfile;
        bad.username = Some("svc".into());
        assert!(
            bad.validate(false)
                .unwrap_err()
                .codes()
                .contains(&"exchange_online_requires_server_to_server")
        );
        let mut bad = eo.clone();
        bad.auto_discover = false;
        bad.incoming = Some(Endpoint {
            location: "https://x/EWS/Exchange.asmx".into(),
            port: 443,
            tls: TlsMode::Implicit,
        });
        bad.outgoing = bad.incoming.clone();
        assert!(
            bad.validate(false)
                .unwrap_err()
                .codes()
                .contains(&"exchange_online_requires_autodiscover")
        );
        let mut bad = eo.clone();
        bad.use_impersonation = true;
        bad.incoming = Some(Endpoint {
            location: "outlook.office365.com".into(),
            port: 8443,
            tls: TlsMode::Implicit,
        });
        let codes = bad.validate(false).unwrap_err();
        assert!(codes.codes().contains(&"exchange_online_no_impersonation"));
        assert!(
            codes
                .codes()
                .contains(&"exchange_online_default_ports_only")
        );

        let mut ex = EmailServerProfile::new(
            OrgId::new(),
            "EX",
            ServerType::ExchangeServer,
            UserId::new(),
            now(),
        );
        ex.username = Some("svc".into());
        ex.exchange_version = Some(ExchangeVersion::Exchange2010Sp3);
        assert!(
            ex.validate(false)
                .unwrap_err()
                .codes()
                .contains(&"unsupported_exchange_version")
        );
        ex.exchange_version = Some(ExchangeVersion::Exchange2019);
        ex.validate(false).unwrap();

        let o = EmailServerProfile::from_preset(
            OrgId::new(),
            "o",
            Preset::OutlookCom,
            UserId::new(),
            now(),
        );
        o.validate(false).unwrap();
        assert!(
            o.validate(true)
                .unwrap_err()
                .codes()
                .contains(&"not_fips_compliant")
        );
    }

    #[test]
    fn fips_mode_refuses_plain_text_ntlm_and_non_compliant_presets() {
        let mut p = imap_profile();
        p.validate(true).unwrap();
        p.incoming.as_mut().unwrap().tls = TlsMode::None;
        p.validate(false).unwrap();
        let err = p.validate(true).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(
            (err.0[0].code.as_str(), err.0[0].field.as_str()),
            ("not_fips_compliant", "incoming.tls")
        );

        let mut ex = EmailServerProfile::new(
            OrgId::new(),
            "EX",
            ServerType::ExchangeServer,
            UserId::new(),
            now(),
        );
        ex.username = Some("svc".into());
        ex.auth_protocol = AuthProtocol::Ntlm;
        ex.validate(false).unwrap();
        let err = ex.validate(true).unwrap_err();
        assert_eq!(err.0[0].field, "auth_protocol", "{err}");
    }

    #[test]
    fn pinned_fingerprints_must_be_sha256() {
        let mut p = imap_profile();
        p.pinned_certificates = vec!["AB".repeat(32)];
        p.validate(false).unwrap();
        p.pinned_certificates.push("not-a-fingerprint".into());
        let err = p.validate(false).unwrap_err();
        assert_eq!(err.0[0].field, "pinned_certificates[1]", "{err}");
    }
}
