//! `serversync deliver --mailbox ADDRESS < message.eml`: Email Router intake from the command
//! line (for an MTA's pipe transport or a script), through the same pipeline as synced mail.

use crate::config::Config;
use anyhow::{Context, Result, anyhow, bail};
use serversync_engine::intake::{IntakeOutcome, RouterLookupError, find_router_mailbox, take_in};
use serversync_model::item::ItemSource;
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
    let target = find_router_mailbox(&store, &address, org.as_deref())
        .await
        .map_err(|e| match e {
            RouterLookupError::NoSuchMailbox(_) => {
                anyhow!("no mailbox with the address {address} in the organization holding its domain: check the address")
            }
            other => anyhow!(other),
        })?;
    let outcome = take_in(
        &store,
        &target.mailbox,
        &target.settings,
        target.profile.as_ref(),
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
