//! Email server profiles and the organization's email settings.

use super::input::{self, SecretSource};
use super::output::{self, Table, at, str_at, yes};
use super::{
    Ctx, ProfileCreateArgs, ProfileSecretArgs, ProfilesCommand, SettingsCommand, api_name, is_id,
    monitor,
};
use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value, json};

/// A profile's id from its id or name.
pub async fn resolve_profile(ctx: &Ctx, key: &str) -> Result<String> {
    if is_id(key) {
        return Ok(key.trim().to_owned());
    }
    let all = ctx.api.list(&["profiles"], &[]).await?;
    let found = all.iter().find(|p| str_at(p, "name") == key).or_else(|| {
        all.iter()
            .find(|p| str_at(p, "name").eq_ignore_ascii_case(key.trim()))
    });
    found.map(|p| str_at(p, "id").to_owned()).ok_or_else(|| {
        anyhow!(
            "no email server profile named {key:?} in organization {:?}: list them with `serversync admin profiles list`",
            ctx.api.org()
        )
    })
}

fn endpoint(p: &Value, dir: &str) -> String {
    let proto = at(p, &format!("{dir}_protocol"));
    match p.get(dir) {
        Some(e) if e.is_object() => format!(
            "{proto} {}:{} {}",
            str_at(e, "location"),
            at(e, "port"),
            str_at(e, "tls")
        ),
        _ => proto,
    }
}

pub async fn profiles(ctx: &Ctx, cmd: ProfilesCommand) -> Result<()> {
    match cmd {
        ProfilesCommand::List => {
            let all = ctx.api.list(&["profiles"], &[]).await?;
            if ctx.json {
                output::json(&Value::Array(all));
                return Ok(());
            }
            let mut t = Table::new(&[
                "ID",
                "NAME",
                "TYPE",
                "INCOMING",
                "OUTGOING",
                "AUTHENTICATION",
                "DEFAULT",
            ]);
            for p in &all {
                t.row(vec![
                    at(p, "id"),
                    at(p, "name"),
                    at(p, "server_type"),
                    endpoint(p, "incoming"),
                    endpoint(p, "outgoing"),
                    at(p, "authentication"),
                    yes(p, "is_default"),
                ]);
            }
            t.print("email server profiles");
        }
        ProfilesCommand::Show { profile } => {
            let id = resolve_profile(ctx, &profile).await?;
            let p = ctx.api.get(&["profiles", &id], &[]).await?;
            if ctx.json {
                output::json(&p);
            } else {
                output::record(&p);
            }
        }
        ProfilesCommand::Create(a) => create(ctx, *a).await?,
        ProfilesCommand::Edit(a) => {
            let mut body = input::merge_patch(&a.sets)?;
            add_secrets(&mut body, &a.secrets)?;
            if body.is_empty() {
                bail!(
                    "nothing to change: give --set KEY=VALUE (the keys are those of `serversync admin profiles show {}`) or a --password-stdin / --password-file option",
                    a.profile
                );
            }
            let id = resolve_profile(ctx, &a.profile).await?;
            let current = ctx.api.get(&["profiles", &id], &[]).await?;
            input::check_fields(
                &current,
                &body,
                "the email server profile",
                &format!("serversync admin profiles show {id}"),
            )?;
            let p = ctx
                .api
                .patch(&["profiles", &id], &Value::Object(body))
                .await?;
            if ctx.json {
                output::json(&p);
            } else {
                println!(
                    "updated email server profile {} (version {})",
                    str_at(&p, "name"),
                    at(&p, "version")
                );
            }
        }
        ProfilesCommand::Delete { profile } => {
            let id = resolve_profile(ctx, &profile).await?;
            ctx.api.delete(&["profiles", &id]).await?;
            if ctx.json {
                output::json(&json!({ "deleted": id }));
            } else {
                println!("deleted email server profile {profile}");
            }
        }
        ProfilesCommand::Default { profile } => {
            let id = resolve_profile(ctx, &profile).await?;
            let p = ctx
                .api
                .post(&["profiles", &id, "default"], &json!({}))
                .await?;
            if ctx.json {
                output::json(&p);
            } else {
                println!(
                    "{} is now the default email server profile of organization {}",
                    str_at(&p, "name"),
                    ctx.api.org()
                );
            }
        }
        ProfilesCommand::TestEnable { profile, wait } => {
            let id = resolve_profile(ctx, &profile).await?;
            let job = ctx
                .api
                .post(&["profiles", &id, "test-enable"], &json!({}))
                .await?;
            monitor::follow_job(ctx, job, wait).await?.result()?;
        }
    }
    Ok(())
}

/// Write-only secrets into a create or update body.
fn add_secrets(body: &mut Map<String, Value>, s: &ProfileSecretArgs) -> Result<()> {
    let sources = [
        (
            "password",
            "profile password",
            s.password_stdin,
            &s.password_file,
        ),
        (
            "outgoing_password",
            "outgoing password",
            s.outgoing_password_stdin,
            &s.outgoing_password_file,
        ),
        (
            "oauth.client_secret",
            "OAuth client secret",
            s.client_secret_stdin,
            &s.client_secret_file,
        ),
    ];
    for (key, what, stdin, file) in sources {
        let source = SecretSource {
            what,
            stdin,
            file: file.as_deref(),
        };
        if let Some(secret) = source.read()? {
            let mut patch = Value::Null;
            for part in key.split('.').rev() {
                patch = match patch {
                    Value::Null => json!({ part: secret }),
                    inner => json!({ part: inner }),
                };
            }
            let mut target = Value::Object(std::mem::take(body));
            input::merge(&mut target, &patch);
            if let Value::Object(m) = target {
                *body = m;
            }
        }
    }
    Ok(())
}

fn uses_stdin(s: &ProfileSecretArgs) -> bool {
    s.password_stdin || s.outgoing_password_stdin || s.client_secret_stdin
}

async fn create(ctx: &Ctx, a: ProfileCreateArgs) -> Result<()> {
    let mut body = match &a.file {
        Some(f) => {
            if f.as_os_str() == "-" && uses_stdin(&a.secrets) {
                bail!(
                    "--file - and a --…-stdin option both want standard input: put the secret in a file (--password-file) instead"
                );
            }
            input::json_file(f)?
        }
        None => Map::new(),
    };
    let mut flags = Map::new();
    if let Some(n) = &a.name {
        flags.insert("name".into(), n.clone().into());
    }
    if let Some(t) = &a.server_type {
        flags.insert("server_type".into(), api_name(t).into());
        body.remove("preset");
    }
    if let Some(p) = &a.preset {
        flags.insert("preset".into(), api_name(p).into());
        body.remove("server_type");
    }
    if let Some(d) = &a.description {
        flags.insert("description".into(), d.clone().into());
    }
    for (dir, host, port, tls) in [
        (
            "incoming",
            &a.incoming_host,
            a.incoming_port,
            &a.incoming_tls,
        ),
        (
            "outgoing",
            &a.outgoing_host,
            a.outgoing_port,
            &a.outgoing_tls,
        ),
    ] {
        let mut ep = Map::new();
        if let Some(h) = host {
            ep.insert("location".into(), h.clone().into());
        }
        if let Some(p) = port {
            ep.insert("port".into(), p.into());
        }
        if let Some(t) = tls {
            ep.insert("tls".into(), api_name(t).into());
        }
        if !ep.is_empty() {
            flags.insert(dir.into(), Value::Object(ep));
        }
    }
    if let Some(au) = &a.auth {
        flags.insert("authentication".into(), api_name(au).into());
    }
    if let Some(u) = &a.username {
        flags.insert("username".into(), u.clone().into());
    }
    if a.default {
        flags.insert("is_default".into(), true.into());
    }
    let mut v = Value::Object(body);
    input::merge(&mut v, &Value::Object(flags));
    input::merge(&mut v, &Value::Object(input::merge_patch(&a.sets)?));
    let Value::Object(mut body) = v else {
        unreachable!("merging objects gives an object")
    };
    endpoint_defaults(&mut body);
    add_secrets(&mut body, &a.secrets)?;
    let p = ctx.api.post(&["profiles"], &Value::Object(body)).await?;
    if ctx.json {
        output::json(&p);
    } else {
        let default = if p.get("is_default").and_then(Value::as_bool) == Some(true) {
            " (the organization's default)"
        } else {
            ""
        };
        println!(
            "created email server profile {}: {}{default}",
            str_at(&p, "name"),
            str_at(&p, "id")
        );
    }
    Ok(())
}

/// Well-known ports and TLS modes for endpoints given with a host only.
fn endpoint_defaults(body: &mut Map<String, Value>) {
    let server_type = body
        .get("server_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let exchange = server_type.starts_with("exchange");
    let incoming_protocol = body
        .get("incoming_protocol")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| match server_type.as_str() {
            "pop3_smtp" => "pop3".into(),
            _ if exchange => "ews".into(),
            _ => "imap".into(),
        });
    for dir in ["incoming", "outgoing"] {
        let Some(Value::Object(ep)) = body.get_mut(dir) else {
            continue;
        };
        if !ep.contains_key("location") {
            continue;
        }
        let web = exchange
            || (dir == "incoming" && matches!(incoming_protocol.as_str(), "ews" | "graph"));
        let tls = ep
            .entry("tls")
            .or_insert_with(|| {
                if dir == "outgoing" && !web {
                    "start_tls".into()
                } else {
                    "implicit".into()
                }
            })
            .as_str()
            .unwrap_or("")
            .to_owned();
        let implicit = tls == "implicit";
        let port: u16 = match (dir, web, incoming_protocol.as_str()) {
            (_, true, _) => 443,
            ("incoming", _, "pop3") => {
                if implicit {
                    995
                } else {
                    110
                }
            }
            ("incoming", _, _) => {
                if implicit {
                    993
                } else {
                    143
                }
            }
            _ => match tls.as_str() {
                "implicit" => 465,
                "start_tls" => 587,
                _ => 25,
            },
        };
        ep.entry("port").or_insert(port.into());
    }
}

pub async fn settings(ctx: &Ctx, cmd: SettingsCommand) -> Result<()> {
    match cmd {
        SettingsCommand::Show => {
            let s = ctx.api.get(&["email-settings"], &[]).await?;
            if ctx.json {
                output::json(&s);
            } else {
                output::record(&s);
            }
        }
        SettingsCommand::Set { sets } => {
            let patch = input::merge_patch(&sets)?;
            let current = ctx.api.get(&["email-settings"], &[]).await?;
            input::check_fields(
                &current,
                &patch,
                "the email settings",
                "serversync admin settings show",
            )?;
            let s = ctx
                .api
                .patch(&["email-settings"], &Value::Object(patch))
                .await?;
            if ctx.json {
                output::json(&s);
            } else {
                println!(
                    "updated the email settings of organization {} (version {})",
                    ctx.api.org(),
                    at(&s, "version")
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(v: Value) -> Value {
        let Value::Object(mut m) = v else { panic!() };
        endpoint_defaults(&mut m);
        Value::Object(m)
    }

    #[test]
    fn endpoints_given_by_host_get_well_known_ports() {
        let v = defaults(json!({
            "server_type": "imap_smtp",
            "incoming": {"location": "imap.example.com"},
            "outgoing": {"location": "smtp.example.com"},
        }));
        assert_eq!(
            v["incoming"],
            json!({"location": "imap.example.com", "port": 993, "tls": "implicit"})
        );
        assert_eq!(
            v["outgoing"],
            json!({"location": "smtp.example.com", "port": 587, "tls": "start_tls"})
        );
        let v = defaults(json!({
            "server_type": "pop3_smtp",
            "incoming": {"location": "pop.example.com", "tls": "none"},
            "outgoing": {"location": "smtp.example.com", "tls": "implicit"},
        }));
        assert_eq!(v["incoming"]["port"], 110);
        assert_eq!(v["outgoing"]["port"], 465);
        let v = defaults(
            json!({"server_type": "imap_smtp", "incoming": {"location": "h", "port": 1143}}),
        );
        assert_eq!(v["incoming"]["port"], 1143);
        let v = defaults(json!({"server_type": "imap_smtp", "incoming": {"port": 1143}}));
        assert_eq!(v["incoming"], json!({"port": 1143}));
    }

    #[test]
    fn secrets_go_into_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "s3cret\n").unwrap();
        let s = ProfileSecretArgs {
            password_stdin: false,
            password_file: None,
            outgoing_password_stdin: false,
            outgoing_password_file: None,
            client_secret_stdin: false,
            client_secret_file: Some(f),
        };
        let mut body = Map::new();
        body.insert("oauth".into(), json!({"client_id": "c"}));
        add_secrets(&mut body, &s).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"oauth": {"client_id": "c", "client_secret": "s3cret"}})
        );
    }
}
