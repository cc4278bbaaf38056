//! EWS `ResponseCode`s (MS-OXWSCDATA `ResponseCodeType`) as failures: the step the
//! administrator looks at, the kind the retry policy reads, a code more specific than the
//! step's where one helps, and the fix. A pure table with a unit test.

use crate::ConnectError;
use serversync_model::{ErrorKind, FailureStep};
use std::time::Duration;

/// How one response code is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub step: FailureStep,
    pub kind: ErrorKind,
    /// The failure's code (`None`: the step's, `protocol_failed` and the like).
    pub code: Option<&'static str>,
    /// What to do about it.
    pub fix: &'static str,
}

const fn class(
    step: FailureStep,
    kind: ErrorKind,
    code: Option<&'static str>,
    fix: &'static str,
) -> Class {
    Class {
        step,
        kind,
        code,
        fix,
    }
}

/// The class of `code`. Codes not listed are permanent protocol failures, shown with the
/// server's own text.
pub fn classify(code: &str) -> Class {
    use ErrorKind::{Auth, Config, Permanent, Throttled, Transient};
    use FailureStep::{Authentication, Permission, Protocol};
    match code {
        "ErrorImpersonateUserDenied" | "ErrorImpersonationDenied" => class(
            Permission,
            ErrorKind::Permission,
            Some("impersonation_denied"),
            "give the service account the ApplicationImpersonation role for this mailbox \
             (New-ManagementRoleAssignment -Role ApplicationImpersonation -User <account>), or \
             use credentials of the mailbox itself",
        ),
        "ErrorAccessDenied" | "ErrorSendAsDenied" | "ErrorDelegateNoUser" | "ErrorNoPermission" => {
            class(
                Permission,
                ErrorKind::Permission,
                Some("access_denied"),
                "give the account full access to the mailbox (and Send As for sending), or use \
             impersonation",
            )
        }
        "ErrorNonExistentMailbox"
        | "ErrorInvalidSmtpAddress"
        | "ErrorMailboxNotFound"
        | "ErrorMissingEmailAddress" => class(
            Permission,
            Config,
            Some("mailbox_not_found"),
            "check the mailbox's email address: it must be the primary SMTP address of a \
             mailbox on this Exchange organization",
        ),
        "ErrorInvalidServerVersion" | "ErrorIncorrectSchemaVersion" => class(
            Protocol,
            Config,
            Some("unsupported_exchange_version"),
            "serversync needs Exchange Server 2013 SP1 or newer: upgrade the server, or point \
             the profile at a newer one",
        ),
        "ErrorAccountDisabled" | "ErrorPasswordExpired" | "ErrorPasswordChangeRequired" => class(
            Authentication,
            Auth,
            Some("account_disabled"),
            "the account is disabled or its password expired: enable it or set a new \
                 password, then enter it in serversync",
        ),
        "ErrorServerBusy"
        | "ErrorExceededConnectionCount"
        | "ErrorExceededSubscriptionCount"
        | "ErrorExceededFindCountLimit"
        | "ErrorTooManyObjectsOpened"
        | "ErrorInsufficientResources" => class(
            Protocol,
            Throttled,
            Some("throttled"),
            "Exchange is throttling this account: serversync waits as long as it asks; if it \
             persists, lower the profile's maximum concurrent connections or raise the \
             account's throttling policy",
        ),
        "ErrorMailboxStoreUnavailable"
        | "ErrorMailboxMoveInProgress"
        | "ErrorMailboxFailover"
        | "ErrorConnectionFailed"
        | "ErrorTimeoutExpired"
        | "ErrorInternalServerTransientError"
        | "ErrorInternalServerError"
        | "ErrorBatchProcessingStopped"
        | "ErrorADUnavailable"
        | "ErrorProxyRequestProcessingFailed"
        | "ErrorExpiredSubscription"
        | "ErrorSubscriptionNotFound" => class(
            Protocol,
            Transient,
            None,
            "a passing condition on the Exchange server: serversync tries again",
        ),
        "ErrorQuotaExceeded" => class(
            Permission,
            Permanent,
            Some("mailbox_full"),
            "the mailbox is over its storage quota: free space or raise the quota",
        ),
        "ErrorFolderNotFound" => class(
            Protocol,
            Config,
            Some("folder_not_found"),
            "the folder does not exist in the mailbox: check the profile's tracked folders",
        ),
        "ErrorInvalidSyncStateData" => class(
            Protocol,
            Permanent,
            Some("sync_state_invalid"),
            "the server no longer knows the synchronization state: the folder is read again \
             from the start (nothing is stored twice)",
        ),
        "ErrorCrossSiteRequest" | "ErrorProxyRequestNotAllowed" => class(
            Protocol,
            Config,
            Some("mailbox_on_other_site"),
            "the mailbox is on another site or in Exchange Online: turn auto-discover on so \
             serversync finds the server that holds it",
        ),
        _ => class(
            Protocol,
            Permanent,
            None,
            "check the Exchange server's event log for this request",
        ),
    }
}

/// The failure for a response message `code` (`text`: the server's `MessageText`), with the
/// back-off the server asked for.
pub fn failure(what: &str, code: &str, text: &str, back_off: Option<Duration>) -> ConnectError {
    let c = classify(code);
    let said = if text.trim().is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {}", one_line(text))
    };
    let mut e = ConnectError::new(
        c.step,
        c.kind,
        format!("Exchange refused {what} ({said}): {}", c.fix),
    );
    if let Some(code) = c.code {
        e = e.with_code(code);
    }
    if let Some(after) = back_off {
        e = e.with_retry_after(after);
    }
    e
}

/// `text` on one line, cut at 300 characters.
pub(crate) fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &joined[..i]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_name_the_step_kind_and_cause() {
        let cases = [
            (
                "ErrorImpersonateUserDenied",
                FailureStep::Permission,
                ErrorKind::Permission,
                Some("impersonation_denied"),
            ),
            (
                "ErrorAccessDenied",
                FailureStep::Permission,
                ErrorKind::Permission,
                Some("access_denied"),
            ),
            (
                "ErrorNonExistentMailbox",
                FailureStep::Permission,
                ErrorKind::Config,
                Some("mailbox_not_found"),
            ),
            (
                "ErrorInvalidServerVersion",
                FailureStep::Protocol,
                ErrorKind::Config,
                Some("unsupported_exchange_version"),
            ),
            (
                "ErrorServerBusy",
                FailureStep::Protocol,
                ErrorKind::Throttled,
                Some("throttled"),
            ),
            (
                "ErrorMailboxStoreUnavailable",
                FailureStep::Protocol,
                ErrorKind::Transient,
                None,
            ),
            (
                "ErrorSchemaValidation",
                FailureStep::Protocol,
                ErrorKind::Permanent,
                None,
            ),
        ];
        for (code, step, kind, specific) in cases {
            let c = classify(code);
            assert_eq!((c.step, c.kind, c.code), (step, kind, specific), "{code}");
        }
        let e = failure(
            "SyncFolderItems",
            "ErrorServerBusy",
            "The server cannot service this request right now.\n Try again later.",
            Some(Duration::from_millis(5000)),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert_eq!(e.code.as_deref(), Some("throttled"));
        assert!(
            e.message.contains("right now. Try again later."),
            "{}",
            e.message
        );
    }
}
