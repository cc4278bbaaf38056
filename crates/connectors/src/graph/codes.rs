//! Microsoft Graph's answers classified: the HTTP status and the error body's `code`
//! (`{"error":{"code","message"}}`, Graph's JSON error form) become a [`ConnectError`] with the
//! failing step, the kind the retry policy reads, a specific code and the fix; `Retry-After`
//! becomes [`ConnectError::retry_after`].

use crate::ConnectError;
use serversync_model::{ErrorKind, FailureStep};
use std::time::Duration;

/// Graph's error body, as far as it is read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub code: String,
    pub message: String,
}

impl GraphError {
    /// Reads `{"error":{"code","message"}}`; anything else is an empty error.
    pub fn parse(body: &[u8]) -> GraphError {
        #[derive(serde::Deserialize)]
        struct Outer {
            error: Option<Inner>,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            code: Option<String>,
            message: Option<String>,
        }
        serde_json::from_slice::<Outer>(body)
            .ok()
            .and_then(|o| o.error)
            .map(|e| GraphError {
                code: one_line(e.code.as_deref().unwrap_or_default()),
                message: one_line(e.message.as_deref().unwrap_or_default()),
            })
            .unwrap_or_default()
    }

    fn said(&self, status: u16) -> String {
        match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => format!("{} ({})", self.code, self.message),
            (false, true) => self.code.clone(),
            (true, false) => self.message.clone(),
            (true, true) => format!("HTTP {status}"),
        }
    }
}

/// Server text for a one-line message, bounded.
pub(crate) fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    s.trim().to_owned()
}

/// `Retry-After` in seconds (Graph sends seconds; an HTTP date is not used by Graph and is
/// read as absent).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The failure for a non-2xx answer to `what` (e.g. "reading the Inbox").
pub fn classify(status: u16, body: &[u8], retry: Option<Duration>, what: &str) -> ConnectError {
    use ErrorKind::*;
    use FailureStep::*;
    let e = GraphError::parse(body);
    let said = e.said(status);
    let code = e.code.as_str();
    let (step, kind, our, fix): (FailureStep, ErrorKind, &str, String) = match (status, code) {
        (401, _) => (
            Authentication,
            Auth,
            "token_refused",
            "Microsoft Graph refused the access token: check the profile's tenant, application \
             id and secret, and that the application is registered in the mailbox's tenant"
                .into(),
        ),
        (404, "MailboxNotEnabledForRESTAPI") => (
            FailureStep::Permission,
            Config,
            "mailbox_not_in_exchange_online",
            "the mailbox is not in Exchange Online (it is hosted on-premises, inactive or \
             soft-deleted): for an on-premises mailbox use an Exchange Server (Hybrid) profile; \
             for a mailbox on another server, a POP3/IMAP-SMTP profile"
                .into(),
        ),
        (403, _) => (
            FailureStep::Permission,
            Config,
            "consent_missing",
            "the application may not do this in the mailbox's tenant: grant admin consent to \
             its Mail.ReadWrite and Mail.Send application permissions (for another tenant's \
             mailboxes, that tenant's global or Exchange administrator consents), and check any \
             application access policy that limits it to some mailboxes"
                .into(),
        ),
        (404, "ErrorItemNotFound") => (
            Protocol,
            Permanent,
            "item_not_found",
            "the message is no longer in the mailbox".into(),
        ),
        (404, "ErrorInvalidUser" | "Request_ResourceNotFound" | "ErrorNonExistentMailbox") => (
            FailureStep::Permission,
            Config,
            "mailbox_not_found",
            "Microsoft Graph knows no such user in the tenant: check the mailbox's email \
             address, and that the profile's tenant is the mailbox's"
                .into(),
        ),
        (404, _) => (
            Protocol,
            Permanent,
            "not_found",
            "Microsoft Graph has no such object".into(),
        ),
        (410, _) => (
            Protocol,
            Permanent,
            "sync_state_invalid",
            "the change-tracking state expired: the folder is read again from the start".into(),
        ),
        (429, _) | (503, "ApplicationThrottled") => (
            Protocol,
            Throttled,
            "throttled",
            "Microsoft Graph is limiting this application's requests: waiting as it asked".into(),
        ),
        (503 | 504, _) => (
            Protocol,
            Transient,
            "server_unavailable",
            "Microsoft Graph is temporarily unavailable: trying again later".into(),
        ),
        (413, _) => (
            Protocol,
            Permanent,
            "too_large",
            "the request is larger than Microsoft Graph accepts (4 MB for a message sent as \
             MIME)"
                .into(),
        ),
        (s, _) if s >= 500 => (
            Protocol,
            Transient,
            "server_error",
            "Microsoft Graph failed: trying again later".into(),
        ),
        _ => (
            Protocol,
            Permanent,
            "request_refused",
            "Microsoft Graph refused the request".into(),
        ),
    };
    let mut err =
        ConnectError::new(step, kind, format!("{what}: Graph said {said}: {fix}")).with_code(our);
    if let Some(r) = retry {
        err = err.with_retry_after(r);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str) -> Vec<u8> {
        format!(r#"{{"error":{{"code":"{code}","message":"m","innerError":{{}}}}}}"#).into_bytes()
    }

    #[test]
    fn answers_become_steps_kinds_and_codes() {
        let cases = [
            (
                401,
                "InvalidAuthenticationToken",
                FailureStep::Authentication,
                ErrorKind::Auth,
                "token_refused",
            ),
            (
                403,
                "ErrorAccessDenied",
                FailureStep::Permission,
                ErrorKind::Config,
                "consent_missing",
            ),
            (
                404,
                "MailboxNotEnabledForRESTAPI",
                FailureStep::Permission,
                ErrorKind::Config,
                "mailbox_not_in_exchange_online",
            ),
            (
                404,
                "Request_ResourceNotFound",
                FailureStep::Permission,
                ErrorKind::Config,
                "mailbox_not_found",
            ),
            (
                404,
                "ErrorItemNotFound",
                FailureStep::Protocol,
                ErrorKind::Permanent,
                "item_not_found",
            ),
            (
                410,
                "syncStateNotFound",
                FailureStep::Protocol,
                ErrorKind::Permanent,
                "sync_state_invalid",
            ),
            (
                429,
                "ApplicationThrottled",
                FailureStep::Protocol,
                ErrorKind::Throttled,
                "throttled",
            ),
            (
                503,
                "ApplicationThrottled",
                FailureStep::Protocol,
                ErrorKind::Throttled,
                "throttled",
            ),
            (
                504,
                "",
                FailureStep::Protocol,
                ErrorKind::Transient,
                "server_unavailable",
            ),
            (
                400,
                "ErrorInvalidRequest",
                FailureStep::Protocol,
                ErrorKind::Permanent,
                "request_refused",
            ),
        ];
        for (status, code, step, kind, ours) in cases {
            let e = classify(status, &body(code), None, "reading the Inbox");
            assert_eq!(
                (e.step, e.kind, e.code.as_deref()),
                (step, kind, Some(ours)),
                "{status} {code}"
            );
            assert!(
                e.message.starts_with("reading the Inbox: Graph said"),
                "{}",
                e.message
            );
            if !code.is_empty() {
                assert!(e.message.contains(code), "{}", e.message);
            }
        }
    }

    #[test]
    fn retry_after_is_seconds() {
        assert_eq!(retry_after(Some("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        let e = classify(429, b"not json", Some(Duration::from_secs(3)), "x");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.message.contains("HTTP 429"));
    }
}
