//! OAuth sign-in to mail servers: which token request a mailbox's profile makes, and the
//! process's token cache ([`TokenProvider`] from the connectors crate).
//!
//! Gmail OAuth (`AuthenticationType::GmailOAuth`) uses the refresh-token grant: the profile
//! holds the OAuth client (`oauth.client_id`, the client secret, `oauth.token_endpoint`,
//! Google's by default) and each mailbox holds the refresh token Google issued when its
//! account consented, in the mailbox's write-only secret (`password`). The user name is the
//! mailbox's user name, else its email address. Server-to-server (Exchange Online) and hybrid
//! modern authentication need the Exchange connectors, which do not exist yet.

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
    if profile.authentication != AuthenticationType::GmailOAuth {
        return Ok(Err(Failure::config(
            "connector_not_available",
            "OAuth sign-in for Exchange (server-to-server, hybrid modern authentication) is not \
             available in this version yet: use password credentials",
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
