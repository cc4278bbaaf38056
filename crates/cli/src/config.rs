//! Configuration: defaults, then the TOML file, then environment variables, then flags.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serversync_model::Secret;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable holding the master key itself (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "SERVERSYNC_MASTER_KEY";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite database and the master key file live unless configured otherwise.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub secrets: SecretsConfig,
    pub log: LogConfig,
    pub engine: EngineSection,
    pub tls: TlsSection,
    pub admin: AdminSection,
    pub router: RouterSection,
    pub webhooks: WebhooksSection,
    pub auth: AuthSection,
    pub network: NetworkSection,
    pub retention: RetentionSection,
    pub alerts: AlertsSection,
    pub exchange: ExchangeSection,
}

/// `[exchange]`: how Exchange servers are found.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExchangeSection {
    /// The HTTPS port Autodiscover asks at (`https://<domain>:<port>/autodiscover/…`); 443
    /// unless Autodiscover is published elsewhere (or a test server runs).
    pub autodiscover_port: u16,
    /// Microsoft Graph's root (`https://…`) instead of the profile's cloud's, for Exchange
    /// Online: for a cloud not listed, or a test double.
    pub graph_url: Option<String>,
    /// Microsoft Entra ID's root (`https://…`, tokens at `<root>/<tenant>/oauth2/v2.0/token`)
    /// instead of the profile's cloud's.
    pub login_url: Option<String>,
    /// This installation's public HTTPS address (`https://crm.example.com`), where Microsoft
    /// Graph posts change notifications for Exchange Online mailboxes; unset: they poll.
    pub notification_url: Option<String>,
}

impl Default for ExchangeSection {
    fn default() -> Self {
        Self {
            autodiscover_port: 443,
            graph_url: None,
            login_url: None,
            notification_url: None,
        }
    }
}

/// Alert emails: how a failing profile's owner is emailed when their own mailbox cannot send.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsSection {
    /// The installation's SMTP relay; none when unset (the alert then says the email could not
    /// be sent).
    pub smtp_relay: Option<SmtpRelaySection>,
}

/// `[alerts.smtp_relay]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmtpRelaySection {
    pub host: String,
    pub port: u16,
    /// `start_tls` (default), `implicit` or `none` (only to `tls.plaintext_ranges`).
    #[serde(default = "start_tls")]
    pub tls: serversync_model::profile::TlsMode,
    /// Signs in when set (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// env: SERVERSYNC_ALERTS_SMTP_PASSWORD
    #[serde(default)]
    pub password: Option<Secret>,
    /// The sender address of alert emails.
    pub from: String,
}

fn start_tls() -> serversync_model::profile::TlsMode {
    serversync_model::profile::TlsMode::StartTls
}

/// API tokens and signing in to the admin center.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Days a new API token lasts unless its request says otherwise (0: no expiry).
    pub token_lifetime_days: u32,
    /// Where the first start writes the first administrator's token (mode 0600; default:
    /// `<data_dir>/first-admin-token`).
    pub first_token_file: Option<PathBuf>,
    /// Password hashes computed at once (on the blocking pool, off the async runtime).
    pub password_hash_concurrency: usize,
    /// Failed sign-ins of one organization and email address before each further attempt
    /// must wait (1 s, doubling).
    pub sign_in_free_failures_per_address: u32,
    /// Failed sign-ins from one client address (IPv4, or IPv6 /64) before it must wait.
    pub sign_in_free_failures_per_client: u32,
    /// Longest wait after failed sign-ins.
    pub sign_in_max_delay_seconds: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        let d = serversync_engine::AuthConfig::default();
        Self {
            token_lifetime_days: d
                .token_lifetime
                .map_or(0, |l| l.num_days().try_into().unwrap_or(u32::MAX)),
            first_token_file: None,
            password_hash_concurrency: d.hash_concurrency,
            sign_in_free_failures_per_address: d.throttle.free_failures_per_address,
            sign_in_free_failures_per_client: d.throttle.free_failures_per_client,
            sign_in_max_delay_seconds: d.throttle.max_delay.as_secs(),
        }
    }
}

/// How long what may be removed is kept, in days; 0 keeps it forever.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Webhook delivery log entries.
    pub webhook_log_days: u64,
    /// The change feed's horizon: older changes go once every webhook endpoint of their
    /// organization delivered them.
    pub change_feed_days: u64,
    /// Audit log entries.
    pub audit_days: u64,
    /// Raw copies of messages tracked as activities (headers, bodies, attachments stay).
    pub raw_message_days: u64,
    /// Web sessions, counted from their expiry.
    pub expired_session_days: u64,
    /// Time between two pruning passes.
    pub interval_minutes: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        let d = serversync_engine::RetentionConfig::default();
        let days = |k: Option<Duration>| k.map_or(0, |k| k.as_secs() / 86_400);
        Self {
            webhook_log_days: days(d.webhook_log),
            change_feed_days: days(d.change_feed),
            audit_days: days(d.audit),
            raw_message_days: days(d.raw_messages),
            expired_session_days: days(d.expired_sessions),
            interval_minutes: d.interval.as_secs() / 60,
        }
    }
}

/// Where serversync may connect on behalf of organizations (email server profiles, webhooks).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// Non-public address ranges (CIDR) that mail servers and webhooks may resolve to anyway.
    /// Loopback, private, link-local, shared, multicast and reserved addresses are refused
    /// unless listed here; the check is on the resolved address, right before connecting.
    pub allow_ranges: Vec<String>,
    /// A DNS server (IP, or IP:PORT) asked for every host name instead of the system
    /// resolver, and for SRV records (Exchange Autodiscover).
    pub nameserver: Option<String>,
}

impl RetentionSection {
    fn config(&self) -> serversync_engine::RetentionConfig {
        let days = |n: u64| (n > 0).then(|| Duration::from_secs(n.saturating_mul(86_400)));
        serversync_engine::RetentionConfig {
            interval: Duration::from_secs(self.interval_minutes.saturating_mul(60)),
            webhook_log: days(self.webhook_log_days),
            change_feed: days(self.change_feed_days),
            audit: days(self.audit_days),
            raw_messages: days(self.raw_message_days),
            expired_sessions: days(self.expired_session_days),
            ..Default::default()
        }
    }
}

/// The Email Router's LMTP listener, for an MTA (Postfix…) delivering to serversync.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSection {
    /// Address to serve LMTP on, such as 127.0.0.1:2424; off when unset.
    pub lmtp_listen: Option<String>,
    /// Largest message accepted over LMTP, in MiB (larger ones are refused with 552).
    pub lmtp_max_message_mb: u64,
    /// LMTP connections served at once; more are told 421 (try again later).
    pub lmtp_max_connections: usize,
    /// An LMTP client that sends nothing for this long is disconnected.
    pub lmtp_idle_timeout_seconds: u64,
    /// Memory for messages being parsed and stored at once, across connections, in MiB; when
    /// it is taken, further messages are told 452 (try again later).
    pub lmtp_memory_mb: u64,
    /// Where messages larger than 1 MiB are written while they arrive (anonymous temporary
    /// files); the system's temporary directory when unset.
    pub lmtp_spool_dir: Option<PathBuf>,
}

impl Default for RouterSection {
    fn default() -> Self {
        Self {
            lmtp_listen: None,
            lmtp_max_message_mb: 150,
            lmtp_max_connections: 64,
            lmtp_idle_timeout_seconds: 300,
            lmtp_memory_mb: 256,
            lmtp_spool_dir: None,
        }
    }
}

/// Where `serversync admin` finds the server and its token.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// URL of the serversync server (default: http://<server.listen>).
    pub url: Option<String>,
    /// File holding the API token (used when neither --token, --token-file, SERVERSYNC_TOKEN
    /// nor SERVERSYNC_TOKEN_FILE is given).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM files of certificate authorities trusted for mail servers, besides the system's
    /// (for servers with a private CA). Certificate checks are always on.
    pub extra_ca_files: Vec<PathBuf>,
    /// Address ranges (CIDR) to which a profile may connect without TLS (`tls: none`).
    pub plaintext_ranges: Vec<String>,
    /// FIPS 140-2 mode: the FIPS-validated aws-lc module (a build with the `fips` feature),
    /// and no non-compliant presets, NTLM or connections without TLS.
    pub fips: bool,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            extra_ca_files: Vec::new(),
            plaintext_ranges: vec!["127.0.0.0/8".into(), "::1/128".into()],
            fips: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// Reverse proxies in front of serversync: for a request from one of them the client is
    /// the last address of `X-Forwarded-For` that is not one of them (sign-in throttling
    /// counts per client).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// A client must send a request's whole header within this time; an idle connection is
    /// closed after it too.
    pub header_timeout_seconds: u64,
    /// A request body that sends nothing for this long is cut off (408).
    pub body_timeout_seconds: u64,
    /// A request must be received and its answer begun within this time (408).
    pub request_timeout_seconds: u64,
    /// HTTP connections served at once; more wait (in the listen queue) until one closes.
    pub max_connections: usize,
    /// When set, `/metrics` answers only `Authorization: Bearer <this token>`.
    pub metrics_token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (default: `<data_dir>/serversync.db`) or `postgres://…`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// Master key file (default: `<data_dir>/master.key`), used when SERVERSYNC_MASTER_KEY is unset.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `serversync_engine=debug,info`.
    pub level: String,
}

/// Delivery of the change feed to webhook endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSection {
    /// Longest wait between two attempts of a failing endpoint (the wait doubles from 1 s).
    pub retry_max_seconds: u64,
    /// Failed attempts in a row after which an endpoint is paused (with an alert).
    pub max_failures: u32,
    /// Time limit of one delivery request.
    pub timeout_seconds: u64,
    /// Accept `http://` endpoint URLs (events then cross the network unencrypted).
    pub allow_http: bool,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        let d = serversync_engine::webhooks::WebhookConfig::default();
        Self {
            retry_max_seconds: d.retry_max.as_secs(),
            max_failures: d.max_failures,
            timeout_seconds: d.timeout.as_secs(),
            allow_http: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    pub tick_ms: u64,
    pub lease_ttl_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            secrets: SecretsConfig::default(),
            log: LogConfig::default(),
            engine: EngineSection::default(),
            tls: TlsSection::default(),
            admin: AdminSection::default(),
            router: RouterSection::default(),
            webhooks: WebhooksSection::default(),
            auth: AuthSection::default(),
            network: NetworkSection::default(),
            retention: RetentionSection::default(),
            alerts: AlertsSection::default(),
            exchange: ExchangeSection::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            trusted_proxies: Vec::new(),
            header_timeout_seconds: 30,
            body_timeout_seconds: 30,
            request_timeout_seconds: 300,
            max_connections: 1024,
            metrics_token: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            tick_ms: 5000,
            lease_ttl_seconds: 30,
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub lmtp_listen: Option<String>,
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads `path` (if given, it must exist; otherwise `serversync.toml` in the working
    /// directory is used when present), then applies `env` and `flags`.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config> {
        let cfg = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new("serversync.toml").exists() => {
                Self::from_file(Path::new("serversync.toml"))?
            }
            None => Config::default(),
        };
        cfg.apply(env, flags)
    }

    /// Applies `env` and `flags` on top of a configuration read from a file, then validates
    /// the result.
    pub fn apply(self, env: &dyn Fn(&str) -> Option<String>, flags: &Overrides) -> Result<Config> {
        let mut cfg = self;
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = set("SERVERSYNC_DATA_DIR") {
            cfg.data_dir = v.into();
        }
        if let Some(v) = set("SERVERSYNC_LISTEN") {
            cfg.server.listen = v;
        }
        if let Some(v) = set("SERVERSYNC_METRICS_TOKEN") {
            cfg.server.metrics_token = Some(Secret::new(v));
        }
        if let Some(v) = set("SERVERSYNC_LMTP_LISTEN") {
            cfg.router.lmtp_listen = Some(v);
        }
        if let Some(v) = set("SERVERSYNC_DATABASE_URL").or_else(|| set("DATABASE_URL")) {
            cfg.database.url = Some(v);
        }
        if let Some(v) = set("SERVERSYNC_MASTER_KEY_FILE") {
            cfg.secrets.key_file = Some(v.into());
        }
        if let Some(v) = set("SERVERSYNC_TLS_EXTRA_CA_FILES") {
            cfg.tls.extra_ca_files = std::env::split_paths(&v).collect();
        }
        if let Some(v) = set("SERVERSYNC_NETWORK_ALLOW_RANGES") {
            cfg.network.allow_ranges = v.split(',').map(|r| r.trim().to_owned()).collect();
        }
        if let Some(v) = set("SERVERSYNC_NETWORK_NAMESERVER") {
            cfg.network.nameserver = Some(v);
        }
        if let Some(v) = set("SERVERSYNC_WEBHOOKS_ALLOW_HTTP") {
            cfg.webhooks.allow_http = parse_bool("SERVERSYNC_WEBHOOKS_ALLOW_HTTP", &v)?;
        }
        if let Some(v) = set("SERVERSYNC_TLS_FIPS") {
            cfg.tls.fips = parse_bool("SERVERSYNC_TLS_FIPS", &v)?;
        }
        if let Some(v) = set("SERVERSYNC_ALERTS_SMTP_PASSWORD") {
            match cfg.alerts.smtp_relay.as_mut() {
                Some(r) => r.password = Some(Secret::new(v)),
                None => bail!(
                    "SERVERSYNC_ALERTS_SMTP_PASSWORD is set but there is no [alerts.smtp_relay] section"
                ),
            }
        }
        if let Some(v) = set("SERVERSYNC_LOG") {
            cfg.log.level = v;
        }
        if let Some(v) = set("SERVERSYNC_LOG_FORMAT") {
            cfg.log.format = match v.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => bail!("SERVERSYNC_LOG_FORMAT={other} is not valid: use text or json"),
            };
        }
        if let Some(v) = &flags.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &flags.listen {
            cfg.server.listen = v.clone();
        }
        if let Some(v) = &flags.lmtp_listen {
            cfg.router.lmtp_listen = Some(v.clone());
        }
        if let Some(v) = &flags.database_url {
            cfg.database.url = Some(v.clone());
        }
        if let Some(v) = flags.log_format {
            cfg.log.format = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text, path)
    }

    /// Parses the text of a configuration file (`path` only names it in errors): one line
    /// naming the place of the first problem.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line}, column {col}")
                })
                .unwrap_or_default();
            let msg = e.message().replace('\n', " ");
            anyhow::anyhow!(
                "config file {}{at}: {msg}; fix the file (see README.md, Configuration)",
                path.display()
            )
        })
    }

    fn validate(&self) -> Result<()> {
        self.listen_addr()?;
        for (name, v) in [
            ("header_timeout_seconds", self.server.header_timeout_seconds),
            ("body_timeout_seconds", self.server.body_timeout_seconds),
            (
                "request_timeout_seconds",
                self.server.request_timeout_seconds,
            ),
        ] {
            if v == 0 {
                bail!("server.{name} must be at least 1");
            }
        }
        if self.server.max_connections == 0 || self.server.max_connections > 100_000 {
            bail!("server.max_connections must be between 1 and 100000");
        }
        if self
            .server
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().len() < 16)
        {
            bail!(
                "server.metrics_token must be at least 16 characters (or unset to leave /metrics open)"
            );
        }
        self.lmtp_addr()?;
        if self.router.lmtp_max_message_mb == 0 || self.router.lmtp_max_message_mb > 4096 {
            bail!("router.lmtp_max_message_mb must be between 1 and 4096");
        }
        if self.router.lmtp_max_connections == 0 {
            bail!("router.lmtp_max_connections must be at least 1");
        }
        if self.router.lmtp_idle_timeout_seconds == 0 {
            bail!("router.lmtp_idle_timeout_seconds must be at least 1");
        }
        if self.router.lmtp_memory_mb == 0 || self.router.lmtp_memory_mb > 1 << 20 {
            bail!("router.lmtp_memory_mb must be between 1 and 1048576");
        }
        if self.engine.tick_ms == 0 {
            bail!("engine.tick_ms must be at least 1");
        }
        if self.engine.lease_ttl_seconds < 2 {
            bail!("engine.lease_ttl_seconds must be at least 2");
        }
        if self.webhooks.retry_max_seconds == 0 {
            bail!("webhooks.retry_max_seconds must be at least 1");
        }
        if self.webhooks.max_failures == 0 {
            bail!("webhooks.max_failures must be at least 1");
        }
        if self.webhooks.timeout_seconds == 0 {
            bail!("webhooks.timeout_seconds must be at least 1");
        }
        if self.auth.token_lifetime_days > 3650 {
            bail!("auth.token_lifetime_days must be at most 3650 (0: tokens do not expire)");
        }
        if self.auth.password_hash_concurrency == 0 || self.auth.password_hash_concurrency > 64 {
            bail!("auth.password_hash_concurrency must be between 1 and 64");
        }
        if self.auth.sign_in_max_delay_seconds == 0 {
            bail!("auth.sign_in_max_delay_seconds must be at least 1");
        }
        self.network_policy()?;
        if let Some(r) = &self.alerts.smtp_relay {
            if r.host.trim().is_empty() || r.host.contains(['/', ' ']) {
                bail!(
                    "alerts.smtp_relay.host must be a host name or address such as smtp.example.com"
                );
            }
            if r.port == 0 {
                bail!("alerts.smtp_relay.port must be between 1 and 65535");
            }
            if !serversync_model::validate::is_email_address(&r.from) {
                bail!(
                    "alerts.smtp_relay.from = {:?} is not an email address: use one such as serversync@example.com",
                    r.from
                );
            }
            if r.username.is_some() != r.password.is_some() {
                bail!(
                    "alerts.smtp_relay: give both username and password (or SERVERSYNC_ALERTS_SMTP_PASSWORD), or neither"
                );
            }
        }
        if self.retention.interval_minutes == 0 {
            bail!("retention.interval_minutes must be at least 1");
        }
        let r = &self.retention;
        for (key, days) in [
            ("webhook_log_days", r.webhook_log_days),
            ("change_feed_days", r.change_feed_days),
            ("audit_days", r.audit_days),
            ("raw_message_days", r.raw_message_days),
            ("expired_session_days", r.expired_session_days),
        ] {
            if days > 36_500 {
                bail!("retention.{key} must be at most 36500 (100 years); 0 keeps forever");
            }
        }
        Ok(())
    }

    /// The `[network]`, `[tls]` and `[webhooks]` rules for outbound connections.
    pub fn network_policy(&self) -> Result<serversync_connectors::NetworkPolicy> {
        use serversync_connectors::policy::parse_range;
        let ranges = |key: &str, list: &[String]| {
            list.iter()
                .map(|r| parse_range(r).map_err(|e| anyhow::anyhow!("{key}: {e}")))
                .collect::<Result<Vec<_>>>()
        };
        Ok(serversync_connectors::NetworkPolicy::default()
            .with_allow_ranges(ranges("network.allow_ranges", &self.network.allow_ranges)?)
            .with_plaintext_ranges(ranges("tls.plaintext_ranges", &self.tls.plaintext_ranges)?)
            .with_http_webhooks(self.webhooks.allow_http)
            .with_fips(self.tls.fips)
            .with_nameserver(self.nameserver()?))
    }

    fn nameserver(&self) -> Result<Option<SocketAddr>> {
        let Some(text) = self.network.nameserver.as_deref().map(str::trim) else {
            return Ok(None);
        };
        text.parse::<SocketAddr>()
            .or_else(|_| {
                text.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .map(Some)
            .map_err(|_| {
                anyhow::anyhow!(
                    "network.nameserver = {text:?} is not an address: use an IP address \
                     (port 53) or IP:PORT such as 10.0.0.53 or [fd00::53]:53"
                )
            })
    }

    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.server.listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "server.listen = {:?} is not an address: use IP:PORT such as 127.0.0.1:8080",
                self.server.listen
            )
        })
    }

    /// The LMTP listener's address, when it is on.
    pub fn lmtp_addr(&self) -> Result<Option<SocketAddr>> {
        match &self.router.lmtp_listen {
            None => Ok(None),
            Some(a) => a.parse().map(Some).map_err(|_| {
                anyhow::anyhow!(
                    "router.lmtp_listen = {a:?} is not an address: use IP:PORT such as 127.0.0.1:2424"
                )
            }),
        }
    }

    pub fn lmtp(&self) -> serversync_engine::lmtp::LmtpConfig {
        let d = serversync_engine::lmtp::LmtpConfig::default();
        serversync_engine::lmtp::LmtpConfig {
            max_message_bytes: self.router.lmtp_max_message_mb << 20,
            max_connections: self.router.lmtp_max_connections,
            idle_timeout: Duration::from_secs(self.router.lmtp_idle_timeout_seconds),
            memory: serversync_engine::lmtp::MemoryBudget::new(self.router.lmtp_memory_mb << 20),
            spool_dir: self
                .router
                .lmtp_spool_dir
                .clone()
                .unwrap_or(d.spool_dir.clone()),
            ..d
        }
    }

    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", self.data_dir.join("serversync.db").display())
        })
    }

    pub fn key_file(&self) -> PathBuf {
        self.secrets
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// Where the first start writes the first administrator's token.
    pub fn first_token_file(&self) -> PathBuf {
        self.auth
            .first_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("first-admin-token"))
    }

    pub fn engine(&self) -> Result<serversync_engine::EngineConfig> {
        let mut trust = serversync_connectors::TlsTrust::builder().fips(self.tls.fips);
        for f in &self.tls.extra_ca_files {
            trust = trust
                .add_pem_file(f)
                .map_err(|e| anyhow::anyhow!("tls.extra_ca_files: {e}"))?;
        }
        let trust = trust.build().map_err(|e| match e {
            serversync_connectors::TrustError::FipsNotBuilt => anyhow::anyhow!("tls.fips: {e}"),
            e => anyhow::anyhow!("tls.extra_ca_files: {e}"),
        })?;
        Ok(serversync_engine::EngineConfig {
            network: std::sync::Arc::new(self.network_policy()?),
            tick: Duration::from_millis(self.engine.tick_ms),
            lease_ttl: Duration::from_secs(self.engine.lease_ttl_seconds),
            webhooks: serversync_engine::webhooks::WebhookConfig {
                retry_max: Duration::from_secs(self.webhooks.retry_max_seconds),
                max_failures: self.webhooks.max_failures,
                timeout: Duration::from_secs(self.webhooks.timeout_seconds),
                ..Default::default()
            },
            auth: self.auth(),
            retention: self.retention.config(),
            autodiscover_port: self.exchange.autodiscover_port,
            graph_url: self.exchange.graph_url.clone(),
            login_url: self.exchange.login_url.clone(),
            notification_url: self.exchange.notification_url.clone(),
            alerts: serversync_engine::alerts_email::AlertsConfig {
                smtp_relay: self.alerts.smtp_relay.as_ref().map(|r| {
                    serversync_engine::alerts_email::SmtpRelay {
                        host: r.host.clone(),
                        port: r.port,
                        tls: r.tls,
                        username: r.username.clone(),
                        password: r.password.clone(),
                        from: r.from.clone(),
                    }
                }),
            },
            ..serversync_engine::EngineConfig::new(std::sync::Arc::new(trust))
        })
    }

    /// Token lifetimes, password hashing and sign-in throttling.
    pub fn auth(&self) -> serversync_engine::AuthConfig {
        serversync_engine::AuthConfig {
            token_lifetime: (self.auth.token_lifetime_days > 0)
                .then(|| chrono::Duration::days(self.auth.token_lifetime_days.into())),
            hash_concurrency: self.auth.password_hash_concurrency,
            throttle: serversync_engine::ThrottleConfig {
                free_failures_per_address: self.auth.sign_in_free_failures_per_address,
                free_failures_per_client: self.auth.sign_in_free_failures_per_client,
                max_delay: Duration::from_secs(self.auth.sign_in_max_delay_seconds),
                ..Default::default()
            },
        }
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => bail!("{name}={other} is not valid: use true or false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "data_dir = \"/srv/ss\"\n[server]\nlisten = \"127.0.0.1:9000\"\n[log]\nformat = \"json\"\n").unwrap();
        let c = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.database_url(), "sqlite:///srv/ss/serversync.db");
        assert_eq!(c.key_file(), PathBuf::from("/srv/ss/master.key"));
        let c = Config::load(
            Some(&f),
            &env(&[
                ("SERVERSYNC_LISTEN", "127.0.0.1:9001"),
                ("DATABASE_URL", "postgres://x/y"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9001");
        assert_eq!(c.database_url(), "postgres://x/y");
        let flags = Overrides {
            listen: Some("127.0.0.1:9002".into()),
            ..Default::default()
        };
        let c = Config::load(
            Some(&f),
            &env(&[("SERVERSYNC_LISTEN", "127.0.0.1:9001")]),
            &flags,
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9002");
    }

    #[test]
    fn http_limits_and_the_metrics_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[server]\nheader_timeout_seconds = 5\nbody_timeout_seconds = 6\nrequest_timeout_seconds = 7\nmax_connections = 8\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            &env(&[("SERVERSYNC_METRICS_TOKEN", "0123456789abcdef")]),
            &Overrides::default(),
        )
        .unwrap();
        let s = &c.server;
        assert_eq!(
            (
                s.header_timeout_seconds,
                s.body_timeout_seconds,
                s.request_timeout_seconds,
                s.max_connections
            ),
            (5, 6, 7, 8)
        );
        assert_eq!(
            s.metrics_token.as_ref().unwrap().expose(),
            "0123456789abcdef"
        );
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "redacted in Debug"
        );
        for (content, expect) in [
            (
                "[server]\nheader_timeout_seconds = 0\n",
                "server.header_timeout_seconds must be at least 1",
            ),
            (
                "[server]\nmax_connections = 0\n",
                "server.max_connections must be between",
            ),
            (
                "[server]\nmetrics_token = \"short\"\n",
                "server.metrics_token must be at least 16",
            ),
        ] {
            std::fs::write(&f, content).unwrap();
            let err = format!(
                "{:#}",
                Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap_err()
            );
            assert!(err.contains(expect), "{content:?}: {err}");
        }
    }

    #[test]
    fn the_alerts_smtp_relay() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[alerts.smtp_relay]\nhost = \"smtp.example.com\"\nport = 587\nusername = \"alerts\"\nfrom = \"serversync@example.com\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            &env(&[("SERVERSYNC_ALERTS_SMTP_PASSWORD", "relay-secret-pw")]),
            &Overrides::default(),
        )
        .unwrap();
        let r = c.engine().unwrap().alerts.smtp_relay.unwrap();
        assert_eq!((r.host.as_str(), r.port), ("smtp.example.com", 587));
        assert_eq!(r.tls, serversync_model::profile::TlsMode::StartTls);
        assert_eq!(r.password.as_ref().unwrap().expose(), "relay-secret-pw");
        assert!(
            !format!("{c:?}").contains("relay-secret-pw"),
            "redacted in Debug"
        );
        for (content, expect) in [
            (
                "[alerts.smtp_relay]\nhost = \"h\"\nport = 25\nfrom = \"nobody\"\n",
                "alerts.smtp_relay.from",
            ),
            (
                "[alerts.smtp_relay]\nhost = \"h\"\nport = 25\nusername = \"u\"\nfrom = \"a@b.c\"\n",
                "give both username and password",
            ),
            (
                "[alerts.smtp_relay]\nhost = \"h\"\nport = 0\nfrom = \"a@b.c\"\n",
                "alerts.smtp_relay.port",
            ),
        ] {
            std::fs::write(&f, content).unwrap();
            let err = format!(
                "{:#}",
                Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap_err()
            );
            assert!(err.contains(expect), "{content:?}: {err}");
        }
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../serversync.example.toml");
        assert_eq!(Config::from_file(&f).unwrap(), Config::default());
    }

    #[test]
    fn lmtp_is_off_unless_configured() {
        let c = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.lmtp_addr().unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[router]\nlmtp_listen = \"127.0.0.1:2424\"\nlmtp_max_message_mb = 10\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            c.lmtp_addr().unwrap(),
            Some("127.0.0.1:2424".parse().unwrap())
        );
        assert_eq!(c.lmtp().max_message_bytes, 10 << 20);
        assert_eq!(c.lmtp().memory.limit(), 256 << 20);
        let c = Config::load(
            Some(&f),
            &env(&[("SERVERSYNC_LMTP_LISTEN", "127.0.0.1:2525")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.lmtp_addr().unwrap(),
            Some("127.0.0.1:2525".parse().unwrap())
        );
        let flags = Overrides {
            lmtp_listen: Some("127.0.0.1:2626".into()),
            ..Default::default()
        };
        let c = Config::load(
            Some(&f),
            &env(&[("SERVERSYNC_LMTP_LISTEN", "127.0.0.1:2525")]),
            &flags,
        )
        .unwrap();
        assert_eq!(
            c.lmtp_addr().unwrap(),
            Some("127.0.0.1:2626".parse().unwrap())
        );
    }

    #[test]
    fn retention_days_with_zero_keeping_forever() {
        let c = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        let r = c.engine().unwrap().retention;
        assert_eq!(r.webhook_log, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(r.audit, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(r.raw_messages, None, "raw copies are kept by default");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[retention]\naudit_days = 0\nraw_message_days = 90\ninterval_minutes = 5\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap();
        let r = c.engine().unwrap().retention;
        assert_eq!(r.audit, None);
        assert_eq!(r.raw_messages, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(r.interval, Duration::from_secs(300));
    }

    #[test]
    fn bad_files_give_one_line_naming_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        for (content, expect) in [
            ("[server]\nlisten = \n", "line 2"),
            ("[server]\nlisen = \"x\"\n", "unknown field `lisen`"),
            ("[server]\nlisten = \"nope\"\n", "is not an address"),
            ("[log]\nformat = \"xml\"\n", "line 2"),
            (
                "[router]\nlmtp_listen = \"localhost\"\n",
                "router.lmtp_listen = \"localhost\" is not an address",
            ),
            (
                "[router]\nlmtp_max_message_mb = 0\n",
                "lmtp_max_message_mb must be between",
            ),
            (
                "[auth]\npassword_hash_concurrency = 0\n",
                "auth.password_hash_concurrency must be between 1 and 64",
            ),
            ("[server]\ntrusted_proxies = [\"proxy\"]\n", "line 2"),
            (
                "[retention]\ninterval_minutes = 0\n",
                "retention.interval_minutes must be at least 1",
            ),
        ] {
            std::fs::write(&f, content).unwrap();
            let err = format!(
                "{:#}",
                Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap_err()
            );
            assert!(err.contains(expect), "{content:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let err = Config::load(
            Some(&dir.path().join("missing.toml")),
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("cannot read config file"));
    }

    #[test]
    fn network_rules_default_to_public_only_and_parse_ranges() {
        let c = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        let p = c.network_policy().unwrap();
        assert!(p.allow_ranges().is_empty() && !p.allows_http_webhooks() && !p.fips());
        assert!(p.refusal("127.0.0.1".parse().unwrap()).is_some());
        let c = Config::load(
            None,
            &env(&[
                ("SERVERSYNC_NETWORK_ALLOW_RANGES", "127.0.0.0/8, 10.1.2.3"),
                ("SERVERSYNC_WEBHOOKS_ALLOW_HTTP", "true"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        let p = c.network_policy().unwrap();
        assert_eq!(p.refusal("10.1.2.3".parse().unwrap()), None);
        assert!(p.refusal("10.1.2.4".parse().unwrap()).is_some());
        assert!(p.allows_http_webhooks());
        assert_eq!(p.nameserver(), None);
        for (given, want) in [("10.0.0.53", "10.0.0.53:53"), ("[::1]:5353", "[::1]:5353")] {
            let c = Config::load(
                None,
                &env(&[("SERVERSYNC_NETWORK_NAMESERVER", given)]),
                &Overrides::default(),
            )
            .unwrap();
            assert_eq!(c.network_policy().unwrap().nameserver(), want.parse().ok());
        }
        let err = format!(
            "{:#}",
            Config::load(
                None,
                &env(&[("SERVERSYNC_NETWORK_NAMESERVER", "dns.example.com")]),
                &Overrides::default(),
            )
            .unwrap_err()
        );
        assert!(
            err.starts_with("network.nameserver = \"dns.example.com\""),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[network]\nallow_ranges = [\"10.0.0.0/33\"]\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap_err()
        );
        assert!(
            err.starts_with("network.allow_ranges: \"10.0.0.0/33\""),
            "{err}"
        );
        std::fs::write(&f, "[tls]\nfips = true\n").unwrap();
        let c = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap();
        match c.engine() {
            Ok(e) => assert!(e.tls_trust.fips() && e.network.fips()),
            Err(e) => assert!(format!("{e:#}").contains("`fips` feature"), "{e:#}"),
        }
    }
}
