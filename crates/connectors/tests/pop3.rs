//! POP3 against the real Dovecot of the test environment, with messages delivered through
//! the real Postfix.

mod common;

use common::*;
use serversync_connectors::pop3::{self, Client};
use serversync_connectors::{ErrorKind, FailureStep, Secret, TlsMode};

fn pop3s() -> serversync_connectors::ServerAddr {
    addr(env().pop3s_port(), TlsMode::Implicit)
}

fn pop3_stls() -> serversync_connectors::ServerAddr {
    addr(env().pop3_port(), TlsMode::StartTls)
}

#[tokio::test]
async fn probe_over_pop3s_and_stls_succeeds() {
    for target in [pop3s(), pop3_stls()] {
        let report = pop3::probe(&target, &login(SUPPORT), &opts()).await;
        assert!(report.is_ok(), "{target}: {report:#?}");
        assert!(report.has_capability("UIDL"), "{:?}", report.capabilities);
        assert!(report.has_capability("TOP"), "{:?}", report.capabilities);
        let actions = actions(&report);
        for expected in [
            "greeting",
            "CAPA",
            "AUTH PLAIN as support@example.test",
            "STAT",
            "QUIT",
        ] {
            assert!(
                actions.iter().any(|a| a == expected),
                "{target}: missing {expected}: {actions:?}"
            );
        }
        if target.tls == TlsMode::StartTls {
            assert!(actions.iter().any(|a| a == "STLS"), "{actions:?}");
            assert!(
                actions.iter().any(|a| a == "CAPA (after STLS)"),
                "{actions:?}"
            );
        }
        assert_no_secret(&report);
    }
}

#[tokio::test]
async fn wrong_password_fails_at_authentication() {
    for target in [pop3s(), pop3_stls()] {
        let report = pop3::probe(&target, &wrong_login(SUPPORT), &opts()).await;
        assert_failed(&report, FailureStep::Authentication, ErrorKind::Auth);
        let failure = report.failure.unwrap();
        // Dovecot announces RESP-CODES / AUTH-RESP-CODE and says -ERR [AUTH].
        assert!(failure.message.contains("[AUTH]"), "{failure}");
    }
    // USER/PASS too.
    let mut client = Client::connect(&pop3s(), &opts()).await.unwrap();
    let err = client
        .user_pass(SUPPORT, &Secret::new("definitely-not-the-password"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.step, err.kind),
        (FailureStep::Authentication, ErrorKind::Auth),
        "{err}"
    );
    assert!(!err.to_string().contains("definitely-not-the-password"));
}

#[tokio::test]
async fn untrusted_certificate_fails_at_tls() {
    for target in [pop3s(), pop3_stls()] {
        let report = pop3::probe(&target, &login(SUPPORT), &untrusted_opts()).await;
        assert_failed(&report, FailureStep::Tls, ErrorKind::Config);
    }
}

#[tokio::test]
async fn closed_port_fails_at_tcp_connect() {
    let report = pop3::probe(
        &addr(closed_port(), TlsMode::Implicit),
        &login(SUPPORT),
        &opts(),
    )
    .await;
    assert_failed(&report, FailureStep::TcpConnect, ErrorKind::Transient);
}

#[tokio::test]
async fn user_pass_login_works() {
    let mut client = Client::connect(&pop3_stls(), &opts()).await.unwrap();
    assert!(client.is_tls());
    assert!(
        client.greeting().starts_with("+OK"),
        "{}",
        client.greeting()
    );
    assert!(client.sasl_mechanisms().contains(&"PLAIN".to_string()));
    client
        .user_pass(SUPPORT, &Secret::new(env().password.clone()))
        .await
        .unwrap();
    client.stat().await.unwrap();
    client.noop().await.unwrap();
    client.quit().await.unwrap();
}

/// A message delivered by SMTP is read back by UIDL/LIST/TOP/RETR, dot-unstuffed, and is
/// still on the server after QUIT (DELE followed by RSET removes nothing).
#[tokio::test]
async fn retrieves_real_messages_and_leaves_them_on_the_server() {
    let (message_id, subject) = unique("pop3");
    // Lines that begin with a dot are dot-stuffed on the wire in both directions.
    let body = "First line.\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n";
    submit(BOB, &subject, &message_id, body).await;
    let uid = wait_for_message(BOB, &message_id).await;

    let mut client = pop3_session(BOB).await;
    let before = client.stat().await.unwrap();
    assert!(before.count >= 1, "{before:?}");
    let uidl = client.uidl().await.unwrap();
    assert_eq!(uidl.len() as u32, before.count, "{uidl:?}");
    let entry = uidl.iter().find(|e| e.uid == uid).expect("uid listed");
    let list = client.list().await.unwrap();
    let size = list
        .iter()
        .find(|l| l.number == entry.number)
        .expect("listed")
        .size;
    assert_eq!(client.uidl_one(entry.number).await.unwrap(), uid);

    let message = client.retr(entry.number).await.unwrap();
    let text = String::from_utf8_lossy(&message);
    assert!(text.contains(&format!("Subject: {subject}")), "{text}");
    assert!(
        text.contains("\r\n\r\nFirst line.\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"),
        "dot-unstuffing: {text:?}"
    );
    // LIST's size is the message with CR LF line endings, as RETR returns it.
    assert_eq!(message.len() as u64, size, "{text:?}");

    let head = client.top(entry.number, 1).await.unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.contains(&message_id) && head.ends_with("\r\n\r\nFirst line.\r\n"),
        "{head:?}"
    );

    client.dele(entry.number).await.unwrap();
    client.rset().await.unwrap();
    client.quit().await.unwrap();

    // Still there afterwards, with the same unique id.
    let mut client = pop3_session(BOB).await;
    let after = client.stat().await.unwrap();
    assert!(after.count >= before.count, "{before:?} → {after:?}");
    let uidl = client.uidl().await.unwrap();
    let entry = uidl.iter().find(|e| e.uid == uid).expect("message kept");
    assert_eq!(client.retr(entry.number).await.unwrap(), message);
    client.quit().await.unwrap();
}

#[tokio::test]
async fn message_size_limit_is_enforced() {
    let (message_id, subject) = unique("pop3-limit");
    submit(SUPPORT, &subject, &message_id, &"x".repeat(4000)).await;
    let uid = wait_for_message(SUPPORT, &message_id).await;
    let mut client = pop3_session(SUPPORT).await;
    let number = client
        .uidl()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.uid == uid)
        .unwrap()
        .number;
    client.set_max_message_size(1024);
    let err = client.retr(number).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("larger than the limit"), "{err}");
}
