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
//! Server-to-server (Exchange Online) needs the Graph connector, which does not exist yet.

use crate::policy::Failure;
use serversync_connectors::oauth::{Grant, TokenProvider, TokenRequest};
use serversync_connectors::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Login};
use serversync_model::Secret;
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::{AuthenticationType, EmailServerProfile};
use serversync_store::{Store, StoreError};
use std::sync::LazyLock;

/// The tokens of every mailbox this process signs in to, each under its own request.
static TOKENS: LazyLock<TokenProvider> = LazyLock::new(TokenProvider::new);

/// The login of an OAuth profile's mailbox: a bearer token for the mailbox's user, from the
/// cache or the token endpoint (through `opts`' trust and network policy).
pub(crate) async fn login(
    store: &Store,
    m: &Mailbox,
    profile: &EmailServerProfile,
    opts: &ConnectOptions,
) -> Result<Result<Login, Failure>, StoreError> {
    if profile.authentication == AuthenticationType::HybridModernAuth {
        return hybrid(store, m, profile, opts).await;
    }
    if profile.authentication != AuthenticationType::GmailOAuth {
        return Ok(Err(Failure::config(
            "connector_not_available",
            "server-to-server OAuth (Exchange Online over Microsoft Graph) is not available in \
             this version yet",
        )));
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

/// The token endpoint of Microsoft Entra ID for `tenant` in the profile's cloud.
fn entra_token_endpoint(o: &serversync_model::profile::OAuthSettings, tenant: &str) -> String {
    use serversync_model::profile::OAuthAuthority;
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
async fn hybrid(
    store: &Store,
    m: &Mailbox,
    profile: &EmailServerProfile,
    opts: &ConnectOptions,
) -> Result<Result<Login, Failure>, StoreError> {
    let missing = |what: &str| {
        Ok(Err(Failure::config(
            "credentials_missing",
            format!("hybrid modern authentication needs {what} in the email server profile"),
        )))
    };
    let Some(o) = &profile.oauth else {
        return missing("the app registration (oauth.client_id, tenant and secret)");
    };
    let Some(tenant) = o
        .tenant_id
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return missing("the directory (tenant) id, oauth.tenant_id");
    };
    let Some(secret_id) = o.client_secret else {
        return missing("the app registration's secret, oauth.client_secret");
    };
    let url = if profile.auto_discover {
        m.telemetry.ews_url.clone()
    } else {
        profile.incoming.as_ref().map(|e| e.location.clone())
    };
    let Some(origin) = url
        .as_deref()
        .and_then(|u| serversync_connectors::ews::http::Target::parse(u).ok())
        .map(|t| t.origin())
    else {
        return Ok(Err(Failure::config(
            "location_missing",
            "hybrid modern authentication asks Entra ID for a token to the Exchange server's \
             URL, which is not known yet: turn auto-discover off and enter the EWS URL",
        )));
    };
    let request = TokenRequest {
        endpoint: entra_token_endpoint(o, tenant),
        client_id: o.client_id.trim().to_string(),
        client_secret: Some(store.get_secret(secret_id).await?),
        grant: Grant::ClientCredentials {
            scope: Some(format!("{origin}/.default")),
        },
    };
    Ok(
        match TOKENS
            .token(&opts.trust, &opts.policy, opts.timeout, &request)
            .await
        {
            Ok(token) => Ok(Login::xoauth2(m.email.clone(), token)),
            Err(e) => Err(Failure::from(&e)),
        },
    )
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
