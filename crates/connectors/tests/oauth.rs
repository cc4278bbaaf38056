//! OAuth against real servers: the token provider against the testkit's OAuth server (grants,
//! caching, revocation, a wrong client secret, the network policy), and IMAP sign-in with
//! SASL XOAUTH2 and OAUTHBEARER against a private Dovecot whose `oauth2` passdb asks that
//! server's introspection endpoint.

use std::sync::Arc;
use std::time::Duration;

use serversync_connectors::imap;
use serversync_connectors::oauth::{Grant, TokenProvider, TokenRequest};
use serversync_connectors::{
    ConnectOptions, ErrorKind, FailureStep, Login, NetworkPolicy, Secret, ServerAddr, TlsMode,
    TlsTrust,
};
use serversync_testkit::oauth::REVOKED_DESCRIPTION;
use serversync_testkit::{Dovecot, DovecotOptions, OAuthServer, TlsFiles};

const ALICE: &str = "alice@example.test";
const CLIENT_ID: &str = "client-1";
const CLIENT_SECRET: &str = "client-secret-1";

struct Setup {
    _dir: tempfile::TempDir,
    oauth: OAuthServer,
    tls: TlsFiles,
    trust: Arc<TlsTrust>,
}

async fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("serversync-oauth-")
        .tempdir_in("/tmp")
        .unwrap();
    let tls = TlsFiles::ensure(&dir.path().join("tls")).unwrap();
    let oauth = OAuthServer::start(&tls, CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap());
    Setup {
        _dir: dir,
        oauth,
        tls,
        trust,
    }
}

fn refresh(s: &Setup, token: &str, secret: &str) -> TokenRequest {
    TokenRequest {
        endpoint: s.oauth.token_url().into(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(Secret::new(secret)),
        client_certificate: None,
        grant: Grant::RefreshToken {
            refresh_token: Secret::new(token),
            scope: None,
        },
    }
}

const TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn token_provider_grants_caches_and_reports_refusals() {
    let s = setup().await;
    let policy = Arc::new(NetworkPolicy::loopback_allowed());
    let provider = TokenProvider::new();
    let rt = s.oauth.issue_refresh_token(ALICE);
    let req = refresh(&s, &rt, CLIENT_SECRET);

    let first = provider
        .token(&s.trust, &policy, TIMEOUT, &req)
        .await
        .unwrap();
    let again = provider
        .token(&s.trust, &policy, TIMEOUT, &req)
        .await
        .unwrap();
    assert_eq!(first, again, "an hour-long token is reused");
    assert_eq!(s.oauth.refresh_grants(), 1);

    // Revoked: refused with the endpoint's reason, at step authentication, no secret quoted.
    s.oauth.revoke_refresh_token(&rt);
    provider.forget(&req);
    let e = provider
        .token(&s.trust, &policy, TIMEOUT, &req)
        .await
        .unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Authentication, ErrorKind::Auth)
    );
    assert!(e.message.contains("invalid_grant"), "{e}");
    assert!(e.message.contains(REVOKED_DESCRIPTION), "{e}");
    assert!(
        !e.message.contains(&rt) && !e.message.contains(CLIENT_SECRET),
        "{e}"
    );

    // A wrong client secret.
    let rt2 = s.oauth.issue_refresh_token(ALICE);
    let e = provider
        .token(&s.trust, &policy, TIMEOUT, &refresh(&s, &rt2, "wrong"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("invalid_client"), "{e}");

    // The client-credentials grant.
    s.oauth.allow_client_credentials("service@example.test");
    let cc = TokenRequest {
        grant: Grant::ClientCredentials { scope: None },
        ..refresh(&s, "", CLIENT_SECRET)
    };
    provider
        .token(&s.trust, &policy, TIMEOUT, &cc)
        .await
        .unwrap();
    assert_eq!(s.oauth.client_credentials_grants(), 1);

    // The production policy refuses the loopback token endpoint, before any request.
    let public_only = Arc::new(NetworkPolicy::default());
    let e = provider
        .token(
            &s.trust,
            &public_only,
            TIMEOUT,
            &refresh(&s, &rt2, CLIENT_SECRET),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Authentication, ErrorKind::Config)
    );
    assert!(e.message.contains("network.allow_ranges"), "{e}");
    assert_eq!(s.oauth.refresh_grants(), 1);

    // Only https:// endpoints.
    let plain = TokenRequest {
        endpoint: s.oauth.introspection_url().into(),
        ..refresh(&s, &rt2, CLIENT_SECRET)
    };
    let e = provider
        .token(&s.trust, &policy, TIMEOUT, &plain)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("https://"), "{e}");
}

async fn dovecot(s: &Setup, sub: &str, extra_config: &str) -> Dovecot {
    Dovecot::start_with(
        &s._dir.path().join(sub),
        &DovecotOptions {
            tls: Some(s.tls.clone()),
            oauth2_introspection_url: Some(s.oauth.introspection_url().into()),
            extra_config: extra_config.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn opts(s: &Setup) -> ConnectOptions {
    ConnectOptions::new(s.trust.clone())
        .with_policy(NetworkPolicy::loopback_allowed())
        .with_timeout(TIMEOUT)
}

async fn bearer(s: &Setup) -> Secret {
    let rt = s.oauth.issue_refresh_token(ALICE);
    TokenProvider::new()
        .token(
            &s.trust,
            &Arc::new(NetworkPolicy::loopback_allowed()),
            TIMEOUT,
            &refresh(s, &rt, CLIENT_SECRET),
        )
        .await
        .unwrap()
}

/// Signs in as Alice with `token`, checking the mechanism chosen from the capabilities.
async fn sign_in(
    s: &Setup,
    d: &Dovecot,
    token: Secret,
    mechanism: &str,
) -> serversync_connectors::Result<()> {
    let a = ServerAddr::new("localhost", d.info().imaps_port, TlsMode::Implicit);
    let conn = imap::connect(&a, &opts(s)).await.unwrap();
    let login = Login::xoauth2(ALICE, token);
    assert_eq!(conn.login_method(&login), mechanism);
    conn.login(&login).await.map(|_| ())
}

#[tokio::test]
async fn imap_xoauth2_and_oauthbearer_against_dovecot() {
    let s = setup().await;

    let d = dovecot(&s, "both", "").await;
    let token = bearer(&s).await;
    sign_in(&s, &d, token.clone(), "AUTHENTICATE XOAUTH2")
        .await
        .unwrap();
    assert!(s.oauth.introspections() >= 1);
    // Expired: refused at step authentication with the server's decoded XOAUTH2 status.
    s.oauth.expire_access_tokens();
    let e = sign_in(&s, &d, token.clone(), "AUTHENTICATE XOAUTH2")
        .await
        .unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Authentication, ErrorKind::Auth)
    );
    assert!(e.message.contains("\"status\""), "{e}");
    assert!(!e.message.contains(token.expose()), "{e}");
    drop(d);

    // A server offering only OAUTHBEARER (a later auth_mechanisms replaces the first).
    let d = dovecot(&s, "bearer", "auth_mechanisms = plain login oauthbearer\n").await;
    let token = bearer(&s).await;
    sign_in(&s, &d, token.clone(), "AUTHENTICATE OAUTHBEARER")
        .await
        .unwrap();
    s.oauth.expire_access_tokens();
    let e = sign_in(&s, &d, token.clone(), "AUTHENTICATE OAUTHBEARER")
        .await
        .unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Authentication, ErrorKind::Auth)
    );
    assert!(
        e.message.contains("invalid_token") || e.message.contains("status"),
        "{e}"
    );
    assert!(!e.message.contains(token.expose()), "{e}");
}
