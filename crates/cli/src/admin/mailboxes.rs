//! Mailboxes: list, show, edit, the bulk actions (apply defaults, approve, reject, test and
//! enable), sync now, and the items (messages seen). Mailboxes are named by id or email
//! address.

use super::input::{self, SecretSource};
use super::monitor::{self, JobOutcome};
use super::output::{self, Table, at, count, str_at, time};
use super::profiles::resolve_profile;
use super::{
    Ctx, MailboxItemsArgs, MailboxListArgs, MailboxesCommand, Selection, WaitArgs, api_name, is_id,
};
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The API accepts at most this many mailboxes per bulk request.
const BATCH: usize = 1000;

/// Email addresses by mailbox id, for tables.
pub async fn emails(ctx: &Ctx) -> Result<HashMap<String, String>> {
    let all = ctx.api.list(&["mailboxes"], &[]).await?;
    Ok(all
        .iter()
        .map(|m| (str_at(m, "id").to_owned(), str_at(m, "email").to_owned()))
        .collect())
}

/// A mailbox's id from its id or email address.
pub async fn resolve(ctx: &Ctx, key: &str) -> Result<String> {
    Ok(resolve_many(ctx, &[key.to_owned()]).await?.remove(0))
}

/// Mailbox ids from ids or email addresses (the list is fetched once, only if needed).
async fn resolve_many(ctx: &Ctx, keys: &[String]) -> Result<Vec<String>> {
    let mut all: Option<Vec<Value>> = None;
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        let key = key.trim();
        let id = if is_id(key) {
            key.to_owned()
        } else if key.contains('@') {
            if all.is_none() {
                all = Some(ctx.api.list(&["mailboxes"], &[]).await?);
            }
            let found: Vec<&Value> = all
                .iter()
                .flatten()
                .filter(|m| str_at(m, "email").eq_ignore_ascii_case(key))
                .collect();
            match found.as_slice() {
                [m] => str_at(m, "id").to_owned(),
                [] => bail!(
                    "no mailbox with email address {key:?} in organization {:?}: list them with `serversync admin mailboxes list`",
                    ctx.api.org()
                ),
                many => bail!(
                    "{} mailboxes have the address {key:?}: name one by its id (see `serversync admin mailboxes list`)",
                    many.len()
                ),
            }
        } else {
            bail!("{key:?} is neither a mailbox id nor an email address");
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

async fn select(ctx: &Ctx, s: &Selection) -> Result<Vec<String>> {
    if s.all {
        let all = ctx.api.list(&["mailboxes"], &[]).await?;
        if all.is_empty() {
            bail!("organization {:?} has no mailboxes", ctx.api.org());
        }
        return Ok(all.iter().map(|m| str_at(m, "id").to_owned()).collect());
    }
    resolve_many(ctx, &s.mailboxes).await
}

/// One direction in a table: its status when synchronized by serversync, `-` when off, the
/// method otherwise (email_router…).
fn direction(m: &Value, method: &str, status: &str) -> String {
    match str_at(m, method) {
        "server_side_sync" => at(m, &format!("{status}.status")),
        "none" | "" => "-".into(),
        other => other.to_owned(),
    }
}

fn enabled(m: &Value) -> String {
    let dirs = [
        ("incoming_method", "incoming"),
        ("outgoing_method", "outgoing"),
        ("act_method", "act"),
    ];
    let on: Vec<bool> = dirs
        .iter()
        .filter(|(method, _)| str_at(m, method) == "server_side_sync")
        .map(|(_, d)| {
            output::get(m, &format!("{d}.enabled")).and_then(Value::as_bool) == Some(true)
        })
        .collect();
    match on.as_slice() {
        [] => "-".into(),
        v if v.iter().all(|x| *x) => "yes".into(),
        _ => "no".into(),
    }
}

async fn list(ctx: &Ctx, a: MailboxListArgs) -> Result<()> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(s) = &a.status {
        q.push(("status", api_name(s)));
    }
    if let Some(ap) = &a.approval {
        q.push(("approval", api_name(ap)));
    }
    if let Some(p) = &a.profile {
        q.push(("profile_id", resolve_profile(ctx, p).await?));
    }
    if let Some(o) = &a.owner {
        q.push(("owner_id", super::orgs::resolve_user(ctx, o).await?));
    }
    let all = ctx.api.list(&["mailboxes"], &q).await?;
    if ctx.json {
        output::json(&Value::Array(all));
        return Ok(());
    }
    let profiles: HashMap<String, String> = if all.iter().any(|m| !m["profile_id"].is_null()) {
        ctx.api
            .list(&["profiles"], &[])
            .await?
            .iter()
            .map(|p| (str_at(p, "id").to_owned(), str_at(p, "name").to_owned()))
            .collect()
    } else {
        HashMap::new()
    };
    let mut t = Table::new(&[
        "ID", "EMAIL", "NAME", "PROFILE", "APPROVAL", "INCOMING", "OUTGOING", "ACT", "ENABLED",
    ]);
    for m in &all {
        let profile = match m.get("profile_id").and_then(Value::as_str) {
            Some(id) => profiles.get(id).cloned().unwrap_or_else(|| id.to_owned()),
            None => "-".into(),
        };
        t.row(vec![
            at(m, "id"),
            at(m, "email"),
            at(m, "name"),
            profile,
            at(m, "approval"),
            direction(m, "incoming_method", "incoming"),
            direction(m, "outgoing_method", "outgoing"),
            direction(m, "act_method", "act"),
            enabled(m),
        ]);
    }
    t.print("mailboxes");
    Ok(())
}

fn emails_of(ms: &Value) -> Vec<String> {
    ms.as_array()
        .into_iter()
        .flatten()
        .map(|m| str_at(m, "email").to_owned())
        .collect()
}

pub async fn run(ctx: &Ctx, cmd: MailboxesCommand) -> Result<()> {
    match cmd {
        MailboxesCommand::List(a) => list(ctx, a).await?,
        MailboxesCommand::Show { mailbox } => {
            let id = resolve(ctx, &mailbox).await?;
            let m = ctx.api.get(&["mailboxes", &id], &[]).await?;
            if ctx.json {
                output::json(&m);
            } else {
                output::record(&m);
            }
        }
        MailboxesCommand::Edit(a) => {
            let mut patch = input::merge_patch(&a.sets)?;
            let password = SecretSource {
                what: "mailbox password",
                stdin: a.password_stdin,
                file: a.password_file.as_deref(),
            }
            .read()?;
            if let Some(p) = password {
                patch.insert("password".into(), p.into());
            }
            if patch.is_empty() {
                bail!(
                    "nothing to change: give --set KEY=VALUE (the keys are those of `serversync admin mailboxes show {}`) or --password-stdin",
                    a.mailbox
                );
            }
            // A profile may be named by its name.
            if let Some(Value::String(p)) = patch.get("profile_id")
                && !is_id(p)
            {
                let id = resolve_profile(ctx, &p.clone()).await?;
                patch.insert("profile_id".into(), id.into());
            }
            let id = resolve(ctx, &a.mailbox).await?;
            let current = ctx.api.get(&["mailboxes", &id], &[]).await?;
            input::check_fields(
                &current,
                &patch,
                "the mailbox",
                &format!("serversync admin mailboxes show {}", a.mailbox),
            )?;
            let m = ctx
                .api
                .patch(&["mailboxes", &id], &Value::Object(patch))
                .await?;
            if ctx.json {
                output::json(&m);
            } else {
                println!(
                    "updated mailbox {} (version {}); test and enable it to apply the change: serversync admin mailboxes test-enable {} --wait",
                    str_at(&m, "email"),
                    at(&m, "version"),
                    str_at(&m, "email")
                );
            }
        }
        MailboxesCommand::ApplyDefaults {
            select: s,
            no_test,
            wait,
        } => {
            let ids = select(ctx, &s).await?;
            let mut outcome = JobOutcome::default();
            for chunk in ids.chunks(BATCH) {
                let body = json!({ "mailbox_ids": chunk, "test_and_enable": !no_test });
                let mut r = ctx
                    .api
                    .post(&["mailboxes", "apply-defaults"], &body)
                    .await?;
                if ctx.json {
                    if wait.wait && r["job"].is_object() {
                        r["job"] = monitor::wait_job(ctx, r["job"].clone(), wait).await?;
                        outcome.add(&r["job"]);
                    }
                    output::json(&r);
                    continue;
                }
                let emails = emails_of(&r["mailboxes"]);
                println!(
                    "applied the default email settings to {}: {}",
                    count(emails.len(), "mailbox", "mailboxes"),
                    emails.join(", ")
                );
                if r["job"].is_object() {
                    outcome.merge(monitor::follow_job(ctx, r["job"].clone(), wait).await?);
                }
            }
            outcome.result()?;
        }
        MailboxesCommand::Approve { select: s } => approval(ctx, &s, true).await?,
        MailboxesCommand::Reject { select: s } => approval(ctx, &s, false).await?,
        MailboxesCommand::TestEnable { select: s, wait } => {
            let ids = select(ctx, &s).await?;
            test_enable(ctx, &ids, wait).await?;
        }
        MailboxesCommand::SyncNow { mailbox } => {
            let id = resolve(ctx, &mailbox).await?;
            let m = ctx
                .api
                .post(&["mailboxes", &id, "sync-now"], &json!({}))
                .await?;
            if ctx.json {
                output::json(&m);
            } else {
                println!(
                    "requested a synchronization of mailbox {} now (at {}); follow it with: serversync admin mailboxes show {}",
                    str_at(&m, "email"),
                    time(&m, "telemetry.sync_requested_at"),
                    str_at(&m, "email")
                );
            }
        }
        MailboxesCommand::Items(a) => items(ctx, a).await?,
    }
    Ok(())
}

/// Longest subject shown in the items table, in characters.
const SUBJECT_WIDTH: usize = 50;

/// `s` cut to `max` characters, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

async fn items(ctx: &Ctx, a: MailboxItemsArgs) -> Result<()> {
    let id = resolve(ctx, &a.mailbox).await?;
    let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
    if let Some(d) = &a.decision {
        q.push(("decision", api_name(d)));
    }
    let mut after = a.after.clone();
    let mut all: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    // Bounded: a server that kept answering with a `next` would otherwise loop forever.
    for _ in 0..100_000 {
        let mut pq = q.clone();
        if let Some(c) = &after {
            pq.push(("after", c.clone()));
        }
        let page = ctx.api.get(&["mailboxes", &id, "items"], &pq).await?;
        let Some(Value::Array(items)) = page.get("items") else {
            bail!(
                "the server's answer for the items of {} has no `items` list",
                a.mailbox
            );
        };
        all.extend(items.iter().cloned());
        next = page.get("next").and_then(Value::as_str).map(str::to_owned);
        if !a.all {
            if ctx.json {
                output::json(&page);
                return Ok(());
            }
            break;
        }
        match &next {
            Some(n) if Some(n) != after.as_ref() => after = Some(n.clone()),
            _ => {
                next = None;
                break;
            }
        }
    }
    if a.all && next.is_some() {
        bail!("the items of {} did not end", a.mailbox);
    }
    if ctx.json {
        output::json(&json!({ "items": all, "next": Value::Null }));
        return Ok(());
    }
    let mut t = Table::new(&["RECEIVED", "DECISION", "SUBJECT", "FROM", "REASON"]);
    for i in &all {
        let reason = i
            .get("trace")
            .and_then(Value::as_array)
            .and_then(|t| t.last())
            .and_then(Value::as_str)
            .unwrap_or("-");
        t.row(vec![
            time(i, "received_at"),
            at(i, "decision"),
            truncate(&at(i, "subject"), SUBJECT_WIDTH),
            at(i, "from"),
            reason.to_owned(),
        ]);
    }
    t.print("items");
    if let Some(n) = next {
        let decision = a
            .decision
            .map(|d| format!(" --decision {}", api_name(&d)))
            .unwrap_or_default();
        eprintln!(
            "more items follow: serversync admin mailboxes items {}{decision} --limit {} --after {n} (or --all)",
            a.mailbox, a.limit
        );
    }
    Ok(())
}

async fn approval(ctx: &Ctx, s: &Selection, approve: bool) -> Result<()> {
    let ids = select(ctx, s).await?;
    let path = if approve { "approve" } else { "reject" };
    let mut done: Vec<Value> = Vec::new();
    for chunk in ids.chunks(BATCH) {
        let r = ctx
            .api
            .post(&["mailboxes", path], &json!({ "mailbox_ids": chunk }))
            .await?;
        match r.get("mailboxes") {
            Some(Value::Array(a)) => done.extend(a.iter().cloned()),
            _ => {
                return Err(anyhow!(
                    "the server's answer to {path} has no `mailboxes` list"
                ));
            }
        }
    }
    if ctx.json {
        output::json(&json!({ "mailboxes": done }));
        return Ok(());
    }
    let emails = emails_of(&Value::Array(done));
    println!(
        "{} {}: {}",
        if approve { "approved" } else { "rejected" },
        count(emails.len(), "mailbox", "mailboxes"),
        emails.join(", ")
    );
    Ok(())
}

async fn test_enable(ctx: &Ctx, ids: &[String], wait: WaitArgs) -> Result<()> {
    let mut outcome = JobOutcome::default();
    for chunk in ids.chunks(BATCH) {
        let job = ctx
            .api
            .post(
                &["mailboxes", "test-enable"],
                &json!({ "mailbox_ids": chunk }),
            )
            .await?;
        outcome.merge(monitor::follow_job(ctx, job, wait).await?);
    }
    outcome.result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_subjects_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("Größenänderung der Datei", 8), "Größenä…");
    }

    #[test]
    fn directions_show_status_only_when_synchronized() {
        let m = json!({
            "incoming_method": "server_side_sync", "incoming": {"status": "success", "enabled": true},
            "outgoing_method": "email_router", "outgoing": {"status": "not_run", "enabled": false},
            "act_method": "none", "act": {"status": "not_run", "enabled": false},
        });
        assert_eq!(direction(&m, "incoming_method", "incoming"), "success");
        assert_eq!(direction(&m, "outgoing_method", "outgoing"), "email_router");
        assert_eq!(direction(&m, "act_method", "act"), "-");
        assert_eq!(enabled(&m), "yes");
    }
}
