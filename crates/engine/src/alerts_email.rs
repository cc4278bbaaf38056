//! A failing profile's owner is told (REFERENCE.md part A, the profile's advanced setting
//! "email the owner on failures"): when more than half of an email server profile's mailboxes
//! failed within the last hour — found by test and enable or by a synchronization pipeline —
//! the profile owner gets a warning alert and, with `email_owner_on_failures`, an email.
//!
//! At most once an hour per profile, across workers and restarts: the first to see the burst
//! takes the lease `profile-alert:<profile>` for an hour and never gives it back; whoever finds
//! it taken (another worker, this one later, a restarted one) does nothing.
//!
//! The email goes from the owner's own mailbox when it can send (an outgoing email activity
//! composed through [`Admin::compose_email`], so the sender loop sends it with every guarantee:
//! the send rate, retries, never twice, the Sent copy), else through the installation's SMTP
//! relay (`[alerts.smtp_relay]`), else the alert says the email could not be sent and why.

use crate::{Admin, AdminError, EngineConfig};
use chrono::Utc;
use serversync_connectors::transport::{MailTransport, RefusedAt, Submission};
use serversync_connectors::{Login, ServerAddr};
use serversync_model::alert::{Alert, Severity};
use serversync_model::auth::Caller;
use serversync_model::crm::{NewEmail, Recipient};
use serversync_model::mailbox::{Mailbox, MailboxRegarding, RunStatus};
use serversync_model::org::{Privilege, User};
use serversync_model::profile::OutgoingProtocol;
use serversync_model::profile::{EmailServerProfile, TlsMode};
use serversync_model::settings::OutgoingMethod;
use serversync_model::{ProfileId, Secret};
use serversync_store::{Col, Store, StoreError};
use std::time::Duration;

/// The installation's SMTP relay for alert emails (`[alerts.smtp_relay]`), used when the
/// profile owner's own mailbox cannot send.
#[derive(Debug, Clone)]
pub struct SmtpRelay {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Signs in when both are set.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The sender address (`From` and `MAIL FROM`).
    pub from: String,
}

/// Alert emails (the `[alerts]` section).
#[derive(Debug, Clone, Default)]
pub struct AlertsConfig {
    pub smtp_relay: Option<SmtpRelay>,
}

/// The lease that marks "the owner was told within the hour".
fn resource(p: ProfileId) -> String {
    format!("profile-alert:{p}")
}

const ONCE_PER: Duration = Duration::from_secs(3600);

/// After a mailbox of `profile_id` failed: when more than half of the profile's mailboxes
/// failed within the last hour and the owner was not told within the hour, tells them (an
/// alert, and with `email_owner_on_failures` an email).
pub(crate) async fn profile_failures(
    store: &Store,
    config: &EngineConfig,
    profile_id: ProfileId,
) -> Result<(), StoreError> {
    let Some(p) = store
        .get::<EmailServerProfile>(&profile_id.to_string())
        .await?
    else {
        return Ok(());
    };
    let p = p.value;
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    let mailboxes = store
        .list_all::<Mailbox>(Some(p.org_id), &[("profile_id", Col::text(p.id))])
        .await?;
    let failed = mailboxes
        .iter()
        .filter(|m| {
            m.value
                .telemetry
                .last_error
                .as_ref()
                .is_some_and(|e| e.at >= hour_ago)
                && m.value.overall_status() == RunStatus::Failure
        })
        .count();
    if !crate::policy::profile_mostly_failing(failed, mailboxes.len()) {
        return Ok(());
    }
    let me = format!("profile-alert-{}", uuid::Uuid::new_v4().simple());
    if store
        .acquire_lease(&resource(p.id), &me, ONCE_PER)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let summary = format!(
        "{failed} of {} mailboxes of the email server profile \"{}\" failed within the last hour",
        mailboxes.len(),
        p.name
    );
    let email = if p.advanced.email_owner_on_failures {
        match email_owner(store, config, &p, &summary).await? {
            Ok(done) => format!(" {done}"),
            Err(why) => format!(" The email to the profile owner could not be sent: {why}."),
        }
    } else {
        String::new()
    };
    let message = format!("{summary}: check the profile's server settings and credentials.{email}");
    tracing::warn!(profile = %p.id, "{message}");
    let a = Alert {
        profile_id: Some(p.id),
        ..Alert::new(
            p.org_id,
            Severity::Warning,
            "profile_mostly_failing",
            message,
            vec![p.owner_id],
        )
    };
    store.insert(&a).await?;
    Ok(())
}

/// Emails the profile owner: what was done, or why nothing could be sent.
async fn email_owner(
    store: &Store,
    config: &EngineConfig,
    p: &EmailServerProfile,
    summary: &str,
) -> Result<Result<String, String>, StoreError> {
    let Some(owner) = store.get::<User>(&p.owner_id.to_string()).await? else {
        return Ok(Err("the profile owner no longer exists".into()));
    };
    let owner = owner.value;
    let subject = format!(
        "serversync: most mailboxes of the email server profile \"{}\" are failing",
        p.name
    );
    let body = format!(
        "{summary}.\r\n\r\nCheck the profile's server settings and credentials, then test and \
         enable its mailboxes again; each mailbox shows its last error in the admin center.\r\n\r\n\
         You receive this because \"email the owner on failures\" is on for the profile (at most \
         one such email an hour).\r\n"
    );
    let cannot = match own_mailbox(store, &owner).await? {
        Ok(m) => {
            let caller = Caller {
                user: owner.clone(),
                privileges: [Privilege::WriteRecords].into_iter().collect(),
            };
            let new = NewEmail {
                from_mailbox: m.id,
                to: vec![Recipient::Address(owner.email.clone())],
                cc: Vec::new(),
                bcc: Vec::new(),
                subject: subject.clone(),
                text_body: Some(body.clone()),
                html_body: None,
                attachments: Vec::new(),
                regarding: None,
                send_after: None,
                draft: false,
                in_reply_to: None,
            };
            let admin = Admin::new(store.clone(), Default::default());
            match admin.compose_email(&caller, p.org_id, new).await {
                Ok(a) => {
                    return Ok(Ok(format!(
                        "An email to {} goes out from their own mailbox (email activity {}).",
                        owner.email, a.id
                    )));
                }
                Err(AdminError::Store(e)) => return Err(e),
                Err(e) => format!(
                    "composing it from the owner's mailbox {} failed ({e})",
                    m.email
                ),
            }
        }
        Err(why) => why,
    };
    Ok(match &config.alerts.smtp_relay {
        None => Err(format!(
            "{cannot}, and no SMTP relay is configured (the [alerts.smtp_relay] section of the configuration)"
        )),
        Some(r) => match relay(config, r, &owner.email, &subject, &body).await {
            Ok(()) => Ok(format!(
                "An email was sent to {} through the installation's SMTP relay {}:{} ({cannot}).",
                owner.email, r.host, r.port
            )),
            Err(e) => Err(format!(
                "{cannot}, and the SMTP relay {}:{} did not take it: {e}",
                r.host, r.port
            )),
        },
    })
}

/// The owner's own mailbox when it can send email now, else why not.
async fn own_mailbox(store: &Store, owner: &User) -> Result<Result<Mailbox, String>, StoreError> {
    let m = store
        .list_all::<Mailbox>(Some(owner.org_id), &[("regarding_id", Col::text(owner.id))])
        .await?
        .into_iter()
        .map(|s| s.value)
        .find(|m| m.regarding == MailboxRegarding::User(owner.id));
    let Some(m) = m else {
        return Ok(Err(format!(
            "the profile owner {} has no mailbox",
            owner.email
        )));
    };
    let settings = crate::org_settings(store, m.org_id).await?;
    Ok(if m.outgoing_method != OutgoingMethod::ServerSideSync {
        Err(format!(
            "the owner's mailbox {} does not send by server-side synchronization",
            m.email
        ))
    } else if m.needs_approval(&settings) {
        Err(format!("the owner's mailbox {} is not approved", m.email))
    } else if m.profile_id.is_none() {
        Err(format!(
            "the owner's mailbox {} has no email server profile",
            m.email
        ))
    } else if !m.outgoing.enabled {
        Err(format!(
            "outgoing email of the owner's mailbox {} is not enabled",
            m.email
        ))
    } else {
        Ok(m)
    })
}

/// Sends one plain-text message through the relay.
async fn relay(
    config: &EngineConfig,
    r: &SmtpRelay,
    to: &str,
    subject: &str,
    body: &str,
) -> Result<(), String> {
    use lettre::message::Mailbox as Addr;
    let parse = |s: &str| {
        s.parse::<Addr>()
            .map_err(|e| format!("the address {s:?} is not valid ({e})"))
    };
    let msg = lettre::Message::builder()
        .from(parse(&r.from)?)
        .to(parse(to)?)
        .subject(subject)
        .date_now()
        .body(body.to_owned())
        .map_err(|e| format!("the message could not be built ({e})"))?
        .formatted();
    let addr = ServerAddr::new(r.host.clone(), r.port, r.tls);
    let opts = config.connect_options(Duration::from_secs(30));
    let login = match (&r.username, &r.password) {
        (Some(u), Some(pw)) => Some(Login::password(u.clone(), pw.clone())),
        _ => None,
    };
    // The installation's relay is an SMTP server.
    let mut c = MailTransport::connect(
        OutgoingProtocol::Smtp,
        &serversync_connectors::Server::Mail(addr),
        login.as_ref(),
        &opts,
    )
    .await
    .map_err(|e| e.to_string())?;
    let outcome = match c
        .submit(&r.from, &[to.to_owned()], &msg)
        .await
        .map_err(|e| e.to_string())?
    {
        Submission::Sent => Ok(()),
        Submission::Refused { at, reply, .. } => Err(match at {
            RefusedAt::Recipient(_) => format!("the recipient {to} was refused: {reply}"),
            RefusedAt::Data => format!("DATA was refused: {reply}"),
            RefusedAt::Message => format!("the message was refused: {reply}"),
        }),
        // The connection broke after the message was handed over: nothing to say goodbye to.
        Submission::Unknown { reason } => return Err(reason),
    };
    c.close().await;
    outcome
}
