//! SMTP against the real Postfix of the test environment (submission with STARTTLS + SASL
//! through Dovecot, and the plain MTA port).

mod common;

use std::collections::HashSet;

use common::*;
use serversync_connectors::smtp;
use serversync_connectors::{ErrorKind, FailureStep, TlsMode};

fn submission() -> serversync_connectors::ServerAddr {
    addr(env().submission_port(), TlsMode::StartTls)
}

async fn uids(user: &str) -> HashSet<String> {
    let mut client = pop3_session(user).await;
    let uids = client
        .uidl()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.uid)
        .collect();
    client.quit().await.unwrap();
    uids
}

/// The probe authenticates and gets MAIL FROM accepted, and nothing reaches the mailbox:
/// a canary submitted right after it is the only new message.
#[tokio::test]
async fn submission_probe_succeeds_and_sends_nothing() {
    let before = uids(CAROL).await;

    let report = smtp::probe(&submission(), Some(&login(CAROL)), CAROL, &opts()).await;
    assert!(report.is_ok(), "{report:#?}");
    for cap in ["SIZE", "DSN", "PIPELINING", "ENHANCEDSTATUSCODES", "AUTH"] {
        assert!(
            report.has_capability(cap),
            "{cap}: {:?}",
            report.capabilities
        );
    }
    let actions = actions(&report);
    for expected in [
        "STARTTLS",
        "AUTH PLAIN as carol@example.test",
        "MAIL FROM:<carol@example.test>",
        "RSET",
        "QUIT",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "missing {expected}: {actions:?}"
        );
    }
    assert_no_secret(&report);

    // Postfix delivers in order of arrival; once the canary is in, anything the probe
    // might have sent would be too.
    let (canary_id, subject) = unique("smtp-canary");
    submit(CAROL, &subject, &canary_id, "canary\r\n").await;
    let canary_uid = wait_for_message(CAROL, &canary_id).await;
    let after = uids(CAROL).await;
    let new: Vec<_> = after.difference(&before).collect();
    assert_eq!(new, vec![&canary_uid], "the probe delivered something");
}

#[tokio::test]
async fn wrong_password_fails_at_authentication_with_535() {
    let report = smtp::probe(&submission(), Some(&wrong_login(CAROL)), CAROL, &opts()).await;
    assert_failed(&report, FailureStep::Authentication, ErrorKind::Auth);
    let failure = report.failure.unwrap();
    assert!(failure.message.contains("535 5.7.8"), "{failure}");
}

#[tokio::test]
async fn untrusted_certificate_fails_at_tls() {
    let report = smtp::probe(&submission(), Some(&login(CAROL)), CAROL, &untrusted_opts()).await;
    assert_failed(&report, FailureStep::Tls, ErrorKind::Config);
    assert!(
        report
            .failure
            .unwrap()
            .message
            .contains("an authority this installation does not trust"),
        "expected an untrusted-certificate message"
    );
}

#[tokio::test]
async fn plaintext_submission_offers_no_auth() {
    // Postfix offers AUTH only after STARTTLS (smtpd_tls_auth_only).
    let report = smtp::probe(
        &addr(env().submission_port(), TlsMode::None),
        Some(&login(CAROL)),
        CAROL,
        &opts(),
    )
    .await;
    assert_failed(&report, FailureStep::Tls, ErrorKind::Config);
}

#[tokio::test]
async fn closed_port_fails_at_tcp_connect() {
    let report = smtp::probe(
        &addr(closed_port(), TlsMode::StartTls),
        Some(&login(CAROL)),
        CAROL,
        &opts(),
    )
    .await;
    assert_failed(&report, FailureStep::TcpConnect, ErrorKind::Transient);
}

#[tokio::test]
async fn relay_without_credentials_and_refused_sender() {
    // The MTA port takes mail without authentication.
    let mta = addr(env().smtp_port(), TlsMode::StartTls);
    let report = smtp::probe(&mta, None, ALICE, &opts()).await;
    assert!(report.is_ok(), "{report:#?}");

    // A sender Postfix refuses ("501 5.1.7 Bad sender address syntax"; it accepts
    // `a@b@example.test`): the permission step, a configuration error, with the enhanced
    // status code in the message.
    let report = smtp::probe(&mta, None, "x@-bad-.example", &opts()).await;
    assert_failed(&report, FailureStep::Permission, ErrorKind::Config);
    let failure = report.failure.unwrap();
    assert!(failure.message.contains("501 5.1.7"), "{failure}");
    assert!(
        failure.message.contains("check the sender address"),
        "{failure}"
    );
}

#[tokio::test]
async fn connection_helpers() {
    let mut conn = smtp::connect(&submission(), &opts()).await.unwrap();
    assert!(conn.is_tls());
    assert!(conn.greeting().starts_with("220 "), "{}", conn.greeting());
    assert!(conn.hello_name().starts_with('['), "{}", conn.hello_name());
    assert!(conn.has_extension("size"));
    assert_eq!(conn.auth_mechanisms(), vec!["PLAIN", "LOGIN"]);
    // The AUTH LOGIN path, right and wrong.
    let mut other = smtp::connect(&submission(), &opts()).await.unwrap();
    let err = other
        .login_using(&wrong_login(CAROL), smtp::AuthMethod::Login)
        .await
        .unwrap_err();
    assert_eq!(
        (err.step, err.kind),
        (FailureStep::Authentication, ErrorKind::Auth),
        "{err}"
    );
    other.quit().await.unwrap();
    let mut other = smtp::connect(&submission(), &opts()).await.unwrap();
    other
        .login_using(&login(CAROL), smtp::AuthMethod::Login)
        .await
        .unwrap();
    other.mail_from(CAROL).await.unwrap();
    other.rset().await.unwrap();
    other.quit().await.unwrap();
    let reply = conn.command("NOOP").await.unwrap();
    assert_eq!(reply.code, 250);
    conn.quit().await.unwrap();
}

/// With PIPELINING announced, MAIL FROM, every RCPT TO and DATA reach the server before it
/// has answered any of them (one round trip), and the replies are matched to them in order.
/// A client waiting for each reply would stall here: this server answers only once it has
/// all three commands.
#[tokio::test]
async fn a_pipelining_server_gets_the_envelope_in_one_write() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (r, mut w) = socket.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        w.write_all(b"220 peer ESMTP\r\n").await.unwrap();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("EHLO "), "{line}");
        w.write_all(b"250-peer\r\n250 PIPELINING\r\n")
            .await
            .unwrap();
        let mut envelope = Vec::new();
        while envelope.last().is_none_or(|l: &String| l != "DATA\r\n") {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            envelope.push(line.clone());
        }
        w.write_all(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n")
            .await
            .unwrap();
        // The half-refused envelope is abandoned: the connection closes without a message.
        line.clear();
        let n = r.read_line(&mut line).await.unwrap();
        (envelope, n, line)
    });
    let mut conn = smtp::connect(&addr(port, TlsMode::None), &opts())
        .await
        .unwrap();
    let rcpts = vec![
        "bob@example.test".to_owned(),
        "nobody@example.test".to_owned(),
    ];
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.envelope("carol@example.test", &rcpts),
    )
    .await
    .expect("the envelope went in one write")
    .unwrap();
    let (envelope, n, rest) = server.await.unwrap();
    assert_eq!(
        envelope,
        [
            "MAIL FROM:<carol@example.test>\r\n",
            "RCPT TO:<bob@example.test>\r\n",
            "RCPT TO:<nobody@example.test>\r\n",
            "DATA\r\n"
        ]
    );
    match outcome {
        smtp::Envelope::RecipientRefused {
            index,
            reply,
            reusable,
        } => {
            assert_eq!((index, reply.code, reusable), (1, 550, false));
        }
        other => panic!("expected the second recipient refused: {other:?}"),
    }
    assert_eq!(
        (n, rest.as_str()),
        (0, ""),
        "closed, nothing sent after DATA"
    );
}
