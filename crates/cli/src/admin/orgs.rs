//! Organizations, users, queues and roles.

use super::input::SecretSource;
use super::output::{self, Table, at, str_at, time, yes};
use super::{
    Ctx, DomainsCommand, OrgsCommand, QueueCreateArgs, QueuesCommand, RolesCommand, UserCreateArgs,
    UsersCommand, api_name, is_id,
};
use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

pub async fn orgs(ctx: &Ctx, cmd: OrgsCommand) -> Result<()> {
    match cmd {
        OrgsCommand::List => {
            let v = ctx.api.get_orgs().await?;
            if ctx.json {
                output::json(&v);
                return Ok(());
            }
            let mut t = Table::new(&["ID", "NAME", "DISPLAY NAME", "CREATED"]);
            for o in v.as_array().into_iter().flatten() {
                t.row(vec![
                    at(o, "id"),
                    at(o, "name"),
                    at(o, "display_name"),
                    time(o, "created_at"),
                ]);
            }
            t.print("organizations");
        }
        OrgsCommand::Create { name, display_name } => {
            let o = ctx
                .api
                .post_orgs(&json!({ "name": name, "display_name": display_name }))
                .await?;
            if ctx.json {
                output::json(&o);
            } else {
                println!(
                    "created organization {} ({}): {}",
                    str_at(&o, "name"),
                    str_at(&o, "display_name"),
                    str_at(&o, "id")
                );
            }
        }
    }
    Ok(())
}

async fn role_names(ctx: &Ctx) -> Result<HashMap<String, String>> {
    let roles = ctx.api.get(&["roles"], &[]).await?;
    Ok(roles
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (str_at(r, "id").to_owned(), str_at(r, "name").to_owned()))
        .collect())
}

/// A user's id from its id or email address.
pub async fn resolve_user(ctx: &Ctx, key: &str) -> Result<String> {
    if is_id(key) {
        return Ok(key.to_owned());
    }
    find_user(ctx, key)
        .await
        .map(|u| str_at(&u, "id").to_owned())
}

async fn find_user(ctx: &Ctx, email: &str) -> Result<Value> {
    if !email.contains('@') {
        bail!("{email:?} is neither a user id nor an email address");
    }
    let users = ctx.api.list(&["users"], &[]).await?;
    users
        .into_iter()
        .find(|u| str_at(u, "email").eq_ignore_ascii_case(email.trim()))
        .ok_or_else(|| {
            anyhow!(
                "no user with email address {email:?} in organization {:?}: list them with `serversync admin users list`",
                ctx.api.org()
            )
        })
}

/// Disables a user (revoking its tokens and sessions) or enables it again.
async fn set_disabled(ctx: &Ctx, user: &str, disabled: bool) -> Result<()> {
    let id = resolve_user(ctx, user).await?;
    let r = ctx
        .api
        .patch(&["users", &id], &json!({ "disabled": disabled }))
        .await?;
    if ctx.json {
        output::json(&r);
    } else if disabled {
        println!(
            "disabled {}: its API tokens and sessions are revoked",
            str_at(&r, "email")
        );
    } else {
        println!("enabled {}", str_at(&r, "email"));
    }
    Ok(())
}

pub async fn users(ctx: &Ctx, cmd: UsersCommand) -> Result<()> {
    match cmd {
        UsersCommand::List => {
            let users = ctx.api.list(&["users"], &[]).await?;
            if ctx.json {
                output::json(&Value::Array(users));
                return Ok(());
            }
            let roles = role_names(ctx).await?;
            let mut t = Table::new(&["ID", "EMAIL", "NAME", "ROLES", "DISABLED"]);
            for u in &users {
                let names: Vec<String> = u
                    .get("role_ids")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|id| roles.get(id).cloned().unwrap_or_else(|| id.to_owned()))
                    .collect();
                t.row(vec![
                    at(u, "id"),
                    at(u, "email"),
                    at(u, "full_name"),
                    names.join(", "),
                    yes(u, "disabled"),
                ]);
            }
            t.print("users");
        }
        UsersCommand::Show { user } => {
            let u = if is_id(&user) {
                ctx.api.get(&["users", &user], &[]).await?
            } else {
                find_user(ctx, &user).await?
            };
            if ctx.json {
                output::json(&u);
            } else {
                output::record(&u);
            }
        }
        UsersCommand::Create(a) => create_user(ctx, a).await?,
        UsersCommand::Disable { user } => set_disabled(ctx, &user, true).await?,
        UsersCommand::Enable { user } => set_disabled(ctx, &user, false).await?,
        UsersCommand::SetPassword {
            user,
            password_stdin,
            password_file,
        } => {
            let Some(password) = (SecretSource {
                what: "password",
                stdin: password_stdin,
                file: password_file.as_deref(),
            })
            .read()?
            else {
                anyhow::bail!("give the password with --password-stdin or --password-file");
            };
            let u = if is_id(&user) {
                ctx.api.get(&["users", &user], &[]).await?
            } else {
                find_user(ctx, &user).await?
            };
            let id = str_at(&u, "id").to_owned();
            let r = ctx
                .api
                .patch(
                    &["users", &id],
                    &serde_json::json!({ "password": password }),
                )
                .await?;
            if ctx.json {
                output::json(&r);
            } else {
                println!("password set for {}", str_at(&r, "email"));
            }
        }
    }
    Ok(())
}

async fn create_user(ctx: &Ctx, a: UserCreateArgs) -> Result<()> {
    let password = SecretSource {
        what: "mailbox password",
        stdin: a.mailbox_password_stdin,
        file: a.mailbox_password_file.as_deref(),
    }
    .read()?;
    let mut body = Map::new();
    body.insert("full_name".into(), a.name.into());
    body.insert("email".into(), a.email.into());
    body.insert(
        "roles".into(),
        a.roles.iter().map(|r| Value::from(api_name(r))).collect(),
    );
    body.insert(
        "tenant_exchange_admin".into(),
        a.tenant_exchange_admin.into(),
    );
    if let Some(p) = password {
        body.insert("mailbox_password".into(), p.into());
    }
    let r = ctx.api.post(&["users"], &Value::Object(body)).await?;
    if ctx.json {
        output::json(&r);
        return Ok(());
    }
    let (u, m) = (&r["user"], &r["mailbox"]);
    println!(
        "created user {} <{}>: {}",
        str_at(u, "full_name"),
        str_at(u, "email"),
        str_at(u, "id")
    );
    print_new_mailbox(m);
    Ok(())
}

fn print_new_mailbox(m: &Value) {
    println!(
        "mailbox {}: profile {}, approval {}, password {}",
        str_at(m, "id"),
        at(m, "profile_id"),
        at(m, "approval"),
        if output::get(m, "password").is_some_and(|p| !p.is_null()) {
            "set"
        } else {
            "not set"
        }
    );
}

pub async fn queues(ctx: &Ctx, cmd: QueuesCommand) -> Result<()> {
    match cmd {
        QueuesCommand::List => {
            let queues = ctx.api.list(&["queues"], &[]).await?;
            if ctx.json {
                output::json(&Value::Array(queues));
                return Ok(());
            }
            let mut t = Table::new(&["ID", "NAME", "EMAIL", "OWNER", "CREATED"]);
            for q in &queues {
                t.row(vec![
                    at(q, "id"),
                    at(q, "name"),
                    at(q, "email"),
                    at(q, "owner_id"),
                    time(q, "created_at"),
                ]);
            }
            t.print("queues");
        }
        QueuesCommand::Create(a) => create_queue(ctx, a).await?,
    }
    Ok(())
}

async fn create_queue(ctx: &Ctx, a: QueueCreateArgs) -> Result<()> {
    let password = SecretSource {
        what: "mailbox password",
        stdin: a.mailbox_password_stdin,
        file: a.mailbox_password_file.as_deref(),
    }
    .read()?;
    let mut body = Map::new();
    body.insert("name".into(), a.name.into());
    body.insert("email".into(), a.email.into());
    if let Some(o) = &a.owner {
        body.insert("owner_id".into(), resolve_user(ctx, o).await?.into());
    }
    if let Some(p) = password {
        body.insert("mailbox_password".into(), p.into());
    }
    let r = ctx.api.post(&["queues"], &Value::Object(body)).await?;
    if ctx.json {
        output::json(&r);
        return Ok(());
    }
    let q = &r["queue"];
    println!(
        "created queue {} <{}>: {}",
        str_at(q, "name"),
        str_at(q, "email"),
        str_at(q, "id")
    );
    print_new_mailbox(&r["mailbox"]);
    Ok(())
}

pub async fn roles(ctx: &Ctx, cmd: RolesCommand) -> Result<()> {
    let RolesCommand::List = cmd;
    let v = ctx.api.get(&["roles"], &[]).await?;
    if ctx.json {
        output::json(&v);
        return Ok(());
    }
    let mut t = Table::new(&["ID", "NAME", "BUILT-IN", "PRIVILEGES"]);
    for r in v.as_array().into_iter().flatten() {
        t.row(vec![
            at(r, "id"),
            at(r, "name"),
            at(r, "builtin"),
            at(r, "privileges"),
        ]);
    }
    t.print("roles");
    Ok(())
}

pub async fn domains(ctx: &Ctx, cmd: DomainsCommand) -> Result<()> {
    match cmd {
        DomainsCommand::List => {
            let v = ctx.api.get(&["domains"], &[]).await?;
            if ctx.json {
                output::json(&v);
                return Ok(());
            }
            let mut t = Table::new(&["DOMAIN", "ASSIGNED"]);
            for d in v.as_array().into_iter().flatten() {
                t.row(vec![at(d, "domain"), time(d, "assigned_at")]);
            }
            t.print("domains");
        }
        DomainsCommand::Assign { domain } => {
            let d = ctx
                .api
                .post(&["domains"], &json!({ "domain": domain }))
                .await?;
            if ctx.json {
                output::json(&d);
            } else {
                println!(
                    "assigned {} to organization {}",
                    str_at(&d, "domain"),
                    ctx.api.org()
                );
            }
        }
        DomainsCommand::Remove { domain } => {
            ctx.api.delete(&["domains", &domain]).await?;
            if !ctx.json {
                println!("removed {domain} from organization {}", ctx.api.org());
            }
        }
    }
    Ok(())
}
