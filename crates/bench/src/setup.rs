//! The benchmark's world: a store with the bootstrap organization, server profiles on the
//! private Dovecot and Postfix, mailboxes, and `serversync serve` processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serversync_engine::Admin;
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{Organization, User};
use serversync_model::profile::{
    AuthenticationType, DavSettings, EmailServerProfile, Endpoint, OAuthAuthority, OAuthSettings,
    ServerType, TlsMode,
};
use serversync_model::settings::{ActMethod, EmailSettings, OutgoingMethod};
use serversync_model::{MailboxId, OrgId, QueueId, Secret};
use serversync_store::Store;
use serversync_vault::{KeySource, MasterKey};

use crate::procstat::Watched;

/// A fresh store with the first administrator and the bootstrap organization.
pub struct World {
    pub url: String,
    pub key: MasterKey,
    pub store: Store,
    pub admin: User,
    pub org: Organization,
    pub settings: EmailSettings,
    /// An API token of the administrator.
    pub token: String,
}

async fn open_store(url: &str, key: &MasterKey) -> Result<Store> {
    Store::open(
        url,
        MasterKey::from_base64(&key.to_base64(), KeySource::Direct)?,
    )
    .await
    .with_context(|| format!("opening the store at {url}"))
}

impl World {
    pub async fn new(url: &str) -> Result<World> {
        let key = MasterKey::generate()?;
        let store = open_store(url, &key).await?;
        let (admin, token) = Admin::new(store.clone(), Default::default())
            .bootstrap()
            .await?
            .context("the store is not fresh")?;
        let org = store
            .list_all::<Organization>(None, &[])
            .await?
            .remove(0)
            .value;
        let settings = store
            .fetch::<EmailSettings>(&org.id.to_string())
            .await?
            .value;
        Ok(World {
            url: url.to_owned(),
            key,
            store,
            admin,
            org,
            settings,
            token,
        })
    }

    /// Closes the store and opens it again: on SQLite the last connection's close copies the
    /// WAL into the database file.
    pub async fn reopen_store(&mut self) -> Result<()> {
        self.store.close().await;
        self.store = open_store(&self.url, &self.key).await?;
        Ok(())
    }

    pub fn org_id(&self) -> OrgId {
        self.org.id
    }

    /// An IMAP/SMTP profile: IMAPS on `imaps`, submission with STARTTLS on `submission`.
    pub async fn profile(&self, imaps: u16, submission: Option<u16>) -> Result<EmailServerProfile> {
        let mut profile = EmailServerProfile::new(
            self.org.id,
            "Dovecot and Postfix",
            ServerType::ImapSmtp,
            self.admin.id,
            chrono::Utc::now(),
        );
        profile.incoming = Some(Endpoint {
            location: "127.0.0.1".into(),
            port: imaps,
            tls: TlsMode::Implicit,
        });
        profile.outgoing = submission.map(|port| Endpoint {
            location: "127.0.0.1".into(),
            port,
            tls: TlsMode::StartTls,
        });
        // The benchmark measures the engine's throughput, not the administrator's send rate
        // limit (at most 600 a minute through the API): set past it directly in the store.
        profile.advanced.max_sends_per_minute = 1_000_000;
        profile.advanced.max_concurrent_connections = 300;
        self.store.insert(&profile).await?;
        Ok(profile)
    }

    /// An Exchange Server profile at a fixed EWS URL (no Autodiscover), signing in as the
    /// service account `user` (`DOMAIN\\user`) with impersonation.
    pub async fn exchange_profile(
        &self,
        ews_url: &str,
        port: u16,
        user: &str,
        password: &str,
    ) -> Result<EmailServerProfile> {
        let mut p = EmailServerProfile::new(
            self.org.id,
            "Exchange (test double)",
            ServerType::ExchangeServer,
            self.admin.id,
            chrono::Utc::now(),
        );
        p.authentication = AuthenticationType::Impersonation;
        p.use_impersonation = true;
        p.auto_discover = false;
        let ews = Endpoint {
            location: ews_url.into(),
            port,
            tls: TlsMode::Implicit,
        };
        p.incoming = Some(ews.clone());
        p.outgoing = Some(ews);
        p.username = Some(user.into());
        p.password = Some(
            self.store
                .put_secret(Some(self.org.id), &Secret::new(password))
                .await?,
        );
        p.advanced.max_concurrent_connections = 300;
        p.validate(false)
            .map_err(|e| anyhow::anyhow!("the Exchange profile is not valid: {e:?}"))?;
        self.store.insert(&p).await?;
        Ok(p)
    }

    /// An Exchange Online profile: server-to-server authentication (client credentials) of app
    /// `client` with `secret` in `tenant`, Graph found by the profile's cloud (the `[exchange]`
    /// config points it at a test double).
    pub async fn exchange_online_profile(
        &self,
        tenant: &str,
        client: &str,
        secret: &str,
    ) -> Result<EmailServerProfile> {
        let mut p = EmailServerProfile::new(
            self.org.id,
            "Exchange Online (test double)",
            ServerType::ExchangeOnline,
            self.admin.id,
            chrono::Utc::now(),
        );
        p.authentication = AuthenticationType::ServerToServer;
        p.auto_discover = true;
        p.oauth = Some(OAuthSettings {
            tenant_id: Some(tenant.into()),
            client_id: client.into(),
            client_secret: Some(
                self.store
                    .put_secret(Some(self.org.id), &Secret::new(secret))
                    .await?,
            ),
            authority: OAuthAuthority::Public,
            token_endpoint: None,
            client_certificate: None,
        });
        p.validate(false)
            .map_err(|e| anyhow::anyhow!("the Exchange Online profile is not valid: {e:?}"))?;
        self.store.insert(&p).await?;
        Ok(p)
    }

    /// An approved mailbox signing in as `address`; a queue mailbox (tracks all email) unless
    /// `user_owned`, which makes it the administrator's (needed to send as them).
    pub async fn mailbox(
        &self,
        profile: &EmailServerProfile,
        address: &str,
        password: &str,
        incoming: bool,
        outgoing: bool,
    ) -> Result<MailboxId> {
        let regarding = if outgoing {
            MailboxRegarding::User(self.admin.id)
        } else {
            MailboxRegarding::Queue(QueueId::new())
        };
        let mut m = Mailbox::new_with_defaults(
            self.org.id,
            regarding,
            self.admin.id,
            address,
            address,
            &self.settings,
            chrono::Utc::now(),
        );
        m.profile_id = Some(profile.id);
        m.approval = ApprovalStatus::Approved;
        m.password = Some(
            self.store
                .put_secret(Some(self.org.id), &Secret::new(password))
                .await?,
        );
        m.incoming.enabled = incoming;
        if outgoing {
            m.outgoing_method = OutgoingMethod::ServerSideSync;
            m.outgoing.enabled = true;
        } else {
            m.outgoing_method = OutgoingMethod::None;
        }
        self.store.insert(&m).await?;
        Ok(m.id)
    }

    /// An IMAP/SMTP profile whose appointments, contacts and tasks are synchronized with the
    /// calendar at `caldav_url` and the address book at `carddav_url` (collection URLs).
    pub async fn dav_profile(
        &self,
        imaps: u16,
        caldav_url: &str,
        carddav_url: &str,
    ) -> Result<EmailServerProfile> {
        let mut profile = EmailServerProfile::new(
            self.org.id,
            "Dovecot and Radicale",
            ServerType::ImapSmtp,
            self.admin.id,
            chrono::Utc::now(),
        );
        profile.incoming = Some(Endpoint {
            location: "127.0.0.1".into(),
            port: imaps,
            tls: TlsMode::Implicit,
        });
        profile.dav = Some(DavSettings {
            caldav_url: caldav_url.into(),
            carddav_url: Some(carddav_url.into()),
        });
        self.store.insert(&profile).await?;
        Ok(profile)
    }

    /// The administrator's own approved mailbox signing in as `address`, with only its third
    /// delivery method on: appointments, contacts and tasks by server-side synchronization
    /// (no incoming or outgoing email).
    pub async fn item_sync_mailbox(
        &self,
        profile: &EmailServerProfile,
        address: &str,
        password: &str,
    ) -> Result<Mailbox> {
        let mut m = Mailbox::new_with_defaults(
            self.org.id,
            MailboxRegarding::User(self.admin.id),
            self.admin.id,
            address,
            address,
            &self.settings,
            chrono::Utc::now(),
        );
        m.profile_id = Some(profile.id);
        m.approval = ApprovalStatus::Approved;
        m.password = Some(
            self.store
                .put_secret(Some(self.org.id), &Secret::new(password))
                .await?,
        );
        m.incoming.enabled = false;
        m.outgoing_method = OutgoingMethod::None;
        m.act_method = ActMethod::ServerSideSync;
        m.act.enabled = true;
        m.sync_with_this_org_only = true;
        self.store.insert(&m).await?;
        Ok(m)
    }

    /// How many messages of `mailbox` are stored, and whether the tracker has turned every
    /// stored message into CRM records.
    pub async fn progress(&self, mailbox: MailboxId) -> Result<(i64, bool)> {
        let stored: i64 = self
            .store
            .count_items(mailbox)
            .await?
            .iter()
            .map(|(_, n)| n)
            .sum();
        let untracked = self.store.orgs_with_untracked_items().await?;
        Ok((stored, untracked.is_empty()))
    }
}

/// A running `serversync serve`.
pub struct Serve {
    pub proc: Watched,
    pub port: u16,
}

impl Serve {
    /// Starts `serversync serve` on `world`'s store with the default engine settings, the
    /// test CA trusted, and waits until it answers `/readyz`.
    pub async fn start(bin: &Path, dir: &Path, world: &World, ca: &Path) -> Result<Serve> {
        Self::start_with(bin, dir, world, ca, "").await
    }

    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        world: &World,
        ca: &Path,
        config: &str,
    ) -> Result<Serve> {
        let port = serversync_testkit::util::free_ports(1)?[0];
        let cfg = dir.join("serversync.toml");
        // `{serve_url}` in the configuration: this server's own address (where Graph posts
        // change notifications).
        std::fs::write(
            &cfg,
            config.replace("{serve_url}", &format!("http://127.0.0.1:{port}")),
        )?;
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let proc = Watched::spawn(
            Command::new(bin)
                .arg("--config")
                .arg(&cfg)
                .arg("--data-dir")
                .arg(dir)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .env("SERVERSYNC_DATABASE_URL", &world.url)
                .env("SERVERSYNC_MASTER_KEY", world.key.to_base64())
                // BENCH_SERVE_LOG: a more verbose filter, to see where a run's time goes.
                .env(
                    "SERVERSYNC_LOG",
                    std::env::var("BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .env("SERVERSYNC_TLS_EXTRA_CA_FILES", ca)
                .env("SERVERSYNC_NETWORK_ALLOW_RANGES", "127.0.0.0/8,::1")
                .env_remove("DATABASE_URL")
                .env_remove("SERVERSYNC_LMTP_LISTEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let serve = Serve { proc, port };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(serve.url("/readyz")).send().await
                && r.status().is_success()
            {
                return Ok(serve);
            }
            if Instant::now() > deadline {
                bail!(
                    "serversync serve did not become ready within 60 s (log: {})",
                    dir.join("serve.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Sends an API request as `token` and returns its JSON body; a 4xx/5xx answer is an error.
pub async fn api_json(req: reqwest::RequestBuilder, token: &str) -> Result<serde_json::Value> {
    Ok(req
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Waits until `done` says so, polling every `every`, for at most `limit`.
pub async fn wait_until<F, Fut>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut done: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if done().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not done within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `sql` with psql on the database at `url`.
pub fn psql(url: &str, sql: &str) -> Result<()> {
    let psql = serversync_testkit::postgres::pg_program("psql")?;
    let out = Command::new(&psql)
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A fresh PostgreSQL database `name` (dropped first if it exists) on the server at
/// `admin_url`, made with `psql`; returns its URL.
pub fn pg_database(admin_url: &str, name: &str) -> Result<String> {
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        psql(admin_url, &sql)?;
    }
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("the PostgreSQL URL names no database")?;
    Ok(format!("{base}/{name}"))
}
