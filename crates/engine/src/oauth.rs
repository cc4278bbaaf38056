//! OAuth sign-in to mail servers: which token request a mailbox's profile makes, and the
//! process's token cache ([`TokenProvider`] from the connectors crate).
//!
//! Gmail OAuth (`AuthenticationType::GmailOAuth`) uses the refresh-token grant: the profile
//! holds the OAuth client (`oauth.client_id`, the client secret, `oauth.token_endpoint`,
//! Google's by default) and each mailbox holds the refresh token Google issued when its
//! account consented, in the mailbox's write-only secret (`password`). The user name is the
//! mailbox's user name, else its email address.
//!
//! Hybrid Modern Authentication (`AuthenticationType::HybridModernAuth`, Exchange Server in a
//! hybrid deployment) uses the client-credentials grant of the profile's app registration at
//! Microsoft Entra ID (`https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`, or the
//! US Government or China cloud's, or the profile's `oauth.token_endpoint`), for the scope
//! `<EWS origin>/.default`; the token then acts on each mailbox through impersonation.
//!
//! Server-to-server authentication (`AuthenticationType::ServerToServer`, Exchange Online over
//! Microsoft Graph) uses the same client-credentials grant for the scope
//! `<Graph root>/.default` (`https://graph.microsoft.com/.default` in the public cloud); the
//! token acts on every mailbox of the tenant the application is consented in (the mailbox's
//! tenant: for cross-tenant sync, the other tenant's). Entra ID's refusals keep their
//! `AADSTS` code and text and get a specific code (`invalid_client_secret`,
//! `client_secret_expired`, `tenant_not_found`, `mfa_not_supported`, …).

use crate::policy::Failure;
use crate::session::MailboxSession;
use serversync_connectors::oauth::EntraCloud;
use serversync_connectors::oauth::{Grant, TokenProvider, TokenRequest};
use serversync_connectors::{ConnectError, ErrorKind, FailureStep, Login};
use serversync_model::profile::{AuthenticationType, EmailServerProfile, OAuthSettings};
use serversync_model::{Secret, SecretId};
use serversync_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// The tokens of every mailbox this process signs in to, each under its own request.
static TOKENS: LazyLock<TokenProvider> = LazyLock::new(TokenProvider::new);

/// The login of an OAuth profile's mailbox: a bearer token for the mailbox's user, from the
/// cache or the token endpoint (through `opts`' trust and network policy).
pub(crate) async fn login(
    store: &Store,
    session: &MailboxSession,
) -> Result<Result<Login, Failure>, StoreError> {
    let (m, profile, opts) = (&session.mailbox, &session.profile, &session.opts);
    match profile.authentication {
        AuthenticationType::HybridModernAuth => return hybrid(store, session).await,
        AuthenticationType::ServerToServer => return server_to_server(store, session).await,
        AuthenticationType::GmailOAuth => {}
        _ => {
            return Ok(Err(Failure::config(
                "credentials_missing",
                "the profile's authentication type does not sign in with OAuth",
            )));
        }
    }
    let Some(o) = &profile.oauth else {
        return Ok(Err(Failure::config(
            "credentials_missing",
            "Gmail OAuth needs the OAuth client: enter oauth.client_id and the client secret in \
             the email server profile",
        )));
    };
    let Some(secret_id) = o.client_secret else {
        return Ok(Err(Failure::config(
            "credentials_missing",
            "Gmail OAuth needs the OAuth client's secret: enter oauth.client_secret in the email \
             server profile",
        )));
    };
    let Some(refresh_id) = m.password else {
        return Ok(Err(Failure::config(
            "credentials_missing",
            "no refresh token to sign in with: Gmail OAuth signs in with the refresh token \
             Google issued when the mailbox's account consented; enter it as the mailbox's \
             password",
        )));
    };
    let client_secret: Secret = store.get_secret(secret_id).await?;
    let refresh_token: Secret = store.get_secret(refresh_id).await?;
    let request = TokenRequest {
        endpoint: o.gmail_token_endpoint().to_string(),
        client_id: o.client_id.trim().to_string(),
        client_secret: Some(client_secret),
        client_certificate: None,
        grant: Grant::RefreshToken {
            refresh_token,
            scope: None,
        },
    };
    let user = m.username.clone().unwrap_or_else(|| m.email.clone());
    Ok(
        match TOKENS
            .token(&opts.trust, &opts.policy, opts.timeout, &request)
            .await
        {
            Ok(token) => Ok(Login::xoauth2(user, token)),
            Err(e) => Err(Failure::from(&e)),
        },
    )
}

/// Entra ID's authority the metadata of an automatic profile's tenant is asked at.
const DISCOVERY_AUTHORITY: &str = "https://login.microsoftonline.com";
/// How long a tenant's cloud is remembered.
const CLOUD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The clouds of tenants looked up, by authority and tenant, with when.
type Clouds = HashMap<(String, String), (EntraCloud, std::time::Instant)>;
static CLOUDS: LazyLock<Mutex<Clouds>> = LazyLock::new(Default::default);

/// For an Exchange Online profile whose authority is automatic: the tenant's cloud from
/// Entra ID's OpenID metadata (at the configured `login_url`, else at
/// login.microsoftonline.com, which answers for every cloud's tenants), remembered for a day,
/// kept on the session for [`graph_root`] and the token endpoint. Nothing to do for other
/// profiles or when the tenant id is missing (signing in reports that).
pub(crate) async fn discover_cloud(session: &MailboxSession) -> Result<(), Failure> {
    use serversync_model::profile::OAuthAuthority;
    let p = &session.profile;
    let Some(o) = p.oauth.as_ref() else {
        return Ok(());
    };
    let tenant = o.tenant_id.as_deref().map(str::trim).unwrap_or_default();
    if p.authentication != AuthenticationType::ServerToServer
        || o.authority != OAuthAuthority::Automatic
        || tenant.is_empty()
        || session.cloud.get().is_some()
    {
        return Ok(());
    }
    let authority = session
        .login_url
        .as_deref()
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .unwrap_or(DISCOVERY_AUTHORITY)
        .to_owned();
    let key = (authority.clone(), tenant.to_ascii_lowercase());
    let known = {
        let c = CLOUDS.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&key)
            .filter(|(_, at)| at.elapsed() < CLOUD_TTL)
            .map(|(cloud, _)| cloud.clone())
    };
    let cloud = match known {
        Some(c) => c,
        None => {
            let opts = &session.opts;
            let cloud = serversync_connectors::oauth::entra_cloud(
                &opts.trust,
                &opts.policy,
                opts.timeout,
                &authority,
                tenant,
            )
            .await
            .map_err(|e| Failure::from(&e))?;
            CLOUDS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (cloud.clone(), std::time::Instant::now()));
            cloud
        }
    };
    let _ = session.cloud.set(cloud);
    Ok(())
}

/// Microsoft Graph's root for the session's profile: the configured one, else its cloud's
/// (automatic: the one Entra ID's metadata named, else the public cloud).
pub(crate) fn graph_root(session: &MailboxSession) -> String {
    use serversync_connectors::graph;
    use serversync_model::profile::OAuthAuthority;
    if let Some(u) = session
        .graph_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        return u.trim().trim_end_matches('/').to_owned();
    }
    if let Some(c) = session.cloud.get() {
        return c.graph_root.clone();
    }
    match session.profile.oauth.as_ref().map(|o| o.authority) {
        Some(OAuthAuthority::UsGovernment) => graph::US_GOVERNMENT,
        Some(OAuthAuthority::China) => graph::CHINA,
        _ => graph::PUBLIC,
    }
    .to_owned()
}

/// The token endpoint of Microsoft Entra ID for `tenant` in the profile's cloud.
fn entra_token_endpoint(
    session: &MailboxSession,
    o: &serversync_model::profile::OAuthSettings,
    tenant: &str,
) -> String {
    use serversync_model::profile::OAuthAuthority;
    if let Some(c) = session.cloud.get() {
        return c.token_endpoint.clone();
    }
    if let Some(login) = session
        .login_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        return format!(
            "{}/{tenant}/oauth2/v2.0/token",
            login.trim().trim_end_matches('/')
        );
    }
    if let Some(t) = o
        .token_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return t.to_owned();
    }
    let host = match o.authority {
        OAuthAuthority::UsGovernment => "login.microsoftonline.us",
        OAuthAuthority::China => "login.chinacloudapi.cn",
        OAuthAuthority::Automatic | OAuthAuthority::Public => "login.microsoftonline.com",
    };
    format!("https://{host}/{tenant}/oauth2/v2.0/token")
}

/// Hybrid Modern Authentication: the app's own token for the on-premises EWS (its origin is
/// the token's audience).
/// How the app registration proves itself: its secret, or its certificate (preferred when
/// both are set).
#[derive(Clone, Copy)]
enum Credential {
    Secret(SecretId),
    Certificate(SecretId),
}

/// The profile's app registration: its settings, tenant and credential; or what is missing.
fn app_registration<'a>(
    profile: &'a EmailServerProfile,
    what: &str,
) -> Result<(&'a OAuthSettings, &'a str, Credential), Failure> {
    let missing = |field: &str| {
        Failure::config(
            "credentials_missing",
            format!("{what} needs {field} in the email server profile"),
        )
    };
    let o = profile
        .oauth
        .as_ref()
        .ok_or_else(|| missing("the app registration (oauth.client_id, tenant and secret)"))?;
    if o.client_id.trim().is_empty() {
        return Err(missing("the application (client) id, oauth.client_id"));
    }
    let tenant = o
        .tenant_id
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| missing("the directory (tenant) id, oauth.tenant_id"))?;
    let credential = match (o.client_certificate, o.client_secret) {
        (Some(c), _) => Credential::Certificate(c),
        (None, Some(s)) => Credential::Secret(s),
        (None, None) => {
            return Err(missing(
                "the app registration's secret (oauth.client_secret) or certificate \
                 (oauth.client_certificate)",
            ));
        }
    };
    Ok((o, tenant, credential))
}

/// Asks for (or reuses) the application's token for `scope` and signs in as `user` with it.
async fn app_token(
    store: &Store,
    session: &MailboxSession,
    (o, tenant, credential): (&OAuthSettings, &str, Credential),
    scope: String,
    user: &str,
) -> Result<Result<Login, Failure>, StoreError> {
    let request = TokenRequest {
        endpoint: entra_token_endpoint(session, o, tenant),
        client_id: o.client_id.trim().to_string(),
        client_secret: match credential {
            Credential::Secret(id) => Some(store.get_secret(id).await?),
            Credential::Certificate(_) => None,
        },
        client_certificate: match credential {
            Credential::Certificate(id) => Some(store.get_secret(id).await?),
            Credential::Secret(_) => None,
        },
        grant: Grant::ClientCredentials { scope: Some(scope) },
    };
    let opts = &session.opts;
    Ok(
        match TOKENS
            .token(&opts.trust, &opts.policy, opts.timeout, &request)
            .await
        {
            Ok(token) => Ok(Login::xoauth2(user.to_owned(), token)),
            Err(e) => Err(Failure::from(&e)),
        },
    )
}

/// Server-to-server authentication (Exchange Online): the application's token for Graph.
async fn server_to_server(
    store: &Store,
    session: &MailboxSession,
) -> Result<Result<Login, Failure>, StoreError> {
    let app = match app_registration(&session.profile, "server-to-server authentication") {
        Ok(a) => a,
        Err(f) => return Ok(Err(f)),
    };
    if let Err(f) = discover_cloud(session).await {
        return Ok(Err(f));
    }
    let scope = format!("{}/.default", graph_root(session));
    app_token(store, session, app, scope, &session.mailbox.email).await
}

async fn hybrid(
    store: &Store,
    session: &MailboxSession,
) -> Result<Result<Login, Failure>, StoreError> {
    let (m, profile) = (&session.mailbox, &session.profile);
    let app = match app_registration(profile, "hybrid modern authentication") {
        Ok(a) => a,
        Err(f) => return Ok(Err(f)),
    };
    let url = if profile.auto_discover {
        m.telemetry.ews_url.clone()
    } else {
        profile.incoming.as_ref().map(|e| e.location.clone())
    };
    let Some(origin) = url
        .as_deref()
        .and_then(|u| serversync_connectors::https::Target::parse(u).ok())
        .map(|t| t.origin())
    else {
        return Ok(Err(Failure::config(
            "location_missing",
            "hybrid modern authentication asks Entra ID for a token to the Exchange server's \
             URL, which is not known yet: turn auto-discover off and enter the EWS URL",
        )));
    };
    app_token(store, session, app, format!("{origin}/.default"), &m.email).await
}

/// After a connection failed: when `login` is a token the server refused (an authentication
/// failure), it is dropped from the cache so the next sign-in gets a new one. True when the
/// caller should try once more with a new token.
pub(crate) fn refused(login: &Login, failure: Option<&ConnectError>) -> bool {
    match (login, failure) {
        (Login::XOAuth2 { access_token, .. }, Some(e))
            if e.step == FailureStep::Authentication && e.kind == ErrorKind::Auth =>
        {
            TOKENS.forget_token(access_token);
            true
        }
        _ => false,
    }
}
