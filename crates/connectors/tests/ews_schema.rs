//! Every EWS request serversync can send is valid against Microsoft's published schemas
//! (MS-OXWS*, Exchange2016 level): each body of `ews::ops::every_request_body`, in the
//! envelope the client sends (with and without impersonation), through
//! `../shared/exchange/validate.sh` (xmllint).

use serversync_connectors::ews::{Acting, envelope, items, ops};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn validator() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let script = root.join("shared/exchange/validate.sh");
    assert!(
        script.exists(),
        "{} is missing: ../shared must sit beside the project's root",
        script.display()
    );
    script
}

fn validate(xml: &str) -> (bool, String) {
    let mut child = Command::new("bash")
        .arg(validator())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run validate.sh (xmllint from libxml2-utils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_request_validates_against_the_published_schemas() {
    let mut bodies = ops::every_request_body();
    bodies.extend(items::every_request_body());
    let mut operations: Vec<&str> = bodies.iter().map(|(op, _)| *op).collect();
    operations.dedup();
    for acting in [
        Acting::Own,
        Acting::Impersonate("alice@contoso.com".into()),
        Acting::Delegate("alice@contoso.com".into()),
    ] {
        for (op, body) in &bodies {
            let xml = envelope(&acting, body);
            let (ok, report) = validate(&xml);
            assert!(
                ok,
                "{op} ({acting:?}) is not schema-valid:\n{report}\n{xml}"
            );
            assert!(report.contains(&format!("operation {op}")), "{report}");
        }
    }
    // The list covers every operation the client calls.
    for op in [
        "GetFolder",
        "FindFolder",
        "CreateFolder",
        "SyncFolderItems",
        "GetItem",
        "CreateItem",
        "FindItem",
        "MoveItem",
        "Subscribe",
        "GetStreamingEvents",
        "Unsubscribe",
        "ConvertId",
        "UpdateItem",
        "DeleteItem",
    ] {
        assert!(operations.contains(&op), "{op} is not validated");
    }
}

#[test]
fn the_validator_refuses_a_broken_request() {
    // The check can fail: an element out of the schema's order is refused.
    let body = "<m:GetFolder><m:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:FolderIds><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape></m:GetFolder>";
    let (ok, report) = validate(&envelope(&Acting::Own, body));
    assert!(!ok, "{report}");
}
