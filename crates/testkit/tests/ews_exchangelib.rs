//! The EWS double driven by an independent client: exchangelib 5.6 (Python), whose NTLM goes
//! through requests_ntlm and pyspnego with the TLS channel binding. The script
//! (`ews_exchangelib.py`) checks what exchangelib sees; this test checks what the double holds
//! afterwards. Needs `python3` with exchangelib (scripts/install-deps.sh installs it).

use std::process::Command;

use serversync_testkit::TlsFiles;
use serversync_testkit::ews::{EwsConfig, EwsDouble, ExchangeServerVersion};

const MAILBOX: &str = "alice@example.test";
const SVC: &str = "CONTOSO\\svc-sync";
const PASSWORD: &str = "Sync-Pa55word!";
const INBOX: usize = 7;
const CAP: u32 = 3;

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: sender{n}@example.org\r\nTo: {MAILBOX}\r\nSubject: message {n} – ünïcode\r\n\
         Message-ID: <m{n}@example.org>\r\nDate: Mon, 1 Dec 2026 10:0{n}:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_drives_the_double() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    // Every request exchangelib sends is also schema-checked.
    let schemas = serversync_testkit::ews::schema_dir();
    let cfg = EwsConfig {
        max_sync_items: CAP,
        streaming_heartbeat: std::time::Duration::from_millis(500),
        streaming_timeout_cap: Some(std::time::Duration::from_secs(3)),
        schema_dir: Some(schemas),
        ..EwsConfig::default()
    };
    let ews = EwsDouble::start(&tls, cfg).await.unwrap();
    ews.add_account(SVC, PASSWORD, true);
    ews.add_account("CONTOSO\\no-rights", "Other-Pa55", false);
    ews.add_mailbox(MAILBOX, None);
    ews.add_mailbox("bob@example.test", Some("CONTOSO\\bob"));
    ews.redirect_autodiscover("alice.old@example.test", MAILBOX);
    for n in 0..INBOX {
        ews.deliver(MAILBOX, "inbox", &message(n), n % 2 == 0);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ews_exchangelib.py");
    let (ews_url, svc_url, ca) = (
        ews.ews_url(),
        ews.autodiscover_svc_url(),
        tls.ca_cert.display().to_string(),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("EWS_URL", ews_url)
            .env("AUTODISCOVER_SVC", svc_url)
            .env("REQUESTS_CA_BUNDLE", ca)
            .env("MAILBOX", MAILBOX)
            .env("EWS_USER", SVC)
            .env("EWS_PASSWORD", PASSWORD)
            .env("DENIED_USER", "CONTOSO\\no-rights")
            .env("DENIED_PASSWORD", "Other-Pa55")
            .env("EXPECT_INBOX", INBOX.to_string())
            .env("PAGE", "100")
            .env("REDIRECT_FROM", "alice.old@example.test")
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exchangelib script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON result line");

    // (a) The version came from our ServerVersionInfo (Exchange 2019, 15.2).
    assert!(
        result["version"]["build"]
            .as_str()
            .unwrap()
            .starts_with("15.2."),
        "{result}"
    );
    let requests = ews.requests();
    // EWS_DUMP=DIR writes every request exchangelib sent there (to look at, or to validate).
    if let Ok(d) = std::env::var("EWS_DUMP") {
        for (n, r) in requests.iter().enumerate() {
            std::fs::write(format!("{d}/{n:03}-{}.xml", r.operation), &r.body).unwrap();
        }
    }
    assert!(
        requests.iter().any(|r| r.operation == "ConvertId"),
        "exchangelib guessed the version with ConvertId"
    );
    // Everything exchangelib did after the version guess was impersonated and anchored.
    let get_folder = requests
        .iter()
        .find(|r| r.operation == "GetFolder" && r.authenticated_as.is_some())
        .unwrap();
    assert!(get_folder.body.contains("ExchangeImpersonation"));
    assert!(
        get_folder
            .headers
            .iter()
            .any(|(k, v)| k == "x-anchormailbox" && v.eq_ignore_ascii_case(MAILBOX))
    );
    // NTLM signed the service account in (nothing was sent with Basic).
    assert!(
        requests
            .iter()
            .filter(|r| r.authenticated_as.as_deref() == Some(SVC))
            .all(|r| !r
                .headers
                .iter()
                .any(|(k, v)| k == "authorization" && v.starts_with("Basic")))
    );

    // (b) The sync went over several pages: the double capped MaxChangesReturned at 3.
    let syncs = requests
        .iter()
        .filter(|r| r.operation == "SyncFolderItems" && r.authenticated_as.is_some())
        .count();
    assert!(
        syncs > INBOX.div_ceil(CAP as usize),
        "{syncs} SyncFolderItems"
    );
    let inbox = ews.items(MAILBOX, "inbox");
    assert_eq!(inbox.len(), INBOX);
    let synced = result["synced"].as_array().unwrap();
    for item in &inbox {
        let s = synced
            .iter()
            .find(|s| s["id"] == item.id.as_str())
            .expect("every inbox item was synced");
        assert_eq!(
            s["message_id"].as_str(),
            item.internet_message_id.as_deref()
        );
    }

    assert!(
        result["folders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "Junk Email")
    );

    // (c) MimeContent came back byte for byte.
    for item in &inbox {
        let want = hex_sha256(&item.mime);
        let mid = item.internet_message_id.as_deref().unwrap();
        assert_eq!(
            result["mime_sha256"][mid].as_str(),
            Some(want.as_str()),
            "{mid}"
        );
    }
    // UpdateItem changed only the read flag of that one item; nothing else changed IsRead.
    let marked = result["marked_read"].as_str().unwrap();
    for (n, item) in inbox.iter().enumerate() {
        let expected = item.id == marked || n % 2 == 0;
        assert_eq!(item.is_read, expected, "{}", item.subject);
    }

    // (d) One message was sent, and its copy is in Sent Items.
    let sent = ews.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        Some(hex_sha256(&sent[0]).as_str()),
        result["sent_sha256"].as_str()
    );
    let copies = ews.items(MAILBOX, "sentitems");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].subject, "sent by exchangelib");
    assert_eq!(copies[0].mime, sent[0]);

    // (e), (f), (g) are asserted by the script; the double saw them too.
    assert!(result["impersonation_denied"].is_string());
    assert_eq!(result["wrong_password"], "UnauthorizedError");
    assert!(
        requests
            .iter()
            .any(|r| r.authenticated_as.as_deref() == Some("CONTOSO\\no-rights"))
    );
    assert_eq!(result["autodiscover_ews_url"], ews.ews_url().as_str());
    assert_eq!(result["autodiscover_redirect"], MAILBOX);
    assert!(requests.iter().any(|r| r.operation == "GetUserSettings"));

    // (h) Notifications: pull and streaming subscriptions saw the drafts being created.
    assert!(result["pull_events"].to_string().contains("CreatedEvent"));
    assert!(
        result["streaming_events"]
            .to_string()
            .contains("CreatedEvent")
    );
    assert_eq!(ews.items(MAILBOX, "drafts").len(), 2);
    assert!(ews.subscriptions().is_empty(), "exchangelib unsubscribed");
    for op in [
        "Subscribe",
        "GetEvents",
        "GetStreamingEvents",
        "Unsubscribe",
    ] {
        assert!(requests.iter().any(|r| r.operation == op), "{op}");
    }

    // (i) exchangelib's calendar item, contact and task are in their folders as it left them:
    // the meeting moved, the contact's job title changed, the task deleted.
    let calendar = ews.items(MAILBOX, "calendar");
    assert_eq!(calendar.len(), 1);
    assert_eq!(calendar[0].kind, "CalendarItem");
    assert_eq!(calendar[0].id, result["pim"]["calendar"].as_str().unwrap());
    let meeting = ews.item_xml(MAILBOX, &calendar[0].id).unwrap();
    for want in [
        "<t:Subject>Planning with exchangelib</t:Subject>",
        "bob@example.test",
        "<t:Location>Room 2</t:Location>",
        "Tracked to Contoso",
    ] {
        assert!(meeting.contains(want), "{want} in {meeting}");
    }
    let contacts = ews.items(MAILBOX, "contacts");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].kind, "Contact");
    let person = ews.item_xml(MAILBOX, &contacts[0].id).unwrap();
    assert!(
        person.contains("<t:JobTitle>Lead engineer</t:JobTitle>")
            && person.contains("dana@example.test"),
        "{person}"
    );
    assert!(ews.items(MAILBOX, "tasks").is_empty());
    for (op, needle) in [
        ("CreateItem", "<t:CalendarItem>"),
        ("CreateItem", "<t:Contact>"),
        ("CreateItem", "<t:Task>"),
        ("UpdateItem", "<t:CalendarItem>"),
        ("UpdateItem", "<t:Contact>"),
        ("DeleteItem", "AffectedTaskOccurrences"),
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.operation == op && r.body.contains(needle)),
            "{op} {needle}"
        );
    }
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// exchangelib's version guess against older and newer servers: Exchange 2010 SP3 refuses its
/// newer API versions with ErrorInvalidServerVersion until it steps down to Exchange2010_SP2;
/// Exchange Online's odd `V2018_01_08` is read from the build number instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_guesses_the_server_version() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    for (version, build, api) in [
        (
            ExchangeServerVersion::Exchange2010Sp3,
            "14.3.",
            "Exchange2010_SP2",
        ),
        (
            ExchangeServerVersion::Exchange2013Sp1,
            "15.0.847",
            "Exchange2013_SP1",
        ),
        (
            ExchangeServerVersion::ExchangeOnline,
            "15.20.",
            "Exchange2016",
        ),
    ] {
        let ews = EwsDouble::start(
            &tls,
            EwsConfig {
                version,
                ..EwsConfig::default()
            },
        )
        .await
        .unwrap();
        ews.add_account(SVC, PASSWORD, true);
        ews.add_mailbox(MAILBOX, None);
        ews.deliver(MAILBOX, "inbox", &message(1), false);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ews_exchangelib.py");
        let (ews_url, svc_url, ca) = (
            ews.ews_url(),
            ews.autodiscover_svc_url(),
            tls.ca_cert.display().to_string(),
        );
        let output = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(script)
                .env("ONLY_VERSION", "1")
                .env("EWS_URL", ews_url)
                .env("AUTODISCOVER_SVC", svc_url)
                .env("REQUESTS_CA_BUNDLE", ca)
                .env("MAILBOX", MAILBOX)
                .env("EWS_USER", SVC)
                .env("EWS_PASSWORD", PASSWORD)
                .output()
        })
        .await
        .unwrap()
        .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{version:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
        assert!(
            result["version"]["build"]
                .as_str()
                .unwrap()
                .starts_with(build),
            "{version:?}: {result}"
        );
        assert_eq!(result["version"]["api_version"], api, "{version:?}");
        assert_eq!(result["inbox_total"], 1);
        if version == ExchangeServerVersion::Exchange2010Sp3 {
            let refused = ews
                .requests()
                .iter()
                .filter(|r| r.operation == "ConvertId" && r.authenticated_as.is_some())
                .count();
            assert!(
                refused > 1,
                "exchangelib stepped down through refused versions"
            );
        }
    }
}
