//! "Test and enable": for each configured direction of a mailbox, a real connectivity test
//! against its server; the three status fields written; the mailbox enabled on success; alerts
//! for the mailbox owner (success) or the mailbox and the profile owner (failure).

use crate::EngineConfig;
use crate::admin::alert;
use crate::policy::{self, Direction, Failure};
use crate::session::{MailboxSession, Side};
use serversync_connectors::{ProbeReport, Server, probe};
use serversync_model::MailboxId;
use serversync_model::alert::Severity;
use serversync_model::job::{JobItemResult, ServerCertificate};
use serversync_model::mailbox::{DirectionStatus, Mailbox, RunStatus};
use serversync_model::org::Organization;
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::{ActMethod, IncomingMethod, OutgoingMethod};
use serversync_model::wire_name;
use serversync_store::{NewAuditEntry, Store, StoreError};

/// The failure of a probe: `what` (the direction) failed at the step the report names.
fn probe_failure(what: &str, r: &ProbeReport) -> Option<Failure> {
    r.failure.as_ref().map(|f| Failure {
        message: format!("{what}: {f}"),
        ..Failure::from(f)
    })
}

fn now() -> serversync_model::Timestamp {
    chrono::Utc::now()
}

/// What probing a mailbox found: the outcome of each direction tested (a summary or the
/// problem) and the certificates the servers presented.
struct Probed {
    outcomes: Vec<(Direction, Result<String, Failure>)>,
    certificates: Vec<ServerCertificate>,
    /// Exchange: the EWS URL reached and the server's version, kept on the mailbox.
    exchange: Option<(String, Option<String>)>,
}

/// What a test's outcome depends on: the mailbox without the fields the test and the workers
/// write (direction statuses, telemetry), the stored profile's version, and whether approval is
/// required. Administrators' edits, approval and rejection change it (they set `updated_at`).
#[derive(PartialEq)]
struct Tested {
    mailbox: Mailbox,
    profile_version: Option<i64>,
    needs_approval: bool,
}

impl Tested {
    fn of(
        m: &Mailbox,
        profile: Option<i64>,
        settings: &serversync_model::settings::EmailSettings,
    ) -> Self {
        let mut mailbox = m.clone();
        mailbox.incoming = DirectionStatus::default();
        mailbox.outgoing = DirectionStatus::default();
        mailbox.act = DirectionStatus::default();
        mailbox.test_completed_on = None;
        mailbox.telemetry = Default::default();
        Tested {
            mailbox,
            profile_version: profile,
            needs_approval: m.needs_approval(settings),
        }
    }
}

/// How often a mailbox changed while it was tested is tested again before the job gives up on it.
const TRIES: usize = 3;

/// Tests one mailbox and writes the outcome. Returns the job item result: what the
/// organization's administrators see, with the certificates the servers presented but never
/// what a server says in its greeting.
///
/// The mailbox may change while its servers are probed. The outcome is written only onto the
/// version it was computed from, or onto a newer one that differs in telemetry alone; a mailbox
/// whose configuration, approval or profile changed meanwhile is tested again, so a rejection
/// or an edit made during the test is never undone by it.
pub async fn test_and_enable(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
) -> Result<JobItemResult, StoreError> {
    let mut earlier: Option<(Tested, Probed)> = None;
    for _ in 0..TRIES {
        let Some(stored) = store.get::<Mailbox>(&id.to_string()).await? else {
            return Ok(JobItemResult {
                mailbox_id: id,
                ok: false,
                message: "mailbox no longer exists".into(),
                certificates: Vec::new(),
            });
        };
        let before = stored.value;
        let settings = crate::org_settings(store, before.org_id).await?;
        let profile = match before.profile_id {
            Some(p) => store.get::<EmailServerProfile>(&p.to_string()).await?,
            None => None,
        };
        let tested = Tested::of(&before, profile.as_ref().map(|p| p.version), &settings);
        let profile = profile.map(|p| p.value);
        let probed = match earlier.take() {
            Some((t, p)) if t == tested => p,
            _ => probe(store, config, &before, profile.as_ref(), &settings).await?,
        };
        let mut m = before.clone();
        let (all_ok, message, alert) = apply(&probed.outcomes, &mut m, profile.as_ref());
        if let Some((url, version)) = &probed.exchange {
            if profile.as_ref().is_some_and(|p| p.auto_discover) {
                m.telemetry.ews_url = Some(url.clone());
            }
            m.telemetry.server_version = version.clone().or(m.telemetry.server_version);
        }
        match store
            .update_audited(
                &m,
                Some(stored.version),
                Some(NewAuditEntry::change(
                    serversync_model::audit::Actor::System("test_and_enable".into()),
                    "test_and_enable",
                    Some(&before),
                    Some(&m),
                )),
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::VersionMismatch { .. }) => {
                earlier = Some((tested, probed));
                continue;
            }
            Err(e) => return Err(e),
        }
        store.insert(&alert).await?;
        if !all_ok && let Some(p) = &profile {
            crate::alerts_email::profile_failures(store, config, p.id).await?;
        }
        tracing::info!(mailbox = %m.id, ok = all_ok, "test and enable finished");
        return Ok(JobItemResult {
            mailbox_id: id,
            ok: all_ok,
            message,
            certificates: probed.certificates,
        });
    }
    tracing::warn!(mailbox = %id, "test and enable not recorded: the mailbox kept changing");
    Ok(JobItemResult {
        mailbox_id: id,
        ok: false,
        message: "the mailbox kept changing while it was tested: test and enable it again".into(),
        certificates: Vec::new(),
    })
}

/// The precheck (directions, approval, profile), then a real probe of each configured direction.
async fn probe(
    store: &Store,
    config: &EngineConfig,
    m: &Mailbox,
    profile: Option<&EmailServerProfile>,
    settings: &serversync_model::settings::EmailSettings,
) -> Result<Probed, StoreError> {
    let mut outcomes: Vec<(Direction, Result<String, Failure>)> = Vec::new();
    let mut directions = Vec::new();
    if m.incoming_method != IncomingMethod::None {
        directions.push(Direction::Incoming);
    }
    if m.outgoing_method != OutgoingMethod::None {
        directions.push(Direction::Outgoing);
    }
    if m.act_method == ActMethod::ServerSideSync {
        directions.push(Direction::Act);
    }

    let precheck = if directions.is_empty() {
        Some(Failure::config(
            "nothing_to_test",
            "no delivery method is set to server-side synchronization: edit the mailbox's incoming, outgoing or appointments/contacts/tasks method",
        ))
    } else if m.needs_approval(settings) {
        Some(Failure::config(
            "mailbox_not_approved",
            format!(
                "the email address {} must be approved before email is processed: use \"Approve email\" on the mailbox, then test and enable it again",
                m.email
            ),
        ))
    } else if let Some(p) = profile {
        fips_problem(store, config, p).await?
    } else {
        Some(Failure::config(
            "no_profile",
            "the mailbox has no email server profile: apply the default email settings or choose a profile",
        ))
    };
    let mut certificates = Vec::new();
    let mut exchange = None;

    match (&precheck, &profile) {
        (Some(p), _) => {
            for d in &directions {
                outcomes.push((*d, Err(p.clone())));
            }
        }
        (None, Some(profile)) => {
            let session =
                MailboxSession::new(config, m.clone(), (*profile).clone(), settings.clone());
            for d in &directions {
                let r = match d {
                    Direction::Incoming => {
                        test_incoming(store, &session, &mut certificates, &mut exchange).await?
                    }
                    Direction::Outgoing => {
                        test_outgoing(store, &session, &mut certificates, &mut exchange).await?
                    }
                    Direction::Act => crate::twoway::test(store, &session).await?,
                };
                outcomes.push((*d, r));
            }
        }
        (None, None) => unreachable!("the precheck covers a missing profile"),
    }

    Ok(Probed {
        outcomes,
        certificates,
        exchange,
    })
}

/// Writes the outcomes into the mailbox's status fields and telemetry (enabled only when all
/// passed); returns whether all passed, the job item's message and the alert to raise.
fn apply(
    outcomes: &[(Direction, Result<String, Failure>)],
    m: &mut Mailbox,
    profile: Option<&EmailServerProfile>,
) -> (bool, String, serversync_model::alert::Alert) {
    let at = now();
    let all_ok = outcomes.iter().all(|(_, r)| r.is_ok());
    for (d, r) in outcomes {
        let status = match r {
            Ok(_) => RunStatus::Success,
            Err(_) => RunStatus::Failure,
        };
        let ds = DirectionStatus {
            status,
            at: Some(at),
            enabled: all_ok,
        };
        match d {
            Direction::Incoming => m.incoming = ds,
            Direction::Outgoing => m.outgoing = ds,
            Direction::Act => m.act = ds,
        }
    }
    m.test_completed_on = Some(at);
    m.updated_at = at;
    let first_problem = outcomes.iter().find_map(|(_, r)| r.as_ref().err().cloned());
    let (message, alert) = match &first_problem {
        None => {
            m.telemetry.transient_failure_count = 0;
            m.telemetry.last_error = None;
            m.telemetry.postponed_until = None;
            let details: Vec<String> = outcomes
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok().cloned())
                .collect();
            let msg = format!(
                "Test and enable succeeded for {}: {}. The mailbox is enabled.",
                m.email,
                details.join("; ")
            );
            (
                msg.clone(),
                alert(
                    m,
                    Severity::Information,
                    "test_enable_succeeded",
                    msg,
                    None,
                    vec![m.owner_id],
                ),
            )
        }
        Some(p) => {
            let failed_dir = outcomes
                .iter()
                .find(|(_, r)| r.is_err())
                .map(|(d, _)| *d)
                .unwrap_or(Direction::Incoming);
            // Test and enable never retries by itself: record the error, leave the mailbox disabled.
            policy::record_failure(
                m,
                failed_dir,
                p,
                &serversync_model::settings::RetryPolicy {
                    max_attempts: 0,
                    interval_seconds: 1,
                },
                at,
            );
            let msg = format!("Test and enable failed for {}: {}", m.email, p.message);
            let mut recipients = vec![m.owner_id];
            if let Some(owner) = profile.as_ref().map(|p| p.owner_id) {
                recipients.push(owner);
            }
            (
                msg.clone(),
                alert(m, Severity::Error, &p.code, msg, p.step, recipients),
            )
        }
    };
    (all_ok, message, alert)
}

/// In FIPS mode (the installation's or the organization's), a profile saved before it was
/// turned on may still use what FIPS refuses: it is not tested (nor enabled).
async fn fips_problem(
    store: &Store,
    config: &EngineConfig,
    p: &EmailServerProfile,
) -> Result<Option<Failure>, StoreError> {
    let org_fips = store
        .get::<Organization>(&p.org_id.to_string())
        .await?
        .is_some_and(|o| o.value.fips_mode);
    if !(config.network.fips() || org_fips) {
        return Ok(None);
    }
    Ok(p.validate(true).err().and_then(|e| {
        e.0.into_iter()
            .find(|e| e.code == "not_fips_compliant")
            .map(|e| {
                Failure::config(
                    "not_fips_compliant",
                    format!("the email server profile ({}): {}", e.field, e.message),
                )
            })
    }))
}

/// Keeps the certificate a probe saw for the report.
fn keep_certificate(
    out: &mut Vec<ServerCertificate>,
    direction: &str,
    p: &EmailServerProfile,
    a: &Server,
    r: &ProbeReport,
) {
    if let Some(c) = &r.certificate {
        out.push(ServerCertificate {
            direction: direction.into(),
            profile_id: p.id,
            server: r.endpoint.clone().unwrap_or_else(|| a.describe()),
            certificate: c.clone(),
            pinned: r.certificate_pinned,
        });
    }
}

/// A profile whose server is not of its protocol's kind (no probe for the pair).
fn not_available() -> Failure {
    Failure::config(
        "connector_not_available",
        "the profile's server is not of its protocol's kind: check the profile's server type",
    )
}

fn summary(r: &ProbeReport) -> String {
    if let Some(url) = &r.endpoint {
        // Exchange: each step, as the administrator follows them.
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| format!("{} ({})", s.action, s.detail))
            .collect();
        return format!("at {url}: {}", steps.join(" → "));
    }
    let mut caps: Vec<&str> = r
        .capabilities
        .iter()
        .map(|c| c.split_whitespace().next().unwrap_or(c))
        .collect();
    caps.sort_unstable();
    caps.dedup();
    caps.truncate(12);
    let pinned = if r.certificate_pinned {
        "; certificate accepted by its pinned fingerprint"
    } else {
        ""
    };
    format!(
        "{} steps passed; capabilities {}{pinned}",
        r.steps.len(),
        caps.join(" ")
    )
}

/// Keeps what an Exchange (EWS) probe found: the EWS URL and the server's version.
fn keep_exchange(out: &mut Option<(String, Option<String>)>, r: &ProbeReport) {
    if r.has_capability(serversync_connectors::graph::probe::CAPABILITY) {
        // Graph's address is the cloud's, not the mailbox's.
        return;
    }
    if let Some(url) = &r.endpoint {
        let version = r
            .capabilities
            .iter()
            .find(|c| c.starts_with("exchange"))
            .cloned();
        *out = Some((url.clone(), version));
    }
}

async fn test_incoming(
    store: &Store,
    session: &MailboxSession,
    certificates: &mut Vec<ServerCertificate>,
    exchange: &mut Option<(String, Option<String>)>,
) -> Result<Result<String, Failure>, StoreError> {
    let (m, p, opts) = (&session.mailbox, &session.profile, &session.opts);
    if m.incoming_method == IncomingMethod::EmailRouter {
        return Ok(Ok("incoming by Email Router (nothing to connect to)".into()));
    }
    if m.incoming_method == IncomingMethod::ForwardMailbox {
        return Ok(Err(Failure::forward_mailbox_not_available()));
    }
    let mut login = match session.login(store, Side::Incoming).await? {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let a = match session.address(Side::Incoming) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    // A token the server refuses (revoked or expired early) is replaced once.
    let mut retried = false;
    let report = loop {
        let Some(report) = probe::incoming(p.incoming_protocol, &a, &login, opts).await else {
            return Ok(Err(not_available()));
        };
        if !retried && crate::oauth::refused(&login, report.failure.as_ref()) {
            retried = true;
            login = match session.login(store, Side::Incoming).await? {
                Ok(l) => l,
                Err(e) => return Ok(Err(e)),
            };
            continue;
        }
        break report;
    };
    keep_certificate(certificates, "incoming", p, &a, &report);
    keep_exchange(exchange, &report);
    let label = format!(
        "incoming ({})",
        wire_name(&p.incoming_protocol).to_uppercase()
    );
    Ok(match probe_failure(&label, &report) {
        Some(problem) => Err(problem),
        None => Ok(format!("{label} {}", summary(&report))),
    })
}

async fn test_outgoing(
    store: &Store,
    session: &MailboxSession,
    certificates: &mut Vec<ServerCertificate>,
    exchange: &mut Option<(String, Option<String>)>,
) -> Result<Result<String, Failure>, StoreError> {
    let (m, p, opts) = (&session.mailbox, &session.profile, &session.opts);
    if m.outgoing_method == OutgoingMethod::EmailRouter {
        return Ok(Ok("outgoing by Email Router (nothing to connect to)".into()));
    }
    let mut login = match session.login(store, Side::Outgoing).await? {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let a = match session.address(Side::Outgoing) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let mut retried = false;
    let report = loop {
        let Some(report) =
            probe::outgoing(p.outgoing_protocol, &a, Some(&login), &m.email, opts).await
        else {
            return Ok(Err(not_available()));
        };
        if !retried && crate::oauth::refused(&login, report.failure.as_ref()) {
            retried = true;
            login = match session.login(store, Side::Outgoing).await? {
                Ok(l) => l,
                Err(e) => return Ok(Err(e)),
            };
            continue;
        }
        break report;
    };
    keep_certificate(certificates, "outgoing", p, &a, &report);
    keep_exchange(exchange, &report);
    let label = format!(
        "outgoing ({})",
        wire_name(&p.outgoing_protocol).to_uppercase()
    );
    Ok(match probe_failure(&label, &report) {
        Some(problem) => Err(problem),
        None => Ok(format!("{label} {}", summary(&report))),
    })
}
