//! The Graph double driven by an independent client: Microsoft's Python SDK msgraph-sdk 1.65
//! (kiota, httpx) with an azure-identity (MSAL) client-secret credential pointed at the
//! double's token endpoint. The script (`graph_msgraph.py`) checks what the SDK sees; this
//! test checks what the double holds afterwards, and that every JSON body it sent conforms to
//! Microsoft's CSDL. Needs `python3` with msgraph-sdk and azure-identity
//! (scripts/install-deps.sh installs them).

use std::process::Command;

use serversync_testkit::TlsFiles;
use serversync_testkit::graph::{GraphConfig, GraphDouble, csdl_path};

const TENANT: &str = "6f1c2a9e-1b7d-4c1e-9a55-2d0b8f6e4c31";
const APP: &str = "3d9e1f44-6c2b-4a8e-b7d5-1f0e9c8a7b66";
const SECRET: &str = "s3cr3t~Value.For-Tests";
const MAILBOX: &str = "alice@contoso.example";
const INBOX: usize = 7;

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: Sender {n} <sender{n}@example.org>\r\nTo: {MAILBOX}\r\nSubject: message {n}\r\n\
         Message-ID: <m{n}@example.org>\r\nDate: Mon, 30 Nov 2026 10:0{n}:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgraph_sdk_drives_the_double() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let cfg = GraphConfig {
        csdl: Some(csdl_path()),
        ..GraphConfig::default()
    };
    let graph = GraphDouble::start(&tls, cfg).await.unwrap();
    graph.add_tenant(TENANT, "contoso.example");
    graph.add_app(
        TENANT,
        APP,
        SECRET,
        &[
            "Mail.ReadWrite",
            "Mail.Send",
            "User.Read.All",
            "Calendars.ReadWrite",
            "Contacts.ReadWrite",
            "Tasks.ReadWrite.All",
        ],
    );
    let uid = graph.add_mailbox(TENANT, MAILBOX);
    let inbox: Vec<String> = (0..INBOX)
        .map(|n| graph.deliver(MAILBOX, "inbox", &message(n), n % 2 == 0))
        .collect();
    let to_move = graph.deliver(MAILBOX, "archive", &message(9), false);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graph_msgraph.py");
    let (url, ca) = (graph.graph_url(), tls.ca_cert.display().to_string());
    let to_move_env = to_move.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("GRAPH_URL", url)
            .env("SSL_CERT_FILE", &ca)
            .env("REQUESTS_CA_BUNDLE", &ca)
            .env("TENANT", TENANT)
            .env("CLIENT_ID", APP)
            .env("CLIENT_SECRET", SECRET)
            .env("MAILBOX", MAILBOX)
            .env("EXPECT_INBOX", INBOX.to_string())
            .env("PAGE", "3")
            .env("TO_MOVE", to_move_env)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "msgraph-sdk script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON result line");

    // The SDK saw the double's user and errors.
    assert_eq!(result["user"]["id"], uid.as_str());
    assert_eq!(result["unknown_user"]["status"], 404);
    assert_eq!(result["unknown_user"]["code"], "Request_ResourceNotFound");
    // Delta: three pages of at most three, the inbox in delivery order, then nothing new.
    assert_eq!(result["delta"]["pages"], 3);
    let ids: Vec<String> = result["delta"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, inbox);
    assert_eq!(result["delta"]["subjects"][0], "message 0");
    assert_eq!(result["delta"]["after"], 0);
    // $value is the stored MIME.
    let held = graph.messages(MAILBOX, "inbox");
    let first = held.iter().find(|m| m.id == ids[0]).unwrap();
    let sha = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(&first.mime);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(result["value_sha256"], sha.as_str());
    // sendMail: sent and saved.
    let sent = graph.sent();
    assert_eq!(sent.len(), 1);
    let sent0 = String::from_utf8_lossy(&sent[0]);
    assert!(sent0.contains("Subject: msgraph-sdk says hello"), "{sent0}");
    assert!(sent0.contains("bob@example.org"));
    assert_eq!(graph.messages(MAILBOX, "sentitems").len(), 1);
    // The subscription exists; the moved message is in the inbox and was notified.
    let subs = graph.subscriptions();
    assert_eq!(subs.len(), 1);
    assert_eq!(result["subscription"]["id"], subs[0].id.as_str());
    assert_eq!(subs[0].client_state.as_deref(), Some("msgraph-state"));
    let moved = result["moved"].as_str().unwrap();
    assert!(
        graph
            .messages(MAILBOX, "inbox")
            .iter()
            .any(|m| m.id == moved)
    );
    assert!(graph.messages(MAILBOX, "archive").is_empty());
    assert_eq!(
        result["notification"]["subscriptionId"],
        subs[0].id.as_str()
    );
    // Appointments, contacts and To Do tasks: what the SDK made is what the double holds.
    let items = &result["items"];
    let events = graph.items(MAILBOX, "calendar");
    assert_eq!(
        events.len(),
        1,
        "a repeated transactionId made no second event"
    );
    assert_eq!(events[0]["id"], items["event"]["id"]);
    assert_eq!(events[0]["transactionId"], "msgraph-sdk-tx-1");
    assert_eq!(events[0]["start"]["timeZone"], "Europe/Berlin");
    assert_eq!(items["event"]["type"], "singleInstance");
    let contacts = graph.items(MAILBOX, "contacts");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["id"], items["contact"]["id"]);
    assert_eq!(
        contacts[0]["jobTitle"], "Buyer",
        "the stale PATCH changed nothing"
    );
    let list = format!("todo/lists/{}", items["task"]["list"].as_str().unwrap());
    assert!(
        graph.items(MAILBOX, &list).is_empty(),
        "the task was deleted"
    );
    assert_eq!(items["delta"]["events"], 1);
    assert_eq!(items["stale"]["status"], 412);
    assert_eq!(items["stale"]["code"], "ErrorIrresolvableConflict");
    // Every Graph request carried the bearer token MSAL fetched from the double.
    let requests = graph.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/oauth2/v2.0/token") && r.status == 200)
    );
    for r in requests.iter().filter(|r| r.path.starts_with("/v1.0/")) {
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "authorization" && v.starts_with("Bearer ")),
            "{} {} without a token",
            r.method,
            r.path
        );
    }
    let violations = graph.schema_violations();
    assert!(violations.is_empty(), "CSDL violations: {violations:#?}");
}
