//! The EWS connector against the Exchange test double (`serversync_testkit::ews`, HTTPS on
//! 127.0.0.1 with the test CA): test and enable with fixed URLs and Autodiscover and each
//! failure it must name, reading the Inbox (paged, MIME intact, never marked read), sending
//! with a copy in Sent Items and finding it there, throttling waited out, and new mail
//! announced by streaming notifications. Every request the client sent in these tests is
//! then checked against Microsoft's published schemas.

use serversync_connectors::ews::{Acting, autodiscover};
use serversync_connectors::source::{Change, MailSource};
use serversync_connectors::transport::{MailTransport, SentFolder, Submission};
use serversync_connectors::{
    ConnectOptions, ErrorKind, EwsTarget, FailureStep, Login, NetworkPolicy, ProbeReport, Secret,
    Server, TlsTrust, probe,
};
use serversync_model::profile::{AuthProtocol, IncomingProtocol, OutgoingProtocol};
use serversync_model::sync::FolderCursor;
use serversync_testkit::dnsmasq::{DnsRecord, Dnsmasq};
use serversync_testkit::ews::{
    AuthScheme, ChannelBinding, EwsConfig, EwsDouble, ExchangeServerVersion, Fault,
};
use serversync_testkit::tls::{DNS_TEST_HOST, TlsFiles};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const SERVICE: &str = "CONTOSO\\svc-sync";
const PASSWORD: &str = "Sync-Pa55word!";
const ALICE: &str = "alice@localhost";

/// A mailbox of the test DNS zone: its domain has no Autodiscover host, only an SRV record.
const SRV_ALICE: &str = "alice@serversync.test";

struct Fixture {
    double: EwsDouble,
    opts: ConnectOptions,
    _dns: Dnsmasq,
    _dir: tempfile::TempDir,
}

/// The double, and a DNS server of our own asked for every name (so Autodiscover's lookups
/// never leave this machine): `serversync.test` has only the SRV record
/// `_autodiscover._tcp.serversync.test` naming the double, and `.invalid` names nothing.
async fn fixture(cfg: EwsConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = EwsDouble::start(&tls, cfg).await.unwrap();
    double.add_account(SERVICE, PASSWORD, true);
    double.add_account("CONTOSO\\no-rights", PASSWORD, false);
    double.add_mailbox(ALICE, None);
    double.add_mailbox(SRV_ALICE, None);
    let dns = Dnsmasq::start(
        dir.path(),
        &["serversync.test", "invalid"],
        &[
            DnsRecord::Srv {
                name: "_autodiscover._tcp.serversync.test".into(),
                target: DNS_TEST_HOST.into(),
                port: double.port(),
                priority: 0,
                weight: 100,
            },
            DnsRecord::Host {
                name: DNS_TEST_HOST.into(),
                ip: "127.0.0.1".parse().unwrap(),
            },
        ],
    )
    .unwrap();
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap());
    let opts = ConnectOptions::new(trust)
        .with_policy(NetworkPolicy::loopback_allowed().with_nameserver(Some(dns.addr())))
        .with_timeout(Duration::from_secs(20));
    Fixture {
        double,
        opts,
        _dns: dns,
        _dir: dir,
    }
}

impl Fixture {
    fn target(&self, url: Option<String>, mailbox: &str) -> EwsTarget {
        EwsTarget {
            url,
            email: mailbox.into(),
            protocol: AuthProtocol::AutoDetect,
            acting: Acting::Impersonate(mailbox.into()),
            autodiscover: autodiscover::Options {
                port: self.double.port(),
            },
            pinned: Vec::new(),
        }
    }

    fn fixed(&self) -> Server {
        Server::Ews(self.target(Some(self.double.ews_url()), ALICE))
    }

    async fn probe_in(&self, server: &Server, login: &Login) -> ProbeReport {
        probe::incoming(IncomingProtocol::Ews, server, login, &self.opts)
            .await
            .unwrap()
    }
}

fn service() -> Login {
    Login::password(SERVICE, Secret::new(PASSWORD))
}

fn message(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender {n} <sender{n}@example.net>\r\nTo: {ALICE}\r\nSubject: message {n}\r\nMessage-ID: <m{n}@example.net>\r\nDate: Thu, 01 Jan 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(format!("line {n} Grüße\r\n").as_bytes());
    }
    m
}

fn failure_of(r: &ProbeReport) -> (FailureStep, Option<String>, String) {
    let f = r.failure.as_ref().expect("the probe failed");
    (f.step, f.code.clone(), f.message.clone())
}

#[tokio::test]
async fn test_and_enable_passes_with_a_fixed_url_and_with_autodiscover() {
    let f = fixture(EwsConfig::default()).await;
    let r = f.probe_in(&f.fixed(), &service()).await;
    assert!(r.is_ok(), "{r:#?}");
    let actions: Vec<&str> = r.steps.iter().map(|s| s.action.as_str()).collect();
    for want in [
        "resolve",
        "connect",
        "TLS",
        "sign in",
        "server version",
        "impersonation",
        "Inbox",
    ] {
        assert!(
            actions.iter().any(|a| a.contains(want)),
            "no step {want} in {actions:?}"
        );
    }
    assert!(r.has_capability("AUTH=NTLM"), "{:?}", r.capabilities);
    assert!(
        r.capabilities.iter().any(|c| c.starts_with("exchange2019")),
        "{:?}",
        r.capabilities
    );
    assert_eq!(r.endpoint.as_deref(), Some(f.double.ews_url().as_str()));
    assert!(r.certificate.is_some());

    // Autodiscover finds the same URL, and the report shows what it tried.
    let auto = Server::Ews(f.target(None, ALICE));
    let r = f.probe_in(&auto, &service()).await;
    assert!(r.is_ok(), "{r:#?}");
    assert_eq!(r.endpoint.as_deref(), Some(f.double.ews_url().as_str()));
    let discover = &r.steps[0];
    assert!(
        discover
            .action
            .starts_with("autodiscover for alice@localhost"),
        "{discover:?}"
    );
    assert!(discover.detail.contains("autodiscover"), "{discover:?}");

    // A domain whose only Autodiscover entry is the SRV record: the domain and
    // autodiscover.<domain> are tried first, then the host the record names.
    let srv = Server::Ews(f.target(None, SRV_ALICE));
    let r = f.probe_in(&srv, &service()).await;
    assert!(r.is_ok(), "{r:#?}");
    assert_eq!(r.endpoint.as_deref(), Some(f.double.ews_url().as_str()));
    let detail = &r.steps[0].detail;
    let order = [
        "https://serversync.test:",
        "https://autodiscover.serversync.test:",
        "DNS SRV _autodiscover._tcp.serversync.test",
        &format!("https://{DNS_TEST_HOST}:{}", f.double.port()),
    ]
    .map(|want| {
        detail
            .find(want)
            .unwrap_or_else(|| panic!("{want} is not in {detail}"))
    });
    assert!(order.is_sorted(), "tried out of order: {detail}");
    assert!(f.double.items(SRV_ALICE, "inbox").is_empty());

    // The outgoing test sends nothing and changes nothing.
    let before = f.double.items(ALICE, "sentitems").len();
    let r = probe::outgoing(
        OutgoingProtocol::Ews,
        &f.fixed(),
        Some(&service()),
        ALICE,
        &f.opts,
    )
    .await
    .unwrap();
    assert!(r.is_ok(), "{r:#?}");
    assert!(r.steps.iter().any(|s| s.action.contains("send permission")));
    assert!(f.double.sent().is_empty());
    assert_eq!(f.double.items(ALICE, "sentitems").len(), before);
}

#[tokio::test]
async fn test_and_enable_names_the_step_and_the_fix_of_each_failure() {
    let f = fixture(EwsConfig::default()).await;

    let wrong = Login::password(SERVICE, Secret::new("wrong"));
    let r = f.probe_in(&f.fixed(), &wrong).await;
    let (step, _, msg) = failure_of(&r);
    assert_eq!(step, FailureStep::Authentication, "{msg}");
    assert!(msg.contains("password") && !msg.contains("wrong"), "{msg}");
    assert_eq!(r.failure.as_ref().unwrap().kind, ErrorKind::Auth);

    let no_rights = Login::password("CONTOSO\\no-rights", Secret::new(PASSWORD));
    let r = f.probe_in(&f.fixed(), &no_rights).await;
    let (step, code, msg) = failure_of(&r);
    assert_eq!(
        (step, code.as_deref()),
        (FailureStep::Permission, Some("impersonation_denied")),
        "{msg}"
    );
    assert!(msg.contains("ApplicationImpersonation"), "{msg}");

    let nobody = Server::Ews(f.target(Some(f.double.ews_url()), "nobody@localhost"));
    let r = f.probe_in(&nobody, &service()).await;
    let (step, code, msg) = failure_of(&r);
    assert_eq!(
        (step, code.as_deref()),
        (FailureStep::Permission, Some("mailbox_not_found")),
        "{msg}"
    );

    // Autodiscover that finds nothing: every attempt listed, and what to do.
    let lost = Server::Ews(f.target(None, "alice@nowhere.invalid"));
    let r = f.probe_in(&lost, &service()).await;
    let (step, code, msg) = failure_of(&r);
    assert_eq!(
        (step, code.as_deref()),
        (FailureStep::Dns, Some("autodiscover_failed")),
        "{msg}"
    );
    assert!(msg.contains("could not be determined"), "{msg}");
    assert!(
        msg.contains("https://autodiscover.nowhere.invalid"),
        "{msg}"
    );
    assert!(
        msg.contains("DNS SRV _autodiscover._tcp.nowhere.invalid (no SRV record)"),
        "{msg}"
    );
    assert!(msg.contains("turn auto-discover off"), "{msg}");
}

#[tokio::test]
async fn exchange_2010_is_refused_from_what_the_server_says() {
    let f = fixture(EwsConfig {
        version: ExchangeServerVersion::Exchange2010Sp3,
        ..Default::default()
    })
    .await;
    let r = f.probe_in(&f.fixed(), &service()).await;
    let (step, code, msg) = failure_of(&r);
    assert_eq!(
        (step, code.as_deref()),
        (FailureStep::Protocol, Some("unsupported_exchange_version")),
        "{msg}"
    );
    assert!(msg.contains("2013 SP1"), "{msg}");
}

#[tokio::test]
async fn basic_only_servers_are_signed_in_with_basic() {
    let f = fixture(EwsConfig {
        auth: vec![AuthScheme::Basic],
        ..Default::default()
    })
    .await;
    let r = f.probe_in(&f.fixed(), &service()).await;
    assert!(r.is_ok(), "{r:#?}");
    assert!(r.has_capability("AUTH=BASIC"), "{:?}", r.capabilities);
}

#[tokio::test]
async fn ntlm_without_channel_binding_requirement_still_signs_in() {
    let f = fixture(EwsConfig {
        auth: vec![AuthScheme::Ntlm {
            channel_binding: ChannelBinding::Optional,
        }],
        ..Default::default()
    })
    .await;
    let r = f.probe_in(&f.fixed(), &service()).await;
    assert!(r.is_ok(), "{r:#?}");
}

#[tokio::test]
async fn the_inbox_is_read_in_pages_with_mime_intact_and_nothing_marked_read() {
    let f = fixture(EwsConfig {
        max_sync_items: 7,
        ..Default::default()
    })
    .await;
    let mut sent = Vec::new();
    for n in 0..25 {
        let m = message(n, 2_000 + n * 300);
        f.double.deliver(ALICE, "inbox", &m, n % 5 == 0);
        sent.push(m);
    }
    let mut source = MailSource::connect(IncomingProtocol::Ews, &f.fixed(), &service(), &f.opts)
        .await
        .unwrap();
    let mut cursor: Option<FolderCursor> = None;
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 20, "the folder never ends");
        let opened = source.open("INBOX", cursor.as_ref()).await.unwrap();
        let mut next = opened.cursor.clone();
        let page = opened.listed.clone();
        let mut fetch = source.fetch(&page, 1 << 20).await.unwrap();
        while let Some(m) = fetch.next().await.unwrap() {
            opened.committed(&mut next, &page[m.index]);
            got.push(m.raw);
        }
        assert!(fetch.missing().is_empty());
        drop(fetch);
        cursor = Some(next);
        if !opened.more {
            break;
        }
    }
    assert!(
        rounds >= 4,
        "25 messages at 7 a page take several pages ({rounds})"
    );
    assert_eq!(got, sent, "every message once, byte for byte, in order");
    let read: Vec<bool> = f
        .double
        .items(ALICE, "inbox")
        .iter()
        .map(|i| i.is_read)
        .collect();
    assert_eq!(
        read,
        (0..25).map(|n| n % 5 == 0).collect::<Vec<_>>(),
        "read state untouched"
    );

    // Nothing new after the committed state; a new message is listed alone.
    let opened = source.open("INBOX", cursor.as_ref()).await.unwrap();
    assert!(opened.listed.is_empty() && !opened.more);
    f.double.deliver(ALICE, "inbox", &message(99, 500), false);
    let opened = source.open("INBOX", Some(&opened.cursor)).await.unwrap();
    assert_eq!(opened.listed.len(), 1);
    source.close().await.unwrap();
}

#[tokio::test]
async fn new_mail_is_announced_while_waiting() {
    let f = fixture(EwsConfig {
        streaming_heartbeat: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut source = MailSource::connect(IncomingProtocol::Ews, &f.fixed(), &service(), &f.opts)
        .await
        .unwrap();
    assert!(source.can_watch());
    let opened = source.open("INBOX", None).await.unwrap();
    assert!(opened.listed.is_empty());
    // Nothing arrives: the wait ends with nothing (heartbeats are not mail).
    assert_eq!(
        source.wait(Duration::from_secs(1)).await.unwrap(),
        Change::Nothing
    );
    let deliver = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.double.deliver(ALICE, "inbox", &message(1, 500), false);
    };
    let wait = async {
        let mut change = Change::Nothing;
        for _ in 0..20 {
            change = source.wait(Duration::from_secs(1)).await.unwrap();
            if change == Change::NewMail {
                break;
            }
        }
        change
    };
    let ((), change) = tokio::join!(deliver, wait);
    assert_eq!(change, Change::NewMail);
    let opened = source.open("INBOX", Some(&opened.cursor)).await.unwrap();
    assert_eq!(opened.listed.len(), 1);
    source.close().await.unwrap();
}

#[tokio::test]
async fn sending_keeps_a_copy_in_sent_items_and_waits_out_throttling() {
    let f = fixture(EwsConfig::default()).await;
    let mut t =
        MailTransport::connect(OutgoingProtocol::Ews, &f.fixed(), Some(&service()), &f.opts)
            .await
            .unwrap();
    assert!(t.keeps_sent_copy());
    let mail = b"From: alice@localhost\r\nTo: bob@example.net\r\nSubject: quote\r\nMessage-ID: <q1@localhost>\r\n\r\nhello\r\n";
    let rcpts = vec![
        "bob@example.net".to_owned(),
        "hidden@example.net".to_owned(),
    ];
    f.double.inject(Fault::ServerBusy {
        operation: Some("CreateItem".into()),
        back_off_ms: 200,
        as_soap_fault: false,
    });
    let s = t.submit(ALICE, &rcpts, mail).await.unwrap();
    assert_eq!(s, Submission::Sent);
    let waits = t.take_waits();
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!(waits[0].contains("200 ms"), "{waits:?}");
    let sent = f.double.sent();
    assert_eq!(sent.len(), 1, "sent once, not twice");
    let text = String::from_utf8_lossy(&sent[0]);
    assert!(
        text.contains("hidden@example.net"),
        "the envelope-only recipient is a Bcc: {text}"
    );
    let copies = f.double.items(ALICE, "sentitems");
    assert_eq!(copies.len(), 1);
    assert_eq!(
        copies[0].internet_message_id.as_deref(),
        Some("<q1@localhost>")
    );

    let mut folder = SentFolder::open(
        IncomingProtocol::Ews,
        &f.fixed(),
        &service(),
        &f.opts,
        "Sent",
    )
    .await
    .unwrap();
    assert!(folder.contains("q1@localhost").await.unwrap());
    assert!(!folder.contains("other@localhost").await.unwrap());

    // A refusal Exchange gives is the message's, and nothing is sent.
    f.double.inject(Fault::ResponseCode {
        operation: Some("CreateItem".into()),
        code: "ErrorMessageSizeExceeded".into(),
    });
    let s = t.submit(ALICE, &rcpts, mail).await.unwrap();
    assert!(
        matches!(&s, Submission::Refused { transient: false, reason, .. } if reason.contains("ErrorMessageSizeExceeded")),
        "{s:?}"
    );
    assert_eq!(f.double.sent().len(), 1);

    // A connection dropped after the request: the outcome is unknown, never sent again here.
    f.double.inject(Fault::DropConnection {
        operation: Some("CreateItem".into()),
    });
    let s = t.submit(ALICE, &rcpts, mail).await.unwrap();
    assert!(matches!(s, Submission::Unknown { .. }), "{s:?}");
    assert_eq!(
        f.double.sent().len(),
        1,
        "dropped before it was carried out"
    );

    // Carried out, then the answer lost: unknown here, and Sent Items tells it was sent.
    f.double.inject(Fault::DropAfterServing {
        operation: Some("CreateItem".into()),
    });
    let mail2 = b"From: alice@localhost\r\nTo: bob@example.net\r\nSubject: second\r\nMessage-ID: <q2@localhost>\r\n\r\nhello\r\n";
    let mut t =
        MailTransport::connect(OutgoingProtocol::Ews, &f.fixed(), Some(&service()), &f.opts)
            .await
            .unwrap();
    let s = t.submit(ALICE, &rcpts, mail2).await.unwrap();
    assert!(matches!(s, Submission::Unknown { .. }), "{s:?}");
    assert_eq!(f.double.sent().len(), 2);
    assert!(folder.contains("q2@localhost").await.unwrap());
}

#[tokio::test]
async fn every_request_sent_here_is_schema_valid() {
    // Drive each operation once, then validate what the double received.
    let f = fixture(EwsConfig::default()).await;
    f.double.deliver(ALICE, "inbox", &message(1, 500), false);
    let _ = f.probe_in(&f.fixed(), &service()).await;
    let _ = probe::outgoing(
        OutgoingProtocol::Ews,
        &f.fixed(),
        Some(&service()),
        ALICE,
        &f.opts,
    )
    .await;
    let mut source = MailSource::connect(IncomingProtocol::Ews, &f.fixed(), &service(), &f.opts)
        .await
        .unwrap();
    let opened = source.open("INBOX", None).await.unwrap();
    let page = opened.listed.clone();
    let mut fetch = source.fetch(&page, 1 << 20).await.unwrap();
    while fetch.next().await.unwrap().is_some() {}
    drop(fetch);
    let failed: Vec<_> = page.iter().map(|l| l.source.clone()).collect();
    source
        .move_to_undeliverable("INBOX", &failed)
        .await
        .unwrap();
    source.close().await.unwrap();
    let mut t =
        MailTransport::connect(OutgoingProtocol::Ews, &f.fixed(), Some(&service()), &f.opts)
            .await
            .unwrap();
    t.submit(
        ALICE,
        &["bob@example.net".into()],
        b"Subject: x\r\nMessage-ID: <v@x>\r\n\r\nx",
    )
    .await
    .unwrap();
    assert_eq!(
        f.double.items(ALICE, "Undeliverable").len(),
        1,
        "moved to Undeliverable"
    );

    let validator = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/exchange/validate.sh");
    let mut seen = std::collections::BTreeSet::new();
    for req in f.double.requests() {
        if req.operation.is_empty()
            || req.operation == "Autodiscover"
            || req.operation == "GetUserSettings"
            || req.authenticated_as.is_none()
        {
            continue;
        }
        let mut child = Command::new("bash")
            .arg(&validator)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(req.body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{} is not schema-valid: {}{}\n{}",
            req.operation,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            req.body
        );
        seen.insert(req.operation.clone());
    }
    for op in [
        "ConvertId",
        "GetFolder",
        "SyncFolderItems",
        "GetItem",
        "CreateItem",
        "FindFolder",
        "CreateFolder",
        "MoveItem",
    ] {
        assert!(seen.contains(op), "{op} was not sent: {seen:?}");
    }
}

#[tokio::test]
async fn a_message_over_the_limit_is_read_by_its_header_with_its_received_time() {
    let f = fixture(EwsConfig::default()).await;
    let received = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let big = message(7, 300_000);
    f.double
        .deliver_received(ALICE, "inbox", &big, false, received);
    f.double.deliver(ALICE, "inbox", &message(8, 1_000), false);
    let mut source = MailSource::connect(IncomingProtocol::Ews, &f.fixed(), &service(), &f.opts)
        .await
        .unwrap();
    let opened = source.open("INBOX", None).await.unwrap();
    let page = opened.listed.clone();
    assert_eq!(page.len(), 2);
    let mut fetch = source.fetch(&page, 100_000).await.unwrap();
    let first = fetch.next().await.unwrap().unwrap();
    assert_eq!(first.too_large.map(|(_, limit)| limit), Some(100_000));
    assert!(first.too_large.unwrap().0 >= 300_000);
    let header = String::from_utf8_lossy(&first.raw);
    assert!(header.contains("Subject: message 7"), "{header}");
    assert!(!header.contains("line 7"), "only the header: {header}");
    assert_eq!(first.received, received);
    let second = fetch.next().await.unwrap().unwrap();
    assert!(second.too_large.is_none());
    assert_eq!(second.raw, message(8, 1_000));
    assert!(fetch.next().await.unwrap().is_none());
}
