//! Bytes posted to the Graph notification receiver → `engine::graph_notify::read_batch`
//! (what `POST /api/v1/graph/{notifications,lifecycle}/{mailbox}` reads): a 400 names the
//! field with a one-line message, and a notification counts only when it carries the
//! mailbox's subscription id and the `clientState` whose digest the mailbox keeps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_engine::graph_notify::{MAX_BODY, read_batch};
use serversync_model::mailbox::GraphSubscription;

const ID: &str = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07";
const STATE: &str = "secretClientValue";

fuzz_target!(|data: &[u8]| {
    let sub = GraphSubscription {
        id: ID.into(),
        expires_at: chrono::DateTime::UNIX_EPOCH,
        client_state_sha256: serversync_vault::sha256_hex(STATE.as_bytes()),
        error: None,
    };
    match read_batch(data, &sub) {
        Err((field, message)) => {
            assert_eq!(field, "value");
            assert!(!message.contains('\n'), "{message}");
        }
        Ok(counted) => {
            assert!(data.len() <= MAX_BODY);
            let batch: serde_json::Value = serde_json::from_slice(data).expect("it parsed");
            // serde also reads a struct from an array of its fields.
            let value = match &batch {
                serde_json::Value::Array(fields) => fields.first(),
                other => other.get("value"),
            };
            let value = value.and_then(|v| v.as_array()).expect("a value array");
            assert_eq!(value.len(), counted.len());
            for (n, counts) in value.iter().zip(counted) {
                let genuine = n["subscriptionId"] == ID && n["clientState"] == STATE;
                assert_eq!(counts, genuine, "{n}");
            }
        }
    }
});
