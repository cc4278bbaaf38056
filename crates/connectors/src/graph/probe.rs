//! "Test and enable" for Exchange Online over Microsoft Graph: every step in order, recorded
//! in a [`ProbeReport`], nothing sent or changed.
//!
//! (The access token comes first, from the tenant's Entra ID: a wrong tenant, secret or
//! certificate, an expired secret and conditional access fail there, before the probe.) DNS → TCP → TLS to
//! Graph → the mailbox's user exists in the tenant (`GET /users/{address}`) → the mailbox is in
//! Exchange Online (`mailboxSettings`; an on-premises mailbox is refused) → for incoming, the
//! Inbox readable (the folder and a one-message delta page); for outgoing, the send permission:
//! `sendMail` with an empty body, which Graph refuses with 403 when the application may not
//! send as the mailbox and with 400 (an invalid message, nothing sent) when it may.

use super::{GraphClient, GraphTarget};
use crate::probe::{ProbeReport, StepLog};
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Login, Result};
use bytes::Bytes;

/// What a Graph probe reports as its capability (Graph's version).
pub const CAPABILITY: &str = "GRAPH=v1.0";

/// Which direction is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Incoming,
    Outgoing,
}

/// Probes Graph for `target`'s mailbox with the application's token in `login`.
pub async fn probe(
    target: &GraphTarget,
    login: &Login,
    opts: &ConnectOptions,
    direction: Direction,
) -> ProbeReport {
    let mut log = StepLog::new();
    let result = run(target, login, opts, direction, &mut log).await;
    let mut report = log.finish(vec![CAPABILITY.into()], result);
    report.endpoint = Some(format!("{}/v1.0", target.graph_url));
    report
}

async fn run(
    target: &GraphTarget,
    login: &Login,
    opts: &ConnectOptions,
    direction: Direction,
    log: &mut StepLog,
) -> Result<()> {
    let mut client = GraphClient::connect(target, login, opts, log).await?;
    let inbox = log
        .run(
            FailureStep::Permission,
            format!(
                "the mailbox {} exists in Exchange Online (mailFolders/inbox)",
                target.mailbox
            ),
            client.folder_by_id("inbox"),
            |_| "mailbox found".into(),
        )
        .await?;
    match direction {
        Direction::Incoming => {
            log.run(
                FailureStep::Permission,
                "read the Inbox (messages/delta)",
                client.delta_start(&inbox.id, 1),
                |_| "Inbox readable".into(),
            )
            .await?;
        }
        Direction::Outgoing => {
            log.run(
                FailureStep::Permission,
                "send permission (sendMail with an empty message; nothing is sent)",
                send_permitted(&mut client),
                |_| "may send as the mailbox".into(),
            )
            .await?;
        }
    }
    Ok(())
}

/// `sendMail` with an empty MIME body: refused as invalid (400) when the application may send
/// as the mailbox, as forbidden (403) when it may not.
async fn send_permitted(client: &mut GraphClient) -> Result<()> {
    let path = format!("{}/sendMail", client.user_path);
    let resp = client
        .once(
            &hyper::Method::POST,
            &path,
            &Some(("text/plain", Bytes::new())),
            &[],
            64 * 1024,
            "checking the send permission",
        )
        .await?;
    match resp.status {
        400 => Ok(()),
        403 => Err(ConnectError::new(
            FailureStep::Permission,
            ErrorKind::Config,
            format!(
                "the application may not send as {}: grant admin consent to its Mail.Send \
                 application permission, and check any application access policy",
                client.mailbox()
            ),
        )
        .with_code("send_not_permitted")),
        s if (200..300).contains(&s) => Err(ConnectError::new(
            FailureStep::Protocol,
            ErrorKind::Permanent,
            "Microsoft Graph accepted an empty message to send: it does not behave as \
             documented",
        )),
        _ => Err(client.refusal(&resp, "checking the send permission")),
    }
}
