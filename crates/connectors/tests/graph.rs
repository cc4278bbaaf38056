//! The Microsoft Graph connector against the Graph test double (`serversync_testkit::graph`,
//! HTTPS on 127.0.0.1 with the test CA, Entra ID's token endpoint included): tokens and each
//! Entra refusal named, test and enable and each failure it must name, the Inbox read by delta
//! in pages (MIME intact, never marked read, an expired delta link read again from the start),
//! sending with the copy in Sent Items and finding it there, throttling waited out and counted,
//! a send whose answer is lost resolving to "unknown" (never repeated), and undeliverable
//! messages moved. Every JSON body either side sent is checked against Graph's published CSDL
//! metadata by the double.

use serversync_connectors::oauth::{Grant, TokenProvider, TokenRequest};
use serversync_connectors::source::{INBOX, MailSource, UNDELIVERABLE};
use serversync_connectors::transport::{MailTransport, SentFolder, Submission};
use serversync_connectors::{
    ConnectError, ConnectOptions, FailureStep, GraphTarget, Login, NetworkPolicy, ProbeReport,
    Secret, Server, TlsTrust, probe,
};
use serversync_model::item::ItemSource;
use serversync_model::profile::{IncomingProtocol, OutgoingProtocol};
use serversync_model::sync::FolderCursor;
use serversync_testkit::graph::{Fault, GraphConfig, GraphDouble, Route, csdl_path};
use serversync_testkit::tls::TlsFiles;
use std::sync::Arc;
use std::time::Duration;

const TENANT: &str = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
const APP: &str = "0a1b2c3d-1111-4222-8333-944455566677";
const SECRET: &str = "kQ8~app-secret-value";
const ALICE: &str = "alice@contoso.test";
const MAIL_ROLES: &[&str] = &["Mail.ReadWrite", "Mail.Send"];

struct Fixture {
    double: GraphDouble,
    opts: ConnectOptions,
    tokens: TokenProvider,
    _dir: tempfile::TempDir,
}

async fn fixture(cfg: GraphConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = GraphDouble::start(
        &tls,
        GraphConfig {
            csdl: Some(csdl_path()),
            ..cfg
        },
    )
    .await
    .unwrap();
    double.add_tenant(TENANT, "contoso.test");
    double.add_app(TENANT, APP, SECRET, MAIL_ROLES);
    double.add_mailbox(TENANT, ALICE);
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap());
    let opts = ConnectOptions::new(trust)
        .with_policy(NetworkPolicy::loopback_allowed())
        .with_timeout(Duration::from_secs(20));
    Fixture {
        double,
        opts,
        tokens: TokenProvider::new(),
        _dir: dir,
    }
}

impl Fixture {
    fn request(&self, tenant: &str, client: &str, secret: &str) -> TokenRequest {
        TokenRequest {
            endpoint: self.double.token_url(tenant),
            client_id: client.into(),
            client_secret: Some(Secret::new(secret)),
            client_certificate: None,
            grant: Grant::ClientCredentials {
                scope: Some(format!("{}/.default", self.double.graph_url())),
            },
        }
    }

    async fn token(&self, tenant: &str, client: &str, secret: &str) -> Result<Login, ConnectError> {
        let req = self.request(tenant, client, secret);
        let token = self
            .tokens
            .token(&self.opts.trust, &self.opts.policy, self.opts.timeout, &req)
            .await?;
        Ok(Login::xoauth2(ALICE.to_owned(), token))
    }

    async fn login(&self) -> Login {
        self.token(TENANT, APP, SECRET).await.unwrap()
    }

    fn server(&self, mailbox: &str) -> Server {
        Server::Graph(GraphTarget {
            graph_url: self.double.graph_url(),
            mailbox: mailbox.into(),
            pinned: Vec::new(),
        })
    }

    async fn probe_in(&self, mailbox: &str, login: &Login) -> ProbeReport {
        probe::incoming(
            IncomingProtocol::Graph,
            &self.server(mailbox),
            login,
            &self.opts,
        )
        .await
        .unwrap()
    }

    async fn probe_out(&self, mailbox: &str, login: &Login) -> ProbeReport {
        probe::outgoing(
            OutgoingProtocol::Graph,
            &self.server(mailbox),
            Some(login),
            mailbox,
            &self.opts,
        )
        .await
        .unwrap()
    }

    /// Nothing either side sent strayed from Graph's metadata.
    fn assert_schema_clean(&self) {
        let v = self.double.schema_violations();
        assert!(v.is_empty(), "CSDL violations: {v:#?}");
    }
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: Sender {n} <sender{n}@example.net>\r\nTo: {ALICE}\r\nSubject: message {n} Grüße\r\n\
         Message-ID: <g{n}@example.net>\r\nDate: Thu, 01 Jan 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

fn failure_of(r: &ProbeReport) -> (FailureStep, Option<String>, String) {
    let f = r.failure.as_ref().expect("the probe failed");
    (f.step, f.code.clone(), f.message.clone())
}

#[tokio::test]
async fn entra_id_refusals_name_their_cause() {
    let f = fixture(GraphConfig::default()).await;
    let unknown_tenant = f
        .token("00000000-dead-beef-0000-000000000000", APP, SECRET)
        .await;
    let wrong_secret = f.token(TENANT, APP, "not-the-secret").await;
    f.double
        .add_app(TENANT, "expired-app", "old-secret", MAIL_ROLES);
    f.double.expire_secret(TENANT, "expired-app");
    let expired = f.token(TENANT, "expired-app", "old-secret").await;
    f.double
        .add_app(TENANT, "mfa-app", "mfa-secret", MAIL_ROLES);
    f.double.require_mfa(TENANT, "mfa-app");
    let mfa = f.token(TENANT, "mfa-app", "mfa-secret").await;
    let unknown_app = f.token(TENANT, "not-registered", SECRET).await;
    for (r, code, aadsts) in [
        (unknown_tenant, "tenant_not_found", "AADSTS90002"),
        (wrong_secret, "invalid_client_secret", "AADSTS7000215"),
        (expired, "client_secret_expired", "AADSTS7000222"),
        (mfa, "mfa_not_supported", "AADSTS53003"),
        (unknown_app, "application_not_found", "AADSTS700016"),
    ] {
        let e = r.unwrap_err();
        assert_eq!(e.step, FailureStep::Authentication, "{e}");
        assert_eq!(e.code.as_deref(), Some(code), "{e}");
        assert!(e.message.contains(aadsts), "{e}");
        assert!(!e.message.contains(SECRET), "{e}");
    }
    // The token is reused while it is valid: one grant for many sign-ins.
    f.login().await;
    f.login().await;
    let grants = f
        .double
        .requests()
        .iter()
        .filter(|r| r.path.contains("/oauth2/v2.0/token") && r.status == 200)
        .count();
    assert_eq!(grants, 1);
}

#[tokio::test]
async fn test_and_enable_passes_and_names_each_failure() {
    let f = fixture(GraphConfig::default()).await;
    let login = f.login().await;
    let r = f.probe_in(ALICE, &login).await;
    assert!(r.is_ok(), "{r:#?}");
    let actions: Vec<&str> = r.steps.iter().map(|s| s.action.as_str()).collect();
    for want in ["resolve", "connect", "TLS", "Exchange Online", "Inbox"] {
        assert!(
            actions.iter().any(|a| a.contains(want)),
            "no step {want} in {actions:?}"
        );
    }
    let r = f.probe_out(ALICE, &login).await;
    assert!(r.is_ok(), "{r:#?}");
    assert!(r.steps.iter().any(|s| s.action.contains("send permission")));
    assert!(f.double.sent().is_empty(), "test and enable sent mail");

    // An address the tenant does not know, and a mailbox hosted on-premises.
    let (step, code, _) = failure_of(&f.probe_in("nobody@contoso.test", &login).await);
    assert_eq!(
        (step, code.as_deref()),
        (FailureStep::Permission, Some("mailbox_not_found"))
    );
    f.double.add_on_premises_user(TENANT, "onprem@contoso.test");
    let (step, code, message) = failure_of(&f.probe_in("onprem@contoso.test", &login).await);
    assert_eq!(
        (step, code.as_deref()),
        (
            FailureStep::Permission,
            Some("mailbox_not_in_exchange_online")
        )
    );
    assert!(message.contains("Hybrid"), "{message}");

    // Registered without admin consent: no roles in its token.
    f.double.add_app(TENANT, "no-consent", "nc-secret", &[]);
    let bare = f.token(TENANT, "no-consent", "nc-secret").await.unwrap();
    let (step, code, message) = failure_of(&f.probe_in(ALICE, &bare).await);
    assert_eq!(
        (step, code.as_deref()),
        (FailureStep::Permission, Some("consent_missing"))
    );
    assert!(message.contains("admin consent"), "{message}");

    // May read but not send: the outgoing probe says so, and sends nothing.
    f.double
        .add_app(TENANT, "read-only", "ro-secret", &["Mail.ReadWrite"]);
    let reader = f.token(TENANT, "read-only", "ro-secret").await.unwrap();
    assert!(f.probe_in(ALICE, &reader).await.is_ok());
    let (step, code, _) = failure_of(&f.probe_out(ALICE, &reader).await);
    assert_eq!(
        (step, code.as_deref()),
        (FailureStep::Permission, Some("send_not_permitted"))
    );
    assert!(f.double.sent().is_empty());
    f.assert_schema_clean();
}

/// Reads the Inbox from `cursor` to its end as the engine does: a page, its messages, the
/// cursor moved once they are "committed"; returns what was read.
async fn read_all(
    source: &mut MailSource,
    cursor: &mut Option<FolderCursor>,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let opened = source.open(INBOX, cursor.as_ref()).await.unwrap();
        let mut next = opened.cursor.clone();
        let page = opened.listed.clone();
        let mut fetch = source.fetch(&page, 1 << 20).await.unwrap();
        while let Some(m) = fetch.next().await.unwrap() {
            let ItemSource::Graph { id, .. } = &m.source else {
                panic!("not a Graph message: {:?}", m.source)
            };
            out.push((id.clone(), m.raw));
            opened.committed(&mut next, &page[m.index]);
        }
        *cursor = Some(next);
        if !opened.more {
            return out;
        }
    }
    panic!("the Inbox never ended");
}

#[tokio::test]
async fn the_inbox_is_read_by_delta_in_pages_exactly_once_and_never_marked_read() {
    let f = fixture(GraphConfig {
        page_size: 3,
        ..GraphConfig::default()
    })
    .await;
    for n in 0..10 {
        f.double
            .deliver(ALICE, "inbox", &message(n), n.is_multiple_of(2));
    }
    let login = f.login().await;
    let mut source =
        MailSource::connect(IncomingProtocol::Graph, &f.server(ALICE), &login, &f.opts)
            .await
            .unwrap();
    let mut cursor = None;
    let first = read_all(&mut source, &mut cursor).await;
    assert_eq!(first.len(), 10);
    let mut bodies: Vec<Vec<u8>> = first.iter().map(|(_, raw)| raw.clone()).collect();
    bodies.sort();
    let mut want: Vec<Vec<u8>> = (0..10).map(message).collect();
    want.sort();
    assert_eq!(bodies, want, "the MIME came back changed");
    // Each delta page's messages in one `$batch` round trip, not one request each.
    let value_gets = |f: &Fixture| {
        f.double
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/$value"))
            .count()
    };
    let batches = f
        .double
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1.0/$batch")
        .count();
    assert_eq!(
        (value_gets(&f), batches),
        (0, 4),
        "10 messages in pages of 3"
    );

    // From the committed cursor: nothing, then only what arrived since.
    assert!(read_all(&mut source, &mut cursor).await.is_empty());
    f.double.deliver(ALICE, "inbox", &message(10), false);
    f.double.deliver(ALICE, "inbox", &message(11), false);
    let later = read_all(&mut source, &mut cursor).await;
    assert_eq!(later.len(), 2);
    assert!(
        later
            .iter()
            .all(|(id, _)| !first.iter().any(|(f, _)| f == id))
    );

    // A message throttled inside the batch is read again on its own, once Graph allows.
    f.double.inject(Fault::Throttle {
        route: Route::Value,
        status: 429,
        retry_after: Some(1),
        mailbox_concurrency: false,
    });
    f.double.deliver(ALICE, "inbox", &message(12), false);
    let throttled = read_all(&mut source, &mut cursor).await;
    assert_eq!(throttled.len(), 1);
    assert_eq!(throttled[0].1, message(12));
    assert_eq!(value_gets(&f), 1, "the throttled message alone");

    // Read state untouched.
    for m in f.double.messages(ALICE, "inbox") {
        let n: usize = m.subject.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(m.is_read, n < 10 && n.is_multiple_of(2), "{}", m.subject);
    }

    // An expired delta link: the folder is read again from the start (the engine keeps each
    // message once, by its id).
    f.double.expire_delta_tokens(ALICE);
    let again = read_all(&mut source, &mut cursor).await;
    assert_eq!(again.len(), 13);
    assert!(
        f.double.requests().iter().any(|r| r.status == 410),
        "the double never refused the delta link"
    );
    assert!(read_all(&mut source, &mut cursor).await.is_empty());
    f.assert_schema_clean();
}

#[tokio::test]
async fn sending_keeps_a_copy_in_sent_items_and_waits_out_throttling() {
    let f = fixture(GraphConfig::default()).await;
    let login = f.login().await;
    let server = f.server(ALICE);
    let mut transport =
        MailTransport::connect(OutgoingProtocol::Graph, &server, Some(&login), &f.opts)
            .await
            .unwrap();
    assert!(transport.keeps_sent_copy());
    for retry_after in [Some(1), None] {
        f.double.inject(Fault::Throttle {
            route: Route::SendMail,
            status: 429,
            retry_after,
            mailbox_concurrency: true,
        });
    }
    let rcpts = vec![
        "bob@example.net".to_owned(),
        "hidden@example.net".to_owned(),
    ];
    let msg = format!(
        "From: {ALICE}\r\nTo: bob@example.net\r\nSubject: quote\r\nMessage-ID: <out1@contoso.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    );
    let sub = transport
        .submit(ALICE, &rcpts, msg.as_bytes())
        .await
        .unwrap();
    assert_eq!(sub, Submission::Sent);
    let waits = transport.take_waits();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(
        waits[0].contains("Retry-After") && waits[0].contains("1000 ms"),
        "{waits:?}"
    );
    assert!(waits[1].contains("no Retry-After"), "{waits:?}");
    let sent = f.double.sent();
    assert_eq!(sent.len(), 1, "sent more than once");
    let text = String::from_utf8_lossy(&sent[0]);
    assert!(text.contains("Bcc: hidden@example.net"), "{text}");

    let mut folder = SentFolder::open(IncomingProtocol::Graph, &server, &login, &f.opts, "Sent")
        .await
        .unwrap();
    assert!(folder.contains("out1@contoso.test").await.unwrap());
    assert!(!folder.contains("never@contoso.test").await.unwrap());

    // The send is carried out and the answer lost: unknown, never repeated; the Sent Items
    // lookup then tells it was sent.
    f.double.inject(Fault::DropAfterServing {
        route: Route::SendMail,
    });
    let msg2 = msg.replace("out1@", "out2@");
    let sub = transport
        .submit(ALICE, &rcpts, msg2.as_bytes())
        .await
        .unwrap();
    assert!(matches!(sub, Submission::Unknown { .. }), "{sub:?}");
    assert_eq!(f.double.sent().len(), 2);
    assert!(folder.contains("out2@contoso.test").await.unwrap());
    f.assert_schema_clean();
}

#[tokio::test]
async fn undeliverable_messages_are_moved_to_a_folder_created_for_them() {
    let f = fixture(GraphConfig::default()).await;
    f.double.deliver(ALICE, "inbox", &message(1), false);
    f.double.deliver(ALICE, "inbox", &message(2), false);
    let login = f.login().await;
    let mut source =
        MailSource::connect(IncomingProtocol::Graph, &f.server(ALICE), &login, &f.opts)
            .await
            .unwrap();
    let opened = source.open(INBOX, None).await.unwrap();
    let bad: Vec<ItemSource> = opened.listed[..1]
        .iter()
        .map(|l| l.source.clone())
        .collect();
    assert_eq!(source.move_to_undeliverable(INBOX, &bad).await.unwrap(), 1);
    let moved = f.double.messages(ALICE, UNDELIVERABLE);
    assert_eq!(moved.len(), 1);
    assert!(!moved[0].is_read);
    assert_eq!(f.double.messages(ALICE, "inbox").len(), 1);
    f.assert_schema_clean();
}

#[tokio::test]
async fn a_certificate_credential_signs_in_instead_of_a_secret() {
    let f = fixture(GraphConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("app.key"), dir.path().join("app.crt"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=serversync app", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let pem = format!("{cert_pem}{}", std::fs::read_to_string(&key).unwrap());
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    f.double
        .add_app_certificate(TENANT, "cert-app", der.as_ref());
    f.double
        .add_app(TENANT, "cert-app", "unused-secret", MAIL_ROLES);
    let req = TokenRequest {
        client_secret: None,
        client_certificate: Some(Secret::new(pem.clone())),
        ..f.request(TENANT, "cert-app", "")
    };
    let token = f
        .tokens
        .token(&f.opts.trust, &f.opts.policy, f.opts.timeout, &req)
        .await
        .unwrap();
    let r = f
        .probe_in(ALICE, &Login::xoauth2(ALICE.to_owned(), token))
        .await;
    assert!(r.is_ok(), "{r:#?}");
    let asked = f
        .double
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/oauth2/v2.0/token"))
        .unwrap();
    let body = String::from_utf8_lossy(&asked.body).into_owned();
    assert!(body.contains("client_assertion="), "{body}");
    assert!(!body.contains("client_secret"), "{body}");
    // A certificate the app registration does not hold is refused, named.
    let other = TokenRequest {
        client_id: APP.into(),
        ..req
    };
    let e = f
        .tokens
        .token(&f.opts.trust, &f.opts.policy, f.opts.timeout, &other)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("invalid_client_assertion"), "{e}");
}
