//! Shared helpers for the real-server tests (run them with `scripts/test.sh -p
//! serversync-connectors`). Everything talks only to the 127.0.0.1 servers the test
//! environment started, with bounded waits.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serversync_connectors::pop3::Client;
use serversync_connectors::{
    ConnectOptions, ErrorKind, FailureStep, Login, ProbeReport, Secret, ServerAddr, TlsMode,
    TlsTrust,
};
use serversync_testkit::TestEnv;

pub const ALICE: &str = "alice@example.test";
pub const BOB: &str = "bob@example.test";
pub const CAROL: &str = "carol@example.test";
pub const SUPPORT: &str = "support@example.test";

pub fn env() -> &'static TestEnv {
    TestEnv::from_env()
}

/// System roots plus the test CA, as an installation with `tls.extra_ca_files` would.
pub fn trust() -> Arc<TlsTrust> {
    Arc::new(TlsTrust::with_extra_ca_files([&env().ca_cert]).expect("trusting the test CA"))
}

pub fn opts() -> ConnectOptions {
    ConnectOptions::new(trust())
        .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed())
        .with_timeout(Duration::from_secs(15))
}

/// Only the system's roots: the test servers' certificate is not trusted.
pub fn untrusted_opts() -> ConnectOptions {
    ConnectOptions::new(Arc::new(TlsTrust::system_only().expect("system roots")))
        .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed())
        .with_timeout(Duration::from_secs(15))
}

pub fn addr(port: u16, tls: TlsMode) -> ServerAddr {
    ServerAddr::new(env().host.clone(), port, tls)
}

pub fn login(user: &str) -> Login {
    Login::password(user, Secret::new(env().password.clone()))
}

pub fn wrong_login(user: &str) -> Login {
    Login::password(user, Secret::new("definitely-not-the-password"))
}

/// A port on 127.0.0.1 where nothing listens: bound, then released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// Asserts the probe failed at `step` with `kind`, and that nothing secret leaked.
pub fn assert_failed(report: &ProbeReport, step: FailureStep, kind: ErrorKind) {
    let failure = report
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("probe succeeded, expected a {step:?} failure: {report:#?}"));
    assert_eq!(
        (failure.step, failure.kind),
        (step, kind),
        "wrong classification: {failure}\n{report:#?}"
    );
    let last = report.steps.last().expect("at least one step");
    assert!(
        !last.ok,
        "the last step must be the failed one: {report:#?}"
    );
    assert_eq!(last.step, step);
    assert!(
        report.steps[..report.steps.len() - 1].iter().all(|s| s.ok),
        "{report:#?}"
    );
    assert_no_secret(report);
}

/// The test password appears nowhere in the report.
pub fn assert_no_secret(report: &ProbeReport) {
    let text = format!("{report:?} {}", serde_json::to_string(report).unwrap());
    assert!(
        !text.contains(&env().password) && !text.contains("definitely-not-the-password"),
        "a password leaked into the report: {text}"
    );
}

/// The actions of the steps, in order.
pub fn actions(report: &ProbeReport) -> Vec<String> {
    report.steps.iter().map(|s| s.action.clone()).collect()
}

/// Submits a message from alice over STARTTLS + AUTH PLAIN with lettre (an independent
/// SMTP client), trusting the test CA.
pub async fn submit(to: &str, subject: &str, message_id: &str, body: &str) {
    let env = env();
    let ca = Certificate::from_pem(env.ca_cert_pem().unwrap().as_bytes()).unwrap();
    let tls = TlsParameters::builder(env.tls_server_name.clone())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(ca)
        .build_rustls()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(env.host.as_str())
        .port(env.submission_port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(ALICE.into(), env.password.clone()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let email = Message::builder()
        .from(format!("Alice <{ALICE}>").parse::<Mailbox>().unwrap())
        .to(to.parse::<Mailbox>().unwrap())
        .subject(subject)
        .message_id(Some(message_id.to_string()))
        .body(body.to_string())
        .unwrap();
    mailer
        .send(email)
        .await
        .expect("SMTP submission with lettre");
}

/// Connects with our POP3 client over POP3S and logs in.
pub async fn pop3_session(user: &str) -> Client {
    let mut client = Client::connect(&addr(env().pop3s_port(), TlsMode::Implicit), &opts())
        .await
        .expect("POP3S connect");
    client.login(&login(user)).await.expect("POP3 login");
    client
}

/// Waits (at most 30 s) until a message with `message_id` is in `user`'s maildrop; returns
/// its unique id (UIDL). Looks at the headers only (TOP n 0), newest first.
pub async fn wait_for_message(user: &str, message_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let needle = format!("Message-ID: {message_id}").to_ascii_lowercase();
    loop {
        let mut client = pop3_session(user).await;
        let listing = client.uidl().await.expect("UIDL");
        for entry in listing.iter().rev() {
            let head = client.top(entry.number, 0).await.expect("TOP");
            if String::from_utf8_lossy(&head)
                .to_ascii_lowercase()
                .contains(&needle)
            {
                client.quit().await.expect("QUIT");
                return entry.uid.clone();
            }
        }
        client.quit().await.expect("QUIT");
        assert!(
            Instant::now() < deadline,
            "message {message_id} did not reach {user} within 30 s; see {} and {}",
            env().postfix.log.display(),
            env().dovecot.log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A fresh Message-ID and subject token.
pub fn unique(prefix: &str) -> (String, String) {
    let token = uuid::Uuid::new_v4().simple().to_string();
    (
        format!("<{prefix}-{token}@example.test>"),
        format!("serversync connectors {prefix} {token}"),
    )
}
