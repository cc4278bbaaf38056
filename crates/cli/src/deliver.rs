//! `serversync deliver --mailbox ADDRESS < message.eml`: Email Router intake from the command
//! line (for an MTA's pipe transport or a script), through the same pipeline as synced mail.

use crate::config::Config;
use anyhow::{Context, Result, anyhow, bail};
use serversync_engine::intake::{IntakeOutcome, take_in};
use serversync_model::item::ItemSource;
use serversync_model::mailbox::Mailbox;
use serversync_model::org::Organization;
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::{EmailSettings, IncomingMethod};
use serversync_store::Col;
use std::io::Read;

/// Largest message accepted on standard input.
const MAX_MESSAGE: u64 = 150 << 20;

pub async fn run(cfg: Config, address: String, org: Option<String>) -> Result<()> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_MESSAGE + 1)
        .read_to_end(&mut raw)
        .context("reading the message from standard input")?;
    if raw.len() as u64 > MAX_MESSAGE {
        bail!("the message is larger than {} MiB", MAX_MESSAGE >> 20);
    }
    let store = crate::serve::open_store(&cfg).await?;
    let org_id = match &org {
        Some(name) => Some(
            store
                .list_all::<Organization>(None, &[("name", Col::text(name))])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("no organization named {name}"))?
                .value
                .id,
        ),
        None => None,
    };
    let found = store
        .list_all::<Mailbox>(org_id, &[("email", Col::text(address.to_lowercase()))])
        .await?;
    let mailbox = match found.as_slice() {
        [one] => one.value.clone(),
        [] => bail!("no mailbox with the address {address}: check the address (or --org)"),
        _ => bail!("{address} has mailboxes in several organizations: choose one with --org"),
    };
    if mailbox.incoming_method != IncomingMethod::EmailRouter {
        bail!(
            "mailbox {address} receives email by {:?}, not by the Email Router: set its incoming delivery method to email_router",
            mailbox.incoming_method
        );
    }
    let settings = store
        .get::<EmailSettings>(&mailbox.org_id.to_string())
        .await?
        .map(|s| s.value)
        .unwrap_or_else(|| EmailSettings::new(mailbox.org_id));
    let profile = match mailbox.profile_id {
        Some(p) => store
            .get::<EmailServerProfile>(&p.to_string())
            .await?
            .map(|s| s.value),
        None => None,
    };
    let outcome = take_in(
        &store,
        &mailbox,
        &settings,
        profile.as_ref(),
        ItemSource::Router {
            via: "deliver".into(),
        },
        &raw,
        chrono::Utc::now(),
    )
    .await?;
    store.close().await;
    match outcome {
        IntakeOutcome::Recorded(item) => {
            println!(
                "{:?}: {}",
                item.decision,
                item.trace.last().map(String::as_str).unwrap_or("")
            );
            Ok(())
        }
        IntakeOutcome::Duplicate => {
            println!("duplicate: this message was already delivered to {address}; nothing changed");
            Ok(())
        }
    }
}
