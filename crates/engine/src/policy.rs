//! The error-class and back-off policy (REFERENCE.md part A "Errors, retries, alerts").
//!
//! Permanent failures (authentication, permission, configuration, permanent) disable the
//! direction at once. Transient failures (network, timeout, throttling) are retried — by
//! default 10 attempts 5 minutes apart, configurable per organization — and disable the
//! direction when the attempts are used up. Throttling waits at least as long as the server
//! asked. Pure: the engine applies the decision and raises the alerts.

use serversync_connectors::ConnectError;
use serversync_model::mailbox::{DirectionStatus, LastError, Mailbox, RunStatus};
use serversync_model::settings::RetryPolicy;
use serversync_model::{ErrorKind, FailureStep, Timestamp};
use std::time::Duration;

/// Which of a mailbox's three directions failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Incoming,
    Outgoing,
    Act,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again no sooner than this.
    RetryAt(Timestamp),
    /// Stop processing this direction until an administrator tests and enables it again.
    Disable,
}

/// The one failure type of the engine's connections and pipelines: why a mailbox's direction
/// could not be tested or run, as the retry policy reads it (kind), the administrator sees it
/// (step, message) and alerts name it (code). A connector's [`ConnectError`] converts into it
/// coded by the step that failed (`authentication_failed`, `tls_failed`, ...).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: ErrorKind,
    pub step: Option<FailureStep>,
    pub code: String,
    pub message: String,
    /// Server-requested delay (throttling).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A configuration problem a person has to fix (no retry), with its code.
    pub fn config(code: &str, message: impl Into<String>) -> Self {
        Failure {
            kind: ErrorKind::Config,
            step: None,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The "forward mailbox" incoming method is not built: test and enable fails it, and a
    /// mailbox enabled with it before it was refused has its incoming direction disabled with
    /// this.
    pub fn forward_mailbox_not_available() -> Self {
        Failure::config(
            "forward_mailbox_not_available",
            format!(
                "incoming_method: {}",
                serversync_model::settings::FORWARD_MAILBOX_NOT_AVAILABLE
            ),
        )
    }

    /// A failure of `kind` at `step`, with its own code (not the step's).
    pub fn coded(
        code: &str,
        kind: ErrorKind,
        step: FailureStep,
        message: impl Into<String>,
    ) -> Self {
        Failure {
            kind,
            step: Some(step),
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<&ConnectError> for Failure {
    /// Coded by the server's cause where the connector named one, else by the step that
    /// failed: `authentication_failed`, `tls_failed`, ...
    fn from(e: &ConnectError) -> Self {
        Failure {
            kind: e.kind,
            step: Some(e.step),
            code: e
                .code
                .clone()
                .unwrap_or_else(|| format!("{}_failed", serversync_model::wire_name(&e.step))),
            message: e.to_string(),
            retry_after: e.retry_after(),
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        Failure::from(&e)
    }
}

/// Decides retry or disable from the error kind and the failures so far (including this one).
pub fn decide(
    kind: ErrorKind,
    transient_failures: u32,
    policy: &RetryPolicy,
    retry_after: Option<Duration>,
    now: Timestamp,
) -> Decision {
    if !kind.is_transient() || transient_failures >= policy.max_attempts {
        return Decision::Disable;
    }
    let interval = Duration::from_secs(policy.interval_seconds.into());
    let wait = match (kind, retry_after) {
        (ErrorKind::Throttled, Some(after)) => interval.max(after),
        _ => interval,
    };
    Decision::RetryAt(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
}

fn direction(m: &mut Mailbox, d: Direction) -> &mut DirectionStatus {
    match d {
        Direction::Incoming => &mut m.incoming,
        Direction::Outgoing => &mut m.outgoing,
        Direction::Act => &mut m.act,
    }
}

/// Records a failure on the mailbox (status, telemetry) and returns the decision.
pub fn record_failure(
    m: &mut Mailbox,
    d: Direction,
    f: &Failure,
    policy: &RetryPolicy,
    now: Timestamp,
) -> Decision {
    let t = &mut m.telemetry;
    if f.kind.is_transient() {
        t.transient_failure_count += 1;
    }
    let count = match &t.last_error {
        Some(e) if e.code == f.code => e.count + 1,
        _ => 1,
    };
    t.last_error = Some(LastError {
        kind: f.kind,
        step: f.step,
        code: f.code.clone(),
        message: f.message.clone(),
        count,
        at: now,
    });
    let decision = decide(
        f.kind,
        t.transient_failure_count,
        policy,
        f.retry_after,
        now,
    );
    let dir = direction(m, d);
    dir.status = RunStatus::Failure;
    dir.at = Some(now);
    match decision {
        Decision::RetryAt(at) => m.telemetry.postponed_until = Some(at),
        Decision::Disable => {
            direction(m, d).enabled = false;
            m.telemetry.postponed_until = None;
        }
    }
    decision
}

/// Records a success: the direction is healthy again and the transient counter resets.
pub fn record_success(m: &mut Mailbox, d: Direction, now: Timestamp) {
    let dir = direction(m, d);
    dir.status = RunStatus::Success;
    dir.at = Some(now);
    m.telemetry.transient_failure_count = 0;
    m.telemetry.postponed_until = None;
    m.telemetry.last_successful_sync = Some(now);
}

/// The profile owner is emailed when more than half of the profile's mailboxes failed within
/// the last hour (and the profile asks for it).
pub fn profile_mostly_failing(failed_last_hour: usize, mailboxes: usize) -> bool {
    mailboxes > 0 && failed_last_hour * 2 > mailboxes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_model::mailbox::MailboxRegarding;
    use serversync_model::settings::EmailSettings;
    use serversync_model::{OrgId, UserId};

    fn mailbox() -> Mailbox {
        let org = OrgId::new();
        let mut m = Mailbox::new_with_defaults(
            org,
            MailboxRegarding::User(UserId::new()),
            UserId::new(),
            "A",
            "a@example.test",
            &EmailSettings::new(org),
            chrono::Utc::now(),
        );
        m.incoming.enabled = true;
        m
    }

    fn failure(kind: ErrorKind) -> Failure {
        Failure {
            kind,
            step: Some(FailureStep::TcpConnect),
            code: "tcp_connect_failed".into(),
            message: "refused".into(),
            retry_after: None,
        }
    }

    #[test]
    fn permanent_errors_disable_at_once() {
        let policy = RetryPolicy::default();
        for kind in [
            ErrorKind::Auth,
            ErrorKind::Permission,
            ErrorKind::Config,
            ErrorKind::Permanent,
        ] {
            let mut m = mailbox();
            assert_eq!(
                record_failure(
                    &mut m,
                    Direction::Incoming,
                    &failure(kind),
                    &policy,
                    chrono::Utc::now()
                ),
                Decision::Disable,
                "{kind:?}"
            );
            assert!(!m.incoming.enabled);
            assert_eq!(m.incoming.status, RunStatus::Failure);
        }
    }

    #[test]
    fn transient_errors_retry_ten_times_five_minutes_apart_then_disable() {
        let policy = RetryPolicy::default();
        let mut m = mailbox();
        let now = chrono::Utc::now();
        for i in 1..10 {
            match record_failure(
                &mut m,
                Direction::Incoming,
                &failure(ErrorKind::Transient),
                &policy,
                now,
            ) {
                Decision::RetryAt(at) => {
                    assert_eq!(at - now, chrono::Duration::minutes(5), "attempt {i}")
                }
                Decision::Disable => panic!("disabled after {i} failures"),
            }
            assert!(m.incoming.enabled);
        }
        assert_eq!(
            record_failure(
                &mut m,
                Direction::Incoming,
                &failure(ErrorKind::Transient),
                &policy,
                now
            ),
            Decision::Disable
        );
        assert!(!m.incoming.enabled);
        assert_eq!(m.telemetry.last_error.as_ref().unwrap().count, 10);

        let mut m = mailbox();
        record_failure(
            &mut m,
            Direction::Incoming,
            &failure(ErrorKind::Transient),
            &policy,
            now,
        );
        record_success(&mut m, Direction::Incoming, now);
        assert_eq!(m.telemetry.transient_failure_count, 0);
        assert_eq!(m.incoming.status, RunStatus::Success);
    }

    #[test]
    fn throttling_waits_as_long_as_the_server_asks_and_policy_is_configurable() {
        let now = chrono::Utc::now();
        let policy = RetryPolicy {
            max_attempts: 2,
            interval_seconds: 60,
        };
        assert_eq!(
            decide(
                ErrorKind::Throttled,
                1,
                &policy,
                Some(Duration::from_secs(600)),
                now
            ),
            Decision::RetryAt(now + chrono::Duration::seconds(600))
        );
        assert_eq!(
            decide(ErrorKind::Transient, 1, &policy, None, now),
            Decision::RetryAt(now + chrono::Duration::seconds(60))
        );
        assert_eq!(
            decide(ErrorKind::Transient, 2, &policy, None, now),
            Decision::Disable
        );
    }

    #[test]
    fn owner_email_when_more_than_half_fail() {
        assert!(!profile_mostly_failing(0, 0));
        assert!(!profile_mostly_failing(2, 4));
        assert!(profile_mostly_failing(3, 4));
    }
}
