//! `serversync admin …`: administration against a running server (placeholder; being written).

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {}

pub async fn run(_cfg: Config, _args: AdminArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
