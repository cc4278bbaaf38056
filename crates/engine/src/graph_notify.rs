//! Microsoft Graph change notifications for Exchange Online mailboxes: new mail in a
//! mailbox's Inbox wakes its delta query within moments instead of at the next poll.
//!
//! - **Subscriptions** ([`ensure`]): when the installation has a public address
//!   (`[exchange] notification_url`), the incoming worker of each Exchange Online mailbox keeps
//!   one subscription to new messages in its Inbox, created for [`LIFETIME_MINUTES`] (under
//!   Graph's 4,230) with a fresh random `clientState`, renewed when less than [`RENEW_BEFORE`]
//!   is left, and created again when Graph no longer has it. Its id, end and the SHA-256 of the
//!   `clientState` are kept on the mailbox (`telemetry.graph_subscription`). One that cannot be
//!   created or renewed raises an alert, is tried again after [`RETRY_AFTER`], and delta
//!   polling carries on meanwhile.
//! - **Notifications** ([`notification`], `POST /api/v1/graph/notifications/{mailbox}`): the
//!   validation handshake echoes `validationToken`; a notification counts only when its
//!   `subscriptionId` and `clientState` are the mailbox's, and then only wakes the mailbox — its
//!   content is never taken as data (the delta query reads what changed). The mailbox's worker
//!   in this process is woken at once; otherwise "sync now" is recorded on the mailbox for the
//!   worker of another process.
//! - **Lifecycle events** ([`lifecycle`], `POST /api/v1/graph/lifecycle/{mailbox}`):
//!   `reauthorizationRequired` renews at the next wait, `subscriptionRemoved` creates a new
//!   one, `missed` wakes the mailbox.
//!
//! Everything Graph (or anyone) posts here is hostile input: bodies are bounded
//! ([`MAX_BODY`]), and nothing in them is trusted beyond the subscription check.

use crate::EngineConfig;
use serversync_connectors::graph::Subscription;
use serversync_connectors::source::GraphSource;
use serversync_model::MailboxId;
use serversync_model::mailbox::{GraphSubscription, Mailbox};
use serversync_store::{Store, StoreError};
use serversync_vault::sha256_hex;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use tokio::sync::Notify;

/// Where Graph posts notifications, below the installation's public address.
pub const NOTIFICATIONS_PATH: &str = "/api/v1/graph/notifications";
/// Where Graph posts lifecycle events.
pub const LIFECYCLE_PATH: &str = "/api/v1/graph/lifecycle";
/// The largest notification body read.
pub const MAX_BODY: usize = 1 << 20;
/// The longest validation token echoed.
const MAX_TOKEN: usize = 2048;
/// How long a subscription is asked for.
pub const LIFETIME_MINUTES: i64 = 4200;
/// A subscription is renewed when less than this is left.
pub const RENEW_BEFORE: chrono::Duration = chrono::Duration::hours(24);
/// After a failed attempt, the next one waits this long.
pub const RETRY_AFTER: chrono::Duration = chrono::Duration::minutes(15);

/// The wake-ups of the mailboxes whose workers run in this process.
static WAKES: LazyLock<Mutex<HashMap<MailboxId, Weak<Notify>>>> = LazyLock::new(Default::default);

/// The wake-up of mailbox `id`'s worker (the same one while it is held).
pub(crate) fn register(id: MailboxId) -> Arc<Notify> {
    let mut w = WAKES.lock().unwrap_or_else(|e| e.into_inner());
    w.retain(|_, n| n.strong_count() > 0);
    if let Some(n) = w.get(&id).and_then(Weak::upgrade) {
        return n;
    }
    let n = Arc::new(Notify::new());
    w.insert(id, Arc::downgrade(&n));
    n
}

/// Wakes mailbox `id`'s worker in this process; false when it has none here.
fn wake_local(id: MailboxId) -> bool {
    let w = WAKES.lock().unwrap_or_else(|e| e.into_inner());
    match w.get(&id).and_then(Weak::upgrade) {
        Some(n) => {
            n.notify_one();
            true
        }
        None => false,
    }
}

/// What to answer Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The validation handshake: 200 with the token as `text/plain`.
    Validation(String),
    /// 202 Accepted (also for notifications that did not count: nothing is told to a sender
    /// that is not Graph).
    Accepted,
    /// 400: the body is not what Graph sends; the field that is wrong.
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn validation(token: &str) -> Answer {
    if token.len() > MAX_TOKEN || token.chars().any(char::is_control) {
        return Answer::Invalid {
            field: "validationToken",
            message: format!(
                "the validation token must be at most {MAX_TOKEN} printable characters"
            ),
        };
    }
    Answer::Validation(token.to_owned())
}

#[derive(serde::Deserialize)]
struct Batch {
    value: Vec<serde_json::Value>,
}

fn parse(body: &[u8]) -> Result<Batch, Answer> {
    if body.len() > MAX_BODY {
        return Err(Answer::Invalid {
            field: "value",
            message: format!("the notification is larger than {} KB", MAX_BODY / 1024),
        });
    }
    // Read as a whole first: a struct alone skips unknown fields without checking them, so
    // a body that is not JSON at all (invalid UTF-8 in an ignored string) would pass.
    serde_json::from_slice::<serde_json::Value>(body)
        .and_then(serde_json::from_value)
        .map_err(|e| Answer::Invalid {
            field: "value",
            message: format!("the body is not a Graph notification collection: {e}"),
        })
}

/// What the receiver reads of a posted body, for the fuzz target: `Err` with the field and
/// message of the 400 answer, else for each notification whether it counts for a mailbox
/// whose subscription is `sub`.
#[doc(hidden)]
pub fn read_batch(
    body: &[u8],
    sub: &GraphSubscription,
) -> Result<Vec<bool>, (&'static str, String)> {
    match parse(body) {
        Ok(batch) => Ok(batch
            .value
            .iter()
            .map(|n| from_subscription(sub, n))
            .collect()),
        Err(Answer::Invalid { field, message }) => Err((field, message)),
        Err(other) => Err(("", format!("{other:?}"))),
    }
}

/// Whether `n` comes from the mailbox's current subscription (its id and `clientState`).
fn counts(m: &Mailbox, n: &serde_json::Value) -> bool {
    m.telemetry
        .graph_subscription
        .as_ref()
        .is_some_and(|sub| from_subscription(sub, n))
}

fn from_subscription(sub: &GraphSubscription, n: &serde_json::Value) -> bool {
    let id = n.get("subscriptionId").and_then(|v| v.as_str());
    let state = n.get("clientState").and_then(|v| v.as_str());
    match (id, state) {
        (Some(id), Some(state)) if !sub.id.is_empty() && id == sub.id => {
            // Compared as digests: equal length, and the secret is not kept.
            aws_lc_rs::constant_time::verify_slices_are_equal(
                sha256_hex(state.as_bytes()).as_bytes(),
                sub.client_state_sha256.as_bytes(),
            )
            .is_ok()
        }
        _ => false,
    }
}

async fn mailbox(store: &Store, id: &str) -> Result<Option<Mailbox>, StoreError> {
    let Ok(id) = id.parse::<MailboxId>() else {
        return Ok(None);
    };
    Ok(store
        .get::<Mailbox>(&id.to_string())
        .await?
        .map(|s| s.value))
}

/// Wakes the mailbox: its worker here, else "sync now" for a worker elsewhere.
async fn wake(store: &Store, id: MailboxId) -> Result<(), StoreError> {
    if wake_local(id) {
        return Ok(());
    }
    update(store, id, |m| {
        m.telemetry.sync_requested_at = Some(chrono::Utc::now());
    })
    .await
}

async fn update(store: &Store, id: MailboxId, f: impl Fn(&mut Mailbox)) -> Result<(), StoreError> {
    for _ in 0..3 {
        let Some(s) = store.get::<Mailbox>(&id.to_string()).await? else {
            return Ok(());
        };
        let mut m = s.value;
        f(&mut m);
        match store.update(&m, Some(s.version)).await {
            Err(StoreError::VersionMismatch { .. }) => continue,
            other => return other.map(drop),
        }
    }
    tracing::warn!(mailbox = %id, "the mailbox kept changing: Graph subscription state not written");
    Ok(())
}

/// A change notification for mailbox `id` (the path's last segment).
pub async fn notification(
    store: &Store,
    id: &str,
    validation_token: Option<&str>,
    body: &[u8],
) -> Result<Answer, StoreError> {
    if let Some(t) = validation_token {
        return Ok(validation(t));
    }
    let batch = match parse(body) {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    let Some(m) = mailbox(store, id).await? else {
        return Ok(Answer::Accepted);
    };
    if batch.value.iter().any(|n| counts(&m, n)) {
        wake(store, m.id).await?;
    } else {
        tracing::info!(mailbox = %m.id, "a Graph notification that is not the mailbox's subscription's: ignored");
    }
    Ok(Answer::Accepted)
}

/// A lifecycle event for mailbox `id`.
pub async fn lifecycle(
    store: &Store,
    id: &str,
    validation_token: Option<&str>,
    body: &[u8],
) -> Result<Answer, StoreError> {
    if let Some(t) = validation_token {
        return Ok(validation(t));
    }
    let batch = match parse(body) {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    let Some(m) = mailbox(store, id).await? else {
        return Ok(Answer::Accepted);
    };
    for n in batch.value.iter().filter(|n| counts(&m, n)) {
        let event = n
            .get("lifecycleEvent")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        tracing::info!(mailbox = %m.id, event, "Graph subscription lifecycle event");
        match event {
            // Renewed at the worker's next wait.
            "reauthorizationRequired" => {
                update(store, m.id, |m| {
                    if let Some(s) = &mut m.telemetry.graph_subscription {
                        s.expires_at = chrono::Utc::now();
                    }
                })
                .await?
            }
            // Created again at the worker's next wait.
            "subscriptionRemoved" => {
                update(store, m.id, |m| m.telemetry.graph_subscription = None).await?
            }
            _ => {}
        }
        // Whatever happened, the delta query catches up now.
        wake(store, m.id).await?;
    }
    Ok(Answer::Accepted)
}

/// Keeps the mailbox's subscription (see the module's text) and lets `source` be woken by
/// its notifications. Does nothing without `[exchange] notification_url`.
pub(crate) async fn ensure(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    source: &mut GraphSource,
) -> Result<(), StoreError> {
    let Some(base) = config
        .notification_url
        .as_deref()
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
    else {
        return Ok(());
    };
    source.set_wake(register(id));
    let Some(m) = store
        .get::<Mailbox>(&id.to_string())
        .await?
        .map(|s| s.value)
    else {
        return Ok(());
    };
    let now = chrono::Utc::now();
    let current = m.telemetry.graph_subscription.clone();
    match &current {
        Some(s) if s.error.is_some() && s.expires_at > now => return Ok(()),
        Some(s) if s.error.is_none() && s.expires_at - now > RENEW_BEFORE => return Ok(()),
        _ => {}
    }
    let expires = now + chrono::Duration::minutes(LIFETIME_MINUTES);
    let client = source.client();
    let renewed = match current
        .as_ref()
        .filter(|s| s.error.is_none() && !s.id.is_empty())
    {
        Some(s) => match client.renew(&s.id, expires).await {
            Ok(sub) => Some(Ok((sub, s.client_state_sha256.clone()))),
            // Gone (expired, removed): a new one.
            Err(e) if e.code.as_deref() == Some("not_found") => None,
            Err(e) => Some(Err(e)),
        },
        None => None,
    };
    let outcome = match renewed {
        Some(r) => r,
        None => {
            let state = client_state();
            client
                .subscribe(
                    &format!("{base}{NOTIFICATIONS_PATH}/{id}"),
                    &format!("{base}{LIFECYCLE_PATH}/{id}"),
                    &state,
                    expires,
                )
                .await
                .map(|sub: Subscription| (sub, sha256_hex(state.as_bytes())))
        }
    };
    let kept = match &outcome {
        Ok((sub, hash)) => GraphSubscription {
            id: sub.id.clone(),
            expires_at: sub.expires,
            client_state_sha256: hash.clone(),
            error: None,
        },
        Err(e) => {
            tracing::warn!(mailbox = %id, error = %e, "Graph change notifications unavailable; polling the delta");
            let a = crate::admin::alert(
                &m,
                serversync_model::alert::Severity::Warning,
                "graph_subscription_failed",
                format!(
                    "New mail for {} is found by polling every {} s, not at once: the Microsoft \
                     Graph change-notification subscription could not be kept ({e}). Check that \
                     Graph can reach {base}{NOTIFICATIONS_PATH} over HTTPS; serversync tries \
                     again in {} minutes.",
                    m.email,
                    serversync_connectors::source::GRAPH_POLL.as_secs(),
                    RETRY_AFTER.num_minutes()
                ),
                Some(e.step),
                vec![m.owner_id],
            );
            store.insert(&a).await?;
            GraphSubscription {
                id: String::new(),
                expires_at: now + RETRY_AFTER,
                client_state_sha256: String::new(),
                error: Some(e.to_string()),
            }
        }
    };
    update(store, id, |m| {
        m.telemetry.graph_subscription = Some(kept.clone());
    })
    .await
}

/// A fresh random `clientState` (32 bytes, hex).
fn client_state() -> String {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `graph_notification` fuzz target: invalid UTF-8 in a field the batch does
    /// not read made the body pass as JSON.
    #[test]
    fn a_body_that_is_not_json_is_refused_whatever_field_holds_the_fault() {
        let body = b"{\"\": \"\xff\xff\", \"value\": []}";
        let sub = GraphSubscription {
            id: "s".into(),
            expires_at: chrono::Utc::now(),
            client_state_sha256: sha256_hex(b"c"),
            error: None,
        };
        let (field, message) = read_batch(body, &sub).unwrap_err();
        assert_eq!(field, "value");
        assert!(
            message.contains("not a Graph notification collection"),
            "{message}"
        );
        assert_eq!(read_batch(b"{\"value\": []}", &sub), Ok(vec![]));
    }

    #[test]
    fn only_the_mailboxs_subscription_counts() {
        let mut m = Mailbox::new_with_defaults(
            serversync_model::OrgId::new(),
            serversync_model::mailbox::MailboxRegarding::User(serversync_model::UserId::new()),
            serversync_model::UserId::new(),
            "A",
            "a@example.com",
            &Default::default(),
            chrono::Utc::now(),
        );
        let n = serde_json::json!({"subscriptionId": "s1", "clientState": "secret"});
        assert!(!counts(&m, &n), "no subscription yet");
        m.telemetry.graph_subscription = Some(GraphSubscription {
            id: "s1".into(),
            expires_at: chrono::Utc::now(),
            client_state_sha256: sha256_hex(b"secret"),
            error: None,
        });
        assert!(counts(&m, &n));
        assert!(!counts(
            &m,
            &serde_json::json!({"subscriptionId": "s1", "clientState": "guess"})
        ));
        assert!(!counts(
            &m,
            &serde_json::json!({"subscriptionId": "s2", "clientState": "secret"})
        ));
        assert!(!counts(&m, &serde_json::json!({"subscriptionId": "s1"})));
        assert_eq!(validation("abc"), Answer::Validation("abc".into()));
        assert!(matches!(
            validation(&"x".repeat(5000)),
            Answer::Invalid { .. }
        ));
        assert!(matches!(
            parse(b"{}"),
            Err(Answer::Invalid { field: "value", .. })
        ));
        assert!(parse(br#"{"value":[]}"#).is_ok());
    }
}
