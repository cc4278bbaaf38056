//! "Test and enable" for Exchange: every step in order, recorded in a [`ProbeReport`], and
//! nothing sent or changed on the server.
//!
//! Autodiscover (when the profile asks for it) → DNS → TCP → TLS → authentication (a
//! `ConvertId` as the signed-in account itself) → server version (from `ServerVersionInfo`)
//! → mailbox access (the mailbox's root folder, through impersonation or delegate access) →
//! for incoming, the Inbox readable (`GetFolder` and a one-item `SyncFolderItems`); for
//! outgoing, Sent Items writable (its effective rights: `SendAndSaveCopy` keeps the copy
//! there).

use super::ops::{self, FolderRef};
use super::xml::escape;
use super::{Acting, EwsClient, autodiscover, check};
use crate::probe::{ProbeReport, StepLog};
use crate::server::EwsTarget;
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Login, Result};

/// Which direction is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Incoming,
    Outgoing,
}

/// Probes `target` for `direction`, signing in with `login`.
pub async fn probe(
    target: &EwsTarget,
    login: &Login,
    opts: &ConnectOptions,
    direction: Direction,
) -> ProbeReport {
    let mut log = StepLog::new();
    let mut capabilities = Vec::new();
    let result = run(target, login, opts, direction, &mut log, &mut capabilities).await;
    let mut report = log.finish(
        capabilities,
        result.as_ref().map(|_| ()).map_err(Clone::clone),
    );
    if let Ok(url) = result {
        report.endpoint = Some(url);
    }
    report
}

async fn run(
    target: &EwsTarget,
    login: &Login,
    opts: &ConnectOptions,
    direction: Direction,
    log: &mut StepLog,
    capabilities: &mut Vec<String>,
) -> Result<String> {
    let url = match &target.url {
        Some(u) => u.clone(),
        None => {
            let settings = target.settings("", login);
            log.run(
                FailureStep::Dns,
                format!("autodiscover for {}", target.email),
                async {
                    autodiscover::discover(&target.email, &settings, opts, target.autodiscover)
                        .await
                        .map_err(|(e, _)| e)
                },
                |d| {
                    d.attempts
                        .iter()
                        .map(|a| format!("{}: {}", a.url, a.outcome))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            )
            .await?
            .ews_url
        }
    };
    let mut client = EwsClient::connect(target.settings(&url, login), opts, log).await?;
    log.run(
        FailureStep::Authentication,
        format!("sign in as {} (ConvertId)", login.username()),
        sign_in(&mut client, &target.email),
        |scheme| format!("signed in with {scheme}"),
    )
    .await?;
    log.run(
        FailureStep::Protocol,
        "server version (ServerVersionInfo)",
        async { client.check_version() },
        |_| {
            client
                .server_version()
                .map(|v| v.describe())
                .unwrap_or_else(|| "not reported".into())
        },
    )
    .await?;
    if let Some(v) = client.server_version() {
        capabilities.push(v.describe());
    }
    if let Some(s) = client.scheme() {
        capabilities.push(format!("AUTH={s:?}").to_uppercase());
    }
    let how = match &target.acting {
        Acting::Own => "its own mailbox".to_owned(),
        Acting::Impersonate(m) => format!("{m} through impersonation"),
        Acting::Delegate(m) => format!("{m} with delegate access"),
    };
    log.run(
        FailureStep::Permission,
        format!("open {how}"),
        ops::get_folder(&mut client, &FolderRef::ROOT),
        |_| "mailbox opened".into(),
    )
    .await?;
    match direction {
        Direction::Incoming => {
            log.run(
                FailureStep::Permission,
                "read the Inbox (GetFolder, SyncFolderItems)",
                async {
                    let inbox = ops::get_folder(&mut client, &FolderRef::INBOX).await?;
                    ops::sync_folder_items(&mut client, &FolderRef::INBOX, None, 1).await?;
                    Ok(inbox)
                },
                |inbox| match inbox.total_count {
                    Some(n) => format!("Inbox readable, {n} items"),
                    None => "Inbox readable".into(),
                },
            )
            .await?;
        }
        Direction::Outgoing => {
            log.run(
                FailureStep::Permission,
                "send permission (Sent Items effective rights; nothing is sent)",
                sent_items_writable(&mut client),
                |_| "may create items in Sent Items".into(),
            )
            .await?;
        }
    }
    Ok(url)
}

/// Signs in with a `ConvertId` that needs no mailbox: any answer in SOAP means the account
/// signed in (its response message may refuse the made-up id), unless it names the version.
async fn sign_in(client: &mut EwsClient, email: &str) -> Result<String> {
    let body = convert_id_body(email);
    let answer = client.call_as_account("ConvertId", &body).await?;
    for msg in answer.messages() {
        if let Err(e) = check(msg, "ConvertId")
            && e.code.as_deref() == Some("unsupported_exchange_version")
        {
            return Err(e);
        }
    }
    Ok(client
        .scheme()
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|| "no authentication".into()))
}

/// `ConvertId` of a made-up id of `email`'s mailbox.
pub fn convert_id_body(email: &str) -> String {
    format!(
        "<m:ConvertId DestinationFormat=\"EwsId\"><m:SourceIds><t:AlternateId Format=\"EwsId\" Id=\"AAMkAGZhY2U=\" Mailbox=\"{}\"/></m:SourceIds></m:ConvertId>",
        escape(email)
    )
}

/// `GetFolder` of Sent Items with its effective rights.
pub fn sent_items_rights_body(acting: &Acting) -> String {
    let folder = match acting {
        Acting::Delegate(m) => format!(
            "<t:DistinguishedFolderId Id=\"sentitems\"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>",
            escape(m)
        ),
        _ => "<t:DistinguishedFolderId Id=\"sentitems\"/>".to_owned(),
    };
    format!(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"folder:EffectiveRights\"/></t:AdditionalProperties></m:FolderShape><m:FolderIds>{folder}</m:FolderIds></m:GetFolder>"
    )
}

async fn sent_items_writable(client: &mut EwsClient) -> Result<()> {
    let body = sent_items_rights_body(client.acting());
    let answer = client.call("GetFolder", &body).await?;
    let msg = answer.messages().into_iter().next().ok_or_else(|| {
        ConnectError::new(
            FailureStep::Protocol,
            ErrorKind::Permanent,
            "the GetFolder answer has no response message",
        )
    })?;
    check(msg, "GetFolder (Sent Items)")?;
    let create = msg
        .find("EffectiveRights")
        .and_then(|r| r.text_of("CreateContents"))
        .map(|v| v == "true");
    if create == Some(false) {
        return Err(ConnectError::new(
            FailureStep::Permission,
            ErrorKind::Permission,
            "the account may not create items in the mailbox's Sent Items, where a sent \
             email's copy is kept: give it full access to the mailbox (or use impersonation)",
        )
        .with_code("send_not_permitted"));
    }
    Ok(())
}
