//! `serversync admin token create`: an API token made directly in the database, to get (back)
//! into the API without one (audited as made by `cli`). `token list` and `token revoke` go
//! through the API like every other command.

use super::output::{self, Table, at, str_at, time, yes};
use super::{Ctx, TokenCommand, TokenCreateArgs};
use crate::config::Config;
use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use serversync_model::OrgId;
use serversync_model::audit::Actor;
use serversync_model::org::{Organization, User};
use serversync_store::{Col, Store, redact_url};
use std::collections::HashMap;

pub async fn create(cfg: &Config, org_key: &str, json: bool, args: TokenCreateArgs) -> Result<()> {
    let store = crate::serve::open_store(cfg).await?;
    let result = create_in(cfg, &store, org_key, &args).await;
    store.close().await;
    let (token, user, org) = result?;
    if json {
        output::json(&json!({
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
    let mut auth = cfg.auth();
    if let Some(days) = args.expires_in_days {
        auth.token_lifetime = Some(chrono::Duration::days(days.into()));
    }
    let admin = serversync_engine::Admin::with_auth(store.clone(), Default::default(), auth);
    let (token, _) = admin
        .create_token(&user, &args.name, Actor::System("cli".into()))
        .await
        .map_err(|e| anyhow!("cannot create the token: {e}"))?;
    Ok((token, user, org))
}

/// `token list` and `token revoke`, through the API.
pub async fn manage(ctx: &Ctx, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create(_) => unreachable!("made in the database, without the API"),
        TokenCommand::List { user, all } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            if let Some(u) = &user {
                q.push(("user_id", super::orgs::resolve_user(ctx, u).await?));
            }
            if !all {
                q.push(("live_only", "true".into()));
            }
            let tokens = ctx.api.list(&["tokens"], &q).await?;
            if ctx.json {
                output::json(&Value::Array(tokens));
                return Ok(());
            }
            let emails: HashMap<String, String> = match ctx.api.list(&["users"], &[]).await {
                Ok(us) => us
                    .iter()
                    .map(|u| (str_at(u, "id").to_owned(), str_at(u, "email").to_owned()))
                    .collect(),
                Err(_) => HashMap::new(),
            };
            let mut t = Table::new(&[
                "ID", "NAME", "USER", "KIND", "PREFIX", "CREATED", "EXPIRES", "REVOKED",
            ]);
            for k in &tokens {
                let uid = at(k, "user_id");
                t.row(vec![
                    at(k, "id"),
                    at(k, "name"),
                    emails.get(&uid).cloned().unwrap_or(uid),
                    at(k, "kind"),
                    at(k, "prefix"),
                    time(k, "created_at"),
                    time(k, "expires_at"),
                    yes(k, "revoked"),
                ]);
            }
            t.print("tokens");
        }
        TokenCommand::Revoke { id } => {
            let r = ctx.api.post(&["tokens", &id, "revoke"], &json!({})).await?;
            if ctx.json {
                output::json(&r);
            } else {
                println!(
                    "revoked token {} ({})",
                    str_at(&r, "id"),
                    str_at(&r, "name")
                );
            }
        }
    }
    Ok(())
}
