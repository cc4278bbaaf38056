//! `serversync admin token create`: an API token made directly in the database, to get (back)
//! into the API without one.

use super::TokenCreateArgs;
use crate::config::Config;
use anyhow::{Result, anyhow};
use serversync_model::OrgId;
use serversync_model::audit::Actor;
use serversync_model::org::{Organization, User};
use serversync_store::{Col, Store, redact_url};

pub async fn create(cfg: &Config, org_key: &str, json: bool, args: TokenCreateArgs) -> Result<()> {
    let store = crate::serve::open_store(cfg).await?;
    let result = create_in(cfg, &store, org_key, &args).await;
    store.close().await;
    let (token, user, org) = result?;
    if json {
        super::output::json(&serde_json::json!({
            "token": token,
            "name": args.name,
            "user_id": user.id,
            "email": user.email,
            "org_id": org.id,
            "org": org.name,
        }));
    } else {
        println!("{token}");
    }
    eprintln!(
        "serversync: created API token {:?} for {} in organization {}; it is shown only now. \
         Use it with: export SERVERSYNC_TOKEN=<the token above>",
        args.name, user.email, org.name
    );
    Ok(())
}

async fn create_in(
    cfg: &Config,
    store: &Store,
    org_key: &str,
    args: &TokenCreateArgs,
) -> Result<(String, User, Organization)> {
    let db = redact_url(&cfg.database_url());
    let org = match org_key.parse::<OrgId>() {
        Ok(id) => store
            .get::<Organization>(&id.to_string())
            .await?
            .map(|s| s.value),
        Err(_) => store
            .list_all::<Organization>(None, &[("name", Col::text(org_key))])
            .await?
            .into_iter()
            .next()
            .map(|s| s.value),
    }
    .ok_or_else(|| {
        anyhow!(
            "no organization {org_key:?} in the database {db}: give its name or id with --org (the first start of `serversync serve` creates \"default\")"
        )
    })?;
    let email = args.user.trim().to_lowercase();
    let user = store
        .list_all::<User>(Some(org.id), &[("email", Col::text(&email))])
        .await?
        .into_iter()
        .next()
        .map(|s| s.value)
        .ok_or_else(|| {
            anyhow!(
                "no user with email address {email:?} in organization {:?} (database {db}): check the address (the first administrator is admin@localhost)",
                org.name
            )
        })?;
    if user.disabled {
        return Err(anyhow!(
            "user {} is disabled: a token for it would not be accepted",
            user.email
        ));
    }
    let admin = serversync_engine::Admin::new(store.clone(), Default::default());
    let (token, _) = admin
        .create_token(&user, &args.name, Actor::System("cli".into()))
        .await
        .map_err(|e| anyhow!("cannot create the token: {e}"))?;
    Ok((token, user, org))
}
