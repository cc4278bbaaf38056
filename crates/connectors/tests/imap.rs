//! IMAP against the real Dovecot of the test environment.

mod common;

use common::*;
use serversync_connectors::imap;
use serversync_connectors::{ErrorKind, FailureStep, Login, Secret, TlsMode};

fn imaps() -> serversync_connectors::ServerAddr {
    addr(env().imaps_port(), TlsMode::Implicit)
}

fn imap_starttls() -> serversync_connectors::ServerAddr {
    addr(env().imap_port(), TlsMode::StartTls)
}

#[tokio::test]
async fn probe_over_imaps_succeeds_and_reports_capabilities() {
    let report = imap::probe(&imaps(), &login(ALICE), &opts()).await;
    assert!(report.is_ok(), "{report:#?}");
    assert!(report.has_capability("IDLE"), "{:?}", report.capabilities);
    assert!(
        report.has_capability("CONDSTORE"),
        "{:?}",
        report.capabilities
    );
    let actions = actions(&report);
    for expected in [
        "resolve 127.0.0.1",
        "TLS handshake",
        "greeting",
        "CAPABILITY",
        "AUTHENTICATE PLAIN as alice@example.test",
        "EXAMINE INBOX",
        "LOGOUT",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "missing step {expected}: {actions:?}"
        );
    }
    let examine = report
        .steps
        .iter()
        .find(|s| s.action == "EXAMINE INBOX")
        .unwrap();
    assert!(examine.detail.contains("read-only"), "{examine:?}");
    assert_no_secret(&report);
}

#[tokio::test]
async fn probe_with_starttls_on_the_plain_port_succeeds() {
    let report = imap::probe(&imap_starttls(), &login(ALICE), &opts()).await;
    assert!(report.is_ok(), "{report:#?}");
    assert!(report.has_capability("IDLE") && report.has_capability("CONDSTORE"));
    let actions = actions(&report);
    assert!(actions.iter().any(|a| a == "STARTTLS"), "{actions:?}");
    assert!(
        actions.iter().any(|a| a == "CAPABILITY (after STARTTLS)"),
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| a == "TLS handshake"), "{actions:?}");
}

#[tokio::test]
async fn wrong_password_fails_at_authentication() {
    for target in [imaps(), imap_starttls()] {
        let report = imap::probe(&target, &wrong_login(ALICE), &opts()).await;
        assert_failed(&report, FailureStep::Authentication, ErrorKind::Auth);
        let failure = report.failure.unwrap();
        assert!(
            failure.message.contains("AUTHENTICATIONFAILED"),
            "{failure}"
        );
        assert!(
            failure.to_string().starts_with("authentication: "),
            "{failure}"
        );
        assert!(
            failure.message.contains("check the user name and password"),
            "{failure}"
        );
    }
}

#[tokio::test]
async fn closed_port_fails_at_tcp_connect() {
    let report = imap::probe(
        &addr(closed_port(), TlsMode::Implicit),
        &login(ALICE),
        &opts(),
    )
    .await;
    assert_failed(&report, FailureStep::TcpConnect, ErrorKind::Transient);
    assert!(
        report.failure.unwrap().message.contains("refused"),
        "expected 'refused'"
    );
}

#[tokio::test]
async fn untrusted_certificate_fails_at_tls() {
    for target in [imaps(), imap_starttls()] {
        let report = imap::probe(&target, &login(ALICE), &untrusted_opts()).await;
        assert_failed(&report, FailureStep::Tls, ErrorKind::Config);
        let failure = report.failure.unwrap();
        assert!(
            failure.to_string().contains(
                "was issued by O=serversync tests, CN=serversync test CA, an authority this \
                 installation does not trust"
            ),
            "{failure}"
        );
        // What the server presented, for the report.
        let cert = failure.certificate.expect("the refused certificate");
        assert_eq!(cert.issuer, "O=serversync tests, CN=serversync test CA");
        assert!(!cert.self_signed && cert.sha256.len() == 95, "{cert:?}");
        assert_eq!(report.certificate.as_ref(), Some(&*cert));
    }
}

#[tokio::test]
async fn unknown_host_fails_at_dns() {
    let target = serversync_connectors::ServerAddr::new(
        "nonexistent.invalid",
        env().imaps_port(),
        TlsMode::Implicit,
    );
    let report = imap::probe(&target, &login(ALICE), &opts()).await;
    let failure = report.failure.clone().expect("must fail");
    assert_eq!(failure.step, FailureStep::Dns, "{failure}");
    // NXDOMAIN is a configuration error; a resolver that cannot be reached is transient.
    assert!(
        matches!(failure.kind, ErrorKind::Config | ErrorKind::Transient),
        "{failure}"
    );
    assert_eq!(report.steps.len(), 1, "{report:#?}");
}

#[tokio::test]
async fn plaintext_on_the_plain_port_is_an_explicit_opt_in_that_works() {
    let report = imap::probe(
        &addr(env().imap_port(), TlsMode::None),
        &login(ALICE),
        &opts(),
    )
    .await;
    assert!(report.is_ok(), "{report:#?}");
    assert!(
        !report.steps.iter().any(|s| s.step == FailureStep::Tls),
        "{report:#?}"
    );
}

#[tokio::test]
async fn implicit_tls_on_the_plain_port_fails_at_tls() {
    let report = imap::probe(
        &addr(env().imap_port(), TlsMode::Implicit),
        &login(ALICE),
        &opts(),
    )
    .await;
    assert_failed(&report, FailureStep::Tls, ErrorKind::Config);
    assert!(
        report
            .failure
            .unwrap()
            .message
            .contains("check the TLS mode"),
    );
}

#[tokio::test]
async fn login_command_sends_8bit_passwords_as_literals() {
    for method in [
        imap::PasswordMethod::Login,
        imap::PasswordMethod::AuthenticatePlain,
    ] {
        let conn = imap::connect(&imaps(), &opts()).await.unwrap();
        let bad = Login::password(ALICE, Secret::new("pässwörd \"quoted\""));
        let err = conn.login_using(&bad, method).await.map(drop).unwrap_err();
        // The server understood the command (a literal was accepted) and refused the
        // credentials: not a protocol error.
        assert_eq!(
            (err.step, err.kind),
            (FailureStep::Authentication, ErrorKind::Auth),
            "{method:?}: {err}"
        );
        assert!(!err.to_string().contains("pässwörd"), "{err}");
    }
}

#[tokio::test]
async fn xoauth2_not_offered_is_a_configuration_error() {
    let login = Login::xoauth2(ALICE, Secret::new("ya29.token"));
    let report = imap::probe(&imaps(), &login, &opts()).await;
    assert_failed(&report, FailureStep::Authentication, ErrorKind::Config);
}

#[tokio::test]
async fn raw_session_runs_commands_and_stays_read_only() {
    let conn = imap::connect(&imaps(), &opts()).await.unwrap();
    assert!(conn.is_tls());
    assert!(conn.greeting().starts_with("OK"), "{}", conn.greeting());
    assert!(conn.has_capability("AUTH=PLAIN"));
    // The LOGIN command (quoted strings) instead of AUTHENTICATE PLAIN.
    let mut session = conn
        .login_using(&login(ALICE), imap::PasswordMethod::Login)
        .await
        .unwrap();
    assert!(
        session.has_capability("QRESYNC"),
        "{:?}",
        session.capabilities()
    );
    let info = session.examine("INBOX").await.unwrap();
    assert!(info.read_only && info.uid_validity.is_some(), "{info:?}");
    let reply = session.command("NOOP").await.unwrap();
    assert_eq!(reply.done.status, imap::Status::Ok);
    // Dovecot 2.3 answers "NO Mailbox doesn't exist" without [NONEXISTENT]: with no code
    // to tell a missing folder from a forbidden one, it counts as a permission problem.
    let missing = session.examine("No Such Folder").await.unwrap_err();
    assert_eq!(
        (missing.step, missing.kind),
        (FailureStep::Permission, ErrorKind::Permission),
        "{missing}"
    );
    assert!(missing.message.contains("doesn't exist"), "{missing}");
    session.logout().await.unwrap();
}

#[tokio::test]
async fn another_protocol_on_the_port_fails_at_protocol() {
    // The POP3 port: "+OK Dovecot ready." is not an IMAP greeting.
    let report = imap::probe(
        &addr(env().pop3_port(), TlsMode::None),
        &login(ALICE),
        &opts(),
    )
    .await;
    assert_failed(&report, FailureStep::Protocol, ErrorKind::Permanent);
    assert!(
        report
            .failure
            .as_ref()
            .unwrap()
            .message
            .contains("does not speak IMAP"),
    );
    // Whatever answers on a port, its banner is not relayed to whoever asked for the test.
    let shown = serde_json::to_string(&report).unwrap();
    assert!(!shown.contains("Dovecot"), "{shown}");
}

#[tokio::test]
async fn a_silent_server_times_out_at_the_greeting() {
    // A local listener that accepts and never speaks (a hung server).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        drop(socket);
    });
    let opts = opts().with_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let report = imap::probe(&addr(port, TlsMode::None), &login(ALICE), &opts).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_failed(&report, FailureStep::Protocol, ErrorKind::Transient);
    assert!(
        report
            .failure
            .unwrap()
            .message
            .contains("no answer to the IMAP greeting within 300 ms"),
    );
    holder.abort();
}
