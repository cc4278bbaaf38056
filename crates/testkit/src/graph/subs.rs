//! Change notification subscriptions (`/v1.0/subscriptions`): creation with the validation
//! handshake, renewal, deletion, change notifications with bounded retries, and lifecycle
//! notifications.

use std::time::Duration;

use axum::http::Method;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::mail::find_mailbox;
use super::{Caller, DoubleState, DoubleSubscription, Reply, Schema, Shared, gerr, lock};

/// How long a notification endpoint has to answer before the delivery counts as failed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// Delivery attempts per notification (the first and the retries).
const NOTIFY_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
pub(super) struct Sub {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration: DateTime<Utc>,
    pub app: String,
    pub tenant: String,
    pub user_id: String,
    /// `None`: every folder of the mailbox.
    pub folder: Option<String>,
}

impl Sub {
    pub fn public(&self) -> DoubleSubscription {
        DoubleSubscription {
            id: self.id.clone(),
            resource: self.resource.clone(),
            change_type: self.change_type.clone(),
            notification_url: self.notification_url.clone(),
            lifecycle_notification_url: self.lifecycle_url.clone(),
            client_state: self.client_state.clone(),
            expiration: self.expiration,
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": null,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": self.expiration.to_rfc3339_opts(SecondsFormat::Secs, true),
            "creatorId": self.app,
            "includeResourceData": null,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": null,
            "encryptionCertificateId": null,
            "notificationUrlAppId": null,
        })
    }
}

/// Resolves `users/{u}/mailFolders('x')/messages`, `users/{u}/mailFolders/x/messages` or
/// `users/{u}/messages` to (user id, folder id).
fn resolve(s: &DoubleState, tenant: &str, resource: &str) -> Option<(String, Option<String>)> {
    let r = resource.trim().trim_start_matches('/');
    let mut segs: Vec<String> = Vec::new();
    for part in r.split('/') {
        // mailFolders('inbox') → mailFolders, inbox
        if let Some((name, rest)) = part.split_once("('") {
            segs.push(name.to_string());
            segs.push(rest.trim_end_matches("')").to_string());
        } else {
            segs.push(part.to_string());
        }
    }
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    if lower.first().map(String::as_str) != Some("users") || segs.len() < 3 {
        return None;
    }
    let mb = find_mailbox(&s.mailboxes, &segs[1], Some(tenant))?;
    let m = &s.mailboxes[mb];
    if m.on_prem {
        return None;
    }
    match lower[2..]
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["messages"] => Some((m.user_id.clone(), None)),
        ["mailfolders", _, "messages"] => {
            let f = m.folder(&segs[3])?;
            Some((m.user_id.clone(), Some(f.id.clone())))
        }
        _ => None,
    }
}

/// `/v1.0/subscriptions[/{id}]`.
pub(super) async fn route(
    state: &Shared,
    caller: &Caller,
    method: &Method,
    segs: &[String],
    body: &[u8],
) -> Reply {
    match (method.clone(), segs.len()) {
        (Method::GET, 0) => {
            let s = lock(state);
            let list: Vec<Value> = s
                .subs
                .iter()
                .filter(|x| x.app == caller.client_id && x.tenant == caller.tenant)
                .map(Sub::json)
                .collect();
            Reply::json(
                200,
                &json!({"@odata.context": format!("{}/v1.0/$metadata#subscriptions", s.base()), "value": list}),
                Some(Schema::Collection("microsoft.graph.subscription")),
            )
        }
        (Method::POST, 0) => create(state, caller, body).await,
        (Method::GET, 1) | (Method::PATCH, 1) | (Method::DELETE, 1) => {
            let mut s = lock(state);
            let id = &segs[0];
            let Some(i) = s
                .subs
                .iter()
                .position(|x| x.id == *id && x.app == caller.client_id)
            else {
                return gerr(404, "ResourceNotFound", "The object was not found.");
            };
            if *method == Method::DELETE {
                s.subs.remove(i);
                return Reply::empty(204);
            }
            if *method == Method::PATCH {
                let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                s.check_request("PATCH subscription", "microsoft.graph.subscription", &v);
                let Some(exp) = v
                    .get("expirationDateTime")
                    .and_then(|e| e.as_str())
                    .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
                else {
                    return gerr(400, "InvalidRequest", "expirationDateTime is required.");
                };
                let exp = exp.with_timezone(&Utc);
                if let Err(r) = check_expiration(&s, exp) {
                    return r;
                }
                s.subs[i].expiration = exp;
            }
            let mut v = s.subs[i].json();
            v["@odata.context"] =
                json!(format!("{}/v1.0/$metadata#subscriptions/$entity", s.base()));
            Reply::json(
                200,
                &v,
                Some(Schema::Entity("microsoft.graph.subscription")),
            )
        }
        _ => gerr(
            405,
            "MethodNotAllowed",
            "The HTTP method is not allowed for the resource.",
        ),
    }
}

fn check_expiration(s: &DoubleState, exp: DateTime<Utc>) -> Result<(), Reply> {
    let max = s.cfg.subscription_max_minutes;
    let now = Utc::now();
    if exp <= now {
        return Err(gerr(
            400,
            "ExtensionError",
            "Subscription expiration must be in the future.",
        ));
    }
    if exp > now + chrono::Duration::minutes(max) {
        return Err(gerr(
            400,
            "ExtensionError",
            &format!("Subscription expiration can only be {max} minutes in the future."),
        ));
    }
    Ok(())
}

async fn create(state: &Shared, caller: &Caller, body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return gerr(
            400,
            "InvalidRequest",
            "Unable to read JSON request payload.",
        );
    };
    lock(state).check_request("POST subscriptions", "microsoft.graph.subscription", &v);
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let (Some(change_type), Some(url), Some(resource), Some(exp)) = (
        field("changeType"),
        field("notificationUrl"),
        field("resource"),
        field("expirationDateTime"),
    ) else {
        return gerr(
            400,
            "InvalidRequest",
            "changeType, notificationUrl, resource and expirationDateTime are required.",
        );
    };
    let lifecycle = field("lifecycleNotificationUrl");
    let client_state = field("clientState");
    if change_type
        .split(',')
        .any(|c| !matches!(c.trim(), "created" | "updated" | "deleted"))
    {
        return gerr(
            400,
            "InvalidRequest",
            &format!("Invalid changeType '{change_type}'."),
        );
    }
    let Ok(exp) = DateTime::parse_from_rfc3339(&exp) else {
        return gerr(
            400,
            "InvalidRequest",
            "expirationDateTime is not a valid date.",
        );
    };
    let exp = exp.with_timezone(&Utc);
    let (target, http) = {
        let s = lock(state);
        if let Err(r) = check_expiration(&s, exp) {
            return r;
        }
        (resolve(&s, &caller.tenant, &resource), s.http.clone())
    };
    let Some((user_id, folder)) = target else {
        return gerr(
            400,
            "ExtensionError",
            &format!(
                "Operation: Create; Exception: [Status Code: NotFound; Reason: The resource '{resource}' was not found.]"
            ),
        );
    };
    if !caller.has_any(&[
        "Mail.Read",
        "Mail.ReadWrite",
        "Mail.ReadBasic",
        "Mail.ReadBasic.All",
    ]) {
        return gerr(
            403,
            "ExtensionError",
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: Access is denied.]",
        );
    }
    let urls = std::iter::once(url.clone()).chain(lifecycle.clone());
    for u in urls {
        if !validate(&http, &u).await {
            return gerr(
                400,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            );
        }
    }
    let sub = Sub {
        id: uuid::Uuid::new_v4().to_string(),
        resource,
        change_type,
        notification_url: url,
        lifecycle_url: lifecycle,
        client_state,
        expiration: exp,
        app: caller.client_id.clone(),
        tenant: caller.tenant.clone(),
        user_id,
        folder,
    };
    let mut s = lock(state);
    let mut v = sub.json();
    v["@odata.context"] = json!(format!("{}/v1.0/$metadata#subscriptions/$entity", s.base()));
    s.subs.push(sub);
    Reply::json(
        201,
        &v,
        Some(Schema::Entity("microsoft.graph.subscription")),
    )
}

/// The validation handshake: POST `url?validationToken=...`; the endpoint must answer 200
/// with the token as its (text/plain) body within 10 s.
async fn validate(http: &reqwest::Client, url: &str) -> bool {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let Ok(mut u) = url::Url::parse(url) else {
        return false;
    };
    u.query_pairs_mut().append_pair("validationToken", &token);
    let resp = http
        .post(u)
        .header("Content-Type", "text/plain; charset=utf-8")
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match resp {
        Ok(r) if r.status().as_u16() == 200 => r.text().await.is_ok_and(|t| t == token),
        _ => false,
    }
}

/// Posts a notification body with bounded retries (back-off 1 s, 2 s, 4 s).
fn deliver(s: &mut DoubleState, url: String, payload: Value) {
    s.check_schema(
        "notification",
        &Schema::Entity("microsoft.graph.changeNotificationCollection"),
        &payload,
    );
    let http = s.http.clone();
    s.runtime.spawn(async move {
        let mut wait = Duration::from_secs(1);
        for attempt in 0..NOTIFY_ATTEMPTS {
            let r = http
                .post(&url)
                .header("Content-Type", "application/json; charset=utf-8")
                .timeout(NOTIFY_TIMEOUT)
                .body(serde_json::to_vec(&payload).unwrap_or_default())
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if attempt + 1 < NOTIFY_ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    });
}

/// Fires change notifications for a message change in a folder.
pub(super) fn notify(s: &mut DoubleState, mb: usize, folder: &str, id: &str, change: &str) {
    let user_id = s.mailboxes[mb].user_id.clone();
    let now = Utc::now();
    let targets: Vec<Sub> = s
        .subs
        .iter()
        .filter(|x| {
            x.user_id == user_id
                && x.expiration > now
                && x.folder.as_deref().is_none_or(|f| f == folder)
                && x.change_type.split(',').any(|c| c.trim() == change)
        })
        .cloned()
        .collect();
    let etag = s.mailboxes[mb]
        .messages
        .get(id)
        .map(|m| format!("W/\"{}\"", m.change_key()));
    for sub in targets {
        let mut data = json!({
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": format!("Users/{user_id}/Messages/{id}"),
            "id": id,
        });
        if let Some(e) = &etag {
            data["@odata.etag"] = json!(e);
        }
        let payload = json!({"value": [{
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": sub.expiration.to_rfc3339_opts(SecondsFormat::Secs, true),
            "changeType": change,
            "resource": format!("Users/{user_id}/Messages/{id}"),
            "resourceData": data,
            "clientState": sub.client_state,
            "tenantId": sub.tenant,
        }]});
        deliver(s, sub.notification_url.clone(), payload);
    }
}

/// Sends a lifecycle notification; `subscriptionRemoved` also removes the subscription.
pub(super) fn lifecycle(s: &mut DoubleState, id: &str, event: &str) {
    let Some(sub) = s.subs.iter().find(|x| x.id == id).cloned() else {
        return;
    };
    if event == "subscriptionRemoved" {
        s.subs.retain(|x| x.id != id);
    }
    let Some(url) = sub.lifecycle_url.clone() else {
        return;
    };
    let payload = json!({"value": [{
        "subscriptionId": sub.id,
        "subscriptionExpirationDateTime": sub.expiration.to_rfc3339_opts(SecondsFormat::Secs, true),
        "tenantId": sub.tenant,
        "clientState": sub.client_state,
        "lifecycleEvent": event,
    }]});
    deliver(s, url, payload);
}
