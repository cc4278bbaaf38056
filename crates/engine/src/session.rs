//! The mailbox session: the one place where a mailbox, its email server profile and its
//! organization's settings become what a connector is opened with — the server's address, the
//! sign-in (password from the store's secrets, or an OAuth token), the connection options
//! (trust, network policy, the profile's timeout) and a connection slot of the profile. Every
//! pipeline (incoming, outgoing, test and enable) opens its connectors through it, and every
//! failure it reports is a [`Failure`], the one type the retry policy reads.

use crate::EngineConfig;
use crate::policy::Failure;
use crate::slots::ConnSlot;
use serversync_connectors::ews::{Acting, autodiscover};
use serversync_connectors::source::MailSource;
use serversync_connectors::transport::{MailTransport, SentFolder};
use serversync_connectors::{
    ConnectError, ConnectOptions, EwsTarget, GraphTarget, Login, Server, ServerAddr,
};
use serversync_model::MailboxId;
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::EmailServerProfile;
use serversync_model::profile::{AuthenticationType, IncomingProtocol};
use serversync_model::settings::EmailSettings;
use serversync_store::{Store, StoreError};
use std::time::Duration;

/// Which of the profile's servers a connection goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The incoming server (mail source; also where the Sent copy is kept).
    Incoming,
    /// The outgoing server (mail transport).
    Outgoing,
}

/// A mailbox with its profile and settings, ready to open connectors.
#[derive(Debug, Clone)]
pub(crate) struct MailboxSession {
    pub mailbox: Mailbox,
    pub profile: EmailServerProfile,
    pub settings: EmailSettings,
    /// Trust, network policy and the profile's connection timeout.
    pub opts: ConnectOptions,
    /// Where Exchange Autodiscover asks.
    pub autodiscover: autodiscover::Options,
    /// Microsoft Graph's and Entra ID's roots when the configuration overrides the cloud's.
    pub graph_url: Option<String>,
    pub login_url: Option<String>,
    /// The cloud of an Exchange Online profile whose authority is automatic, once Entra ID's
    /// metadata told it ([`crate::oauth::discover_cloud`]).
    pub cloud: std::sync::OnceLock<serversync_connectors::oauth::EntraCloud>,
}

impl MailboxSession {
    /// The session of a mailbox whose profile and settings the caller has read.
    pub fn new(
        config: &EngineConfig,
        mailbox: Mailbox,
        profile: EmailServerProfile,
        settings: EmailSettings,
    ) -> Self {
        let timeout = Duration::from_millis(
            profile
                .advanced
                .connection_timeout_ms
                .unwrap_or(100_000)
                .into(),
        );
        MailboxSession {
            opts: config.connect_options(timeout),
            autodiscover: autodiscover::Options {
                port: config.autodiscover_port,
            },
            graph_url: config.graph_url.clone(),
            login_url: config.login_url.clone(),
            cloud: std::sync::OnceLock::new(),
            mailbox,
            profile,
            settings,
        }
    }

    /// Reads the mailbox, its settings and its profile; a mailbox without a profile is the
    /// failure `no_profile`.
    pub async fn load(
        store: &Store,
        config: &EngineConfig,
        id: MailboxId,
    ) -> Result<Result<Self, Failure>, StoreError> {
        let mailbox = store.fetch::<Mailbox>(&id.to_string()).await?.value;
        let settings = crate::org_settings(store, mailbox.org_id).await?;
        let profile = match mailbox.profile_id {
            Some(p) => store.get::<EmailServerProfile>(&p.to_string()).await?,
            None => None,
        };
        let Some(profile) = profile else {
            return Ok(Err(Failure::config(
                "no_profile",
                "the mailbox has no email server profile: apply the default email settings or choose a profile",
            )));
        };
        Ok(Ok(Self::new(config, mailbox, profile.value, settings)))
    }

    /// The profile's server on `side`, with the certificates it pins: a mail server's
    /// address, or for Exchange its EWS endpoint (the profile's URL; with auto-discover, the
    /// URL found for this mailbox before, else none and Autodiscover finds it).
    pub fn address(&self, side: Side) -> Result<Server, Failure> {
        let p = &self.profile;
        if p.incoming_protocol == IncomingProtocol::Graph {
            return Ok(Server::Graph(GraphTarget {
                graph_url: crate::oauth::graph_root(self),
                mailbox: self.mailbox.email.clone(),
                pinned: p.pinned_certificates.clone(),
            }));
        }
        if p.incoming_protocol == IncomingProtocol::Ews {
            let url = if p.auto_discover {
                self.mailbox.telemetry.ews_url.clone()
            } else {
                Some(self.endpoint(side)?.location.trim().to_owned())
            };
            let acting = if p.authentication.credentials_on_mailbox() {
                Acting::Own
            } else if p.use_impersonation
                || matches!(
                    p.authentication,
                    AuthenticationType::Impersonation | AuthenticationType::HybridModernAuth
                )
            {
                Acting::Impersonate(self.mailbox.email.clone())
            } else {
                Acting::Delegate(self.mailbox.email.clone())
            };
            return Ok(Server::Ews(EwsTarget {
                url,
                email: self.mailbox.email.clone(),
                protocol: p.auth_protocol,
                acting,
                autodiscover: self.autodiscover,
                pinned: p.pinned_certificates.clone(),
            }));
        }
        let e = self.endpoint(side)?;
        Ok(Server::Mail(
            ServerAddr::new(e.location.clone(), e.port, e.tls)
                .with_pinned(self.profile.pinned_certificates.clone()),
        ))
    }

    fn endpoint(&self, side: Side) -> Result<&serversync_model::profile::Endpoint, Failure> {
        let (ep, what) = match side {
            Side::Incoming => (self.profile.incoming.as_ref(), "incoming"),
            Side::Outgoing => (
                self.profile.outgoing.as_ref().or(
                    if self.profile.incoming_protocol == IncomingProtocol::Ews {
                        self.profile.incoming.as_ref()
                    } else {
                        None
                    },
                ),
                "outgoing",
            ),
        };
        ep.ok_or_else(|| {
            Failure::config(
                "location_missing",
                format!(
                    "the profile has no {what} server location: enter it, or turn auto-discover on for Exchange"
                ),
            )
        })
    }

    /// How the mailbox signs in on `side`: a password, or for an OAuth profile a bearer token
    /// from its token endpoint (reached through the session's trust and network policy; see
    /// [`crate::oauth`]). Asked again for every connection: the token cache answers while the
    /// token has time left.
    pub async fn login(
        &self,
        store: &Store,
        side: Side,
    ) -> Result<Result<Login, Failure>, StoreError> {
        let (m, profile) = (&self.mailbox, &self.profile);
        if profile.authentication.is_oauth() {
            return crate::oauth::login(store, self).await;
        }
        let (user, secret) = if profile.authentication.credentials_on_mailbox() {
            (
                m.username.clone().or_else(|| Some(m.email.clone())),
                m.password,
            )
        } else if side == Side::Outgoing && !profile.use_same_settings_for_outgoing {
            (profile.outgoing_username.clone(), profile.outgoing_password)
        } else {
            (profile.username.clone(), profile.password)
        };
        let (Some(user), Some(secret)) = (user, secret) else {
            let fix = if profile.authentication.credentials_on_mailbox() {
                "enter the mailbox's password (credentials are specified by the user or queue in this profile)"
            } else {
                "enter the user name and password in the email server profile"
            };
            return Ok(Err(Failure::config(
                "credentials_missing",
                format!("no credentials to sign in with: {fix}"),
            )));
        };
        Ok(Ok(Login::password(user, store.get_secret(secret).await?)))
    }

    /// The connection-slot scope on `side` and how many slots it has: the profile when it
    /// holds the credentials (every mailbox signs in as the same account), the mailbox when the
    /// mailbox does.
    pub fn slot_scope(&self, side: Side) -> (String, u32) {
        let prefix = match side {
            Side::Incoming => "",
            Side::Outgoing => "smtp:",
        };
        let max = self.profile.advanced.max_concurrent_connections.max(1);
        if self.profile.authentication.credentials_on_mailbox() {
            (format!("{prefix}mailbox:{}", self.mailbox.id), max)
        } else {
            (format!("{prefix}profile:{}", self.profile.id), max)
        }
    }

    /// Takes a free connection slot on `side` for `owner` (`None`: every slot is in use).
    pub async fn slot(
        &self,
        store: &Store,
        config: &EngineConfig,
        side: Side,
        owner: &str,
    ) -> Result<Option<ConnSlot>, StoreError> {
        let (scope, max) = self.slot_scope(side);
        ConnSlot::acquire_in(store, &scope, max, owner, config.lease_ttl).await
    }

    /// The server on `side` and how to sign in to it.
    pub(crate) async fn server_and_login(
        &self,
        store: &Store,
        side: Side,
    ) -> Result<Result<(Server, Login), Failure>, StoreError> {
        if let Err(f) = crate::oauth::discover_cloud(self).await {
            return Ok(Err(f));
        }
        let server = match self.address(side) {
            Ok(s) => s,
            Err(p) => return Ok(Err(p)),
        };
        Ok(self.login(store, side).await?.map(|login| (server, login)))
    }

    /// The mail source (the incoming server), connected and signed in. The caller holds a
    /// connection slot ([`MailboxSession::slot`]) for as long as it keeps the source open.
    pub async fn source(&self, store: &Store) -> Result<Result<MailSource, Failure>, StoreError> {
        let (server, login) = match self.server_and_login(store, Side::Incoming).await? {
            Ok(x) => x,
            Err(p) => return Ok(Err(p)),
        };
        let protocol = self.profile.incoming_protocol;
        let mut connected = MailSource::connect(protocol, &server, &login, &self.opts).await;
        if let (Err(e), Server::Ews(t)) = (&connected, &server)
            && self.forget_found_endpoint(store, e).await?
        {
            // Found again by Autodiscover, at once.
            let mut t = t.clone();
            t.url = None;
            connected = MailSource::connect(protocol, &Server::Ews(t), &login, &self.opts).await;
        }
        Ok(signed_in(&login, connected).map_err(|e| Failure::from(&e)))
    }

    /// An EWS URL found by Autodiscover that cannot be reached any more (the mailbox moved, the
    /// server was renamed) is forgotten, so the next connection looks it up again.
    async fn forget_found_endpoint(
        &self,
        store: &Store,
        e: &ConnectError,
    ) -> Result<bool, StoreError> {
        let unreachable = matches!(
            e.step,
            serversync_model::FailureStep::Dns
                | serversync_model::FailureStep::TcpConnect
                | serversync_model::FailureStep::Tls
        ) || matches!(
            e.code.as_deref(),
            Some("ews_not_found" | "mailbox_on_other_site")
        );
        if !(self.profile.auto_discover && unreachable && self.mailbox.telemetry.ews_url.is_some())
        {
            return Ok(false);
        }
        tracing::info!(mailbox = %self.mailbox.id, error = %e, "the EWS URL found before is unreachable: looking it up again");
        for _ in 0..3 {
            let s = store.fetch::<Mailbox>(&self.mailbox.id.to_string()).await?;
            let mut m = s.value;
            if m.telemetry.ews_url.take().is_none() {
                return Ok(true);
            }
            match store.update(&m, Some(s.version)).await {
                Err(StoreError::VersionMismatch { .. }) => continue,
                other => return other.map(|_| true),
            }
        }
        Ok(true)
    }

    /// The mail transport (the outgoing server), connected and signed in under one of the
    /// profile's outgoing connection slots: `Ok(None)` when every slot is in use. The slot is
    /// the caller's to release.
    pub async fn transport(
        &self,
        store: &Store,
        config: &EngineConfig,
        owner: &str,
    ) -> Result<Result<Option<(MailTransport, ConnSlot)>, Failure>, StoreError> {
        let (server, login) = match self.server_and_login(store, Side::Outgoing).await? {
            Ok(x) => x,
            Err(p) => return Ok(Err(p)),
        };
        let Some(slot) = self.slot(store, config, Side::Outgoing, owner).await? else {
            return Ok(Ok(None));
        };
        let protocol = self.profile.outgoing_protocol;
        let connected = MailTransport::connect(protocol, &server, Some(&login), &self.opts).await;
        match signed_in(&login, connected) {
            Ok(t) => Ok(Ok(Some((t, slot)))),
            Err(e) => {
                slot.release(store).await;
                Ok(Err(Failure::from(&e)))
            }
        }
    }

    /// The folder the copy of sent mail is kept in (`folder`, on the incoming server),
    /// connected and signed in; a profile whose incoming server keeps none is a failure.
    pub async fn sent_folder(
        &self,
        store: &Store,
        folder: &str,
    ) -> Result<Result<SentFolder, Failure>, StoreError> {
        let protocol = self.profile.incoming_protocol;
        if !SentFolder::available(protocol) {
            return Ok(Err(Failure::config(
                "connector_not_available",
                "the profile's incoming server keeps no Sent folder (POP3)",
            )));
        }
        let (server, login) = match self.server_and_login(store, Side::Incoming).await? {
            Ok(x) => x,
            Err(p) => return Ok(Err(p)),
        };
        let opened = SentFolder::open(protocol, &server, &login, &self.opts, folder).await;
        Ok(signed_in(&login, opened).map_err(|e| Failure::from(&e)))
    }
}

/// The outcome of signing in with `login`: a token the server refused is forgotten, so the
/// next connection (after the retry policy's wait) signs in with a new one.
pub(crate) fn signed_in<T>(login: &Login, r: Result<T, ConnectError>) -> Result<T, ConnectError> {
    if let Err(e) = &r {
        crate::oauth::refused(login, Some(e));
    }
    r
}
