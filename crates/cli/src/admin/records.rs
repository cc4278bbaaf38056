//! `admin activities|queue-items|contacts|appointments|tasks|accounts|leads|changes`: CRM
//! records, and composing and sending email.

use super::output::{self, Table, at, str_at, time};
use super::{
    ActivitiesCommand, ActivityListArgs, AppointmentsCommand, ChangesArgs, ComposeArgs,
    ContactsCommand, Ctx, PageArgs, RecordUpdateArgs, RecordsCommand, StateArg, TasksCommand,
    WebhooksCommand, api_name, input,
};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::Duration;

const SUBJECT_WIDTH: usize = 50;

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn from(a: &Value) -> String {
    a.get("parties")
        .and_then(Value::as_array)
        .and_then(|p| p.iter().find(|p| p["role"] == "from"))
        .map(|p| str_at(p, "address").to_owned())
        .unwrap_or_else(|| "-".into())
}

fn regarding(a: &Value) -> String {
    match a.get("regarding") {
        Some(r) if r.is_object() => format!("{}:{}", str_at(r, "type"), str_at(r, "id")),
        _ => "-".into(),
    }
}

fn when(a: &Value) -> String {
    if a.get("received_at").is_some_and(|v| !v.is_null()) {
        time(a, "received_at")
    } else {
        time(a, "sent_at")
    }
}

pub async fn activities(ctx: &Ctx, c: ActivitiesCommand) -> Result<()> {
    match c {
        ActivitiesCommand::List(a) => list(ctx, a).await,
        ActivitiesCommand::Show { id } => show(ctx, &id).await,
        ActivitiesCommand::Attachment { id, sha256, out } => {
            let bytes = ctx
                .api
                .get_bytes(&["activities", &id, "attachments", &sha256])
                .await?;
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if ctx.json {
                output::json(&json!({"file": out, "size": bytes.len()}));
            } else {
                println!("wrote {} bytes to {}", bytes.len(), out.display());
            }
            Ok(())
        }
        ActivitiesCommand::Compose(a) => compose(ctx, a).await,
        ActivitiesCommand::Send { id } => {
            let a = ctx
                .api
                .post(&["activities", &id, "send"], &json!({}))
                .await?;
            print_sent(ctx, &a);
            Ok(())
        }
    }
}

/// `TYPE:ID` → `{"type": …, "id": …}`, else the plain address.
fn recipient(s: &str) -> Value {
    match s.split_once(':') {
        Some((t, id)) if !s.contains('@') => json!({"type": t, "id": id}),
        _ => Value::String(s.to_owned()),
    }
}

async fn compose(ctx: &Ctx, a: ComposeArgs) -> Result<()> {
    use base64::Engine as _;
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let text = match (&a.text, &a.text_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(String::from_utf8_lossy(&read(f)?).into_owned()),
        (None, None) => None,
    };
    let html = match &a.html_file {
        Some(f) => Some(String::from_utf8_lossy(&read(f)?).into_owned()),
        None => None,
    };
    let mut attachments = Vec::new();
    for f in &a.attach {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        attachments.push(json!({
            "file_name": name,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(read(f)?),
        }));
    }
    let list = |v: &[String]| v.iter().map(|s| recipient(s)).collect::<Vec<_>>();
    let mut body = json!({
        "from_mailbox": super::mailboxes::resolve(ctx, &a.from).await?,
        "to": list(&a.to),
        "cc": list(&a.cc),
        "bcc": list(&a.bcc),
        "subject": a.subject,
        "text_body": text,
        "html_body": html,
        "attachments": attachments,
        "draft": a.draft,
    });
    if let Some(r) = &a.regarding {
        body["regarding"] = recipient(r);
    }
    if let Some(r) = &a.in_reply_to {
        body["in_reply_to"] = json!(r);
    }
    if let Some(t) = &a.send_at {
        body["send_after"] = json!(t);
    }
    let a = ctx.api.post(&["activities"], &body).await?;
    print_sent(ctx, &a);
    Ok(())
}

fn print_sent(ctx: &Ctx, a: &Value) {
    if ctx.json {
        output::json(a);
        return;
    }
    println!("{}  {}", at(a, "id"), at(a, "status"));
    if let Some(w) = a.get("send_waiting").and_then(Value::as_str) {
        println!("waiting: {w}");
    }
}

async fn list(ctx: &Ctx, a: ActivityListArgs) -> Result<()> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(m) = &a.mailbox {
        q.push(("mailbox", super::mailboxes::resolve(ctx, m).await?));
    }
    for (k, v) in [
        ("regarding", &a.regarding),
        ("conversation", &a.conversation),
        ("since", &a.since),
        ("until", &a.until),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    let (items, next) = if a.all {
        (ctx.api.list(&["activities"], &q).await?, None)
    } else {
        q.push(("limit", a.limit.to_string()));
        if let Some(c) = &a.after {
            q.push(("after", c.clone()));
        }
        let page = ctx.api.get(&["activities"], &q).await?;
        let Some(Value::Array(items)) = page.get("items") else {
            bail!("the server's answer has no `items` list");
        };
        (
            items.clone(),
            page.get("next").and_then(Value::as_str).map(str::to_owned),
        )
    };
    if ctx.json {
        output::json(&json!({"items": items, "next": next}));
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "TIME",
        "DIRECTION",
        "SUBJECT",
        "FROM",
        "REGARDING",
        "MAILBOXES",
    ]);
    for i in &items {
        t.row(vec![
            at(i, "id"),
            when(i),
            at(i, "direction"),
            truncate(&at(i, "subject"), SUBJECT_WIDTH),
            from(i),
            regarding(i),
            i.get("mailbox_ids")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                .to_string(),
        ]);
    }
    t.print("activities");
    if let Some(n) = next {
        eprintln!("more activities follow: add --after {n} (or --all)");
    }
    Ok(())
}

async fn show(ctx: &Ctx, id: &str) -> Result<()> {
    let a = ctx.api.get(&["activities", id], &[]).await?;
    let thread = ctx.api.get(&["activities", id, "thread"], &[]).await?;
    if ctx.json {
        output::json(&json!({"activity": a, "thread": thread}));
        return Ok(());
    }
    println!("id: {}", at(&a, "id"));
    println!("subject: {}", at(&a, "subject"));
    println!(
        "direction: {}  status: {}",
        at(&a, "direction"),
        at(&a, "status")
    );
    println!("time: {}", when(&a));
    if let Some(w) = a.get("send_waiting").and_then(Value::as_str) {
        println!("waiting: {w}");
    }
    if let Some(e) = a.get("send_error").and_then(Value::as_str) {
        println!(
            "send error: {e} (attempts: {})",
            at(&a, "delivery_attempts")
        );
    }
    println!("regarding: {}", regarding(&a));
    println!("conversation: {}", at(&a, "conversation_id"));
    println!("parties:");
    for p in a
        .get("parties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let resolved = match p.get("resolved") {
            Some(r) if r.is_object() => format!("{}:{}", str_at(r, "type"), str_at(r, "id")),
            _ => "unresolved".into(),
        };
        println!("  {:<4} {}  ({resolved})", at(p, "role"), at(p, "address"));
    }
    println!("attachments:");
    for t in a
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let state = match t.get("dropped_reason").and_then(Value::as_str) {
            Some(r) => format!("dropped: {r}"),
            None => format!("{} bytes", at(t, "size")),
        };
        println!(
            "  {}  {}  {}  sha256 {}",
            at(t, "file_name"),
            at(t, "content_type"),
            state,
            at(t, "sha256")
        );
    }
    println!("thread:");
    for t in thread.as_array().into_iter().flatten() {
        let mark = if t["id"] == a["id"] { "*" } else { " " };
        println!("  {mark} {}  {}  {}", when(t), from(t), at(t, "subject"));
    }
    Ok(())
}

/// `contacts|accounts|leads|queue-items list`.
pub async fn records(ctx: &Ctx, kind: &str, c: RecordsCommand) -> Result<()> {
    let RecordsCommand::List { queue } = c;
    let mut q = Vec::new();
    if queue.is_some() && kind != "queue-items" {
        bail!("--queue applies to `queue-items list` only");
    }
    if let Some(queue) = queue {
        q.push(("queue", queue));
    }
    let items = ctx.api.list(&[kind], &q).await?;
    if ctx.json {
        output::json(&Value::Array(items));
        return Ok(());
    }
    let mut t = if kind == "queue-items" {
        Table::new(&["ID", "QUEUE", "ACTIVITY", "ENTERED"])
    } else {
        Table::new(&["ID", "NAME", "EMAILS", "OWNER"])
    };
    for i in &items {
        if kind == "queue-items" {
            t.row(vec![
                at(i, "id"),
                at(i, "queue_id"),
                at(i, "activity_id"),
                time(i, "entered_at"),
            ]);
        } else {
            let name = i
                .get("name")
                .or_else(|| i.get("full_name"))
                .and_then(Value::as_str)
                .unwrap_or("-");
            let emails: Vec<&str> = i
                .get("emails")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            t.row(vec![
                at(i, "id"),
                name.to_owned(),
                emails.join(", "),
                at(i, "owner_id"),
            ]);
        }
    }
    t.print(kind);
    Ok(())
}

/// `contacts list|get|create|update|delete`.
pub async fn contacts(ctx: &Ctx, c: ContactsCommand) -> Result<()> {
    const KIND: Kind = Kind {
        path: "contacts",
        name: "contact",
    };
    match c {
        ContactsCommand::List => {
            records(ctx, "contacts", RecordsCommand::List { queue: None }).await
        }
        ContactsCommand::Get { id } => get(ctx, KIND, &id).await,
        ContactsCommand::Create(a) => {
            let mut body = json!({
                "name": a.name,
                "emails": a.emails,
                "phones": a.phones,
                "company": a.company,
                "job_title": a.job_title,
                "account_id": a.account,
            });
            if let Some(o) = &a.owner {
                body["owner_id"] = json!(super::orgs::resolve_user(ctx, o).await?);
            }
            create(ctx, KIND, &body).await
        }
        ContactsCommand::Update(a) => update(ctx, KIND, a).await,
        ContactsCommand::Delete { id } => delete(ctx, KIND, &id).await,
    }
}

/// `appointments list|get|create|update|delete`.
pub async fn appointments(ctx: &Ctx, c: AppointmentsCommand) -> Result<()> {
    const KIND: Kind = Kind {
        path: "appointments",
        name: "appointment",
    };
    match c {
        AppointmentsCommand::List(a) => {
            let mut q = filters(ctx, a.owner.as_deref(), a.state).await?;
            for (k, v) in [("since", &a.since), ("until", &a.until)] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            let (items, next) = page(ctx, KIND, q, &a.page).await?;
            if ctx.json {
                output::json(&json!({"items": items, "next": next}));
                return Ok(());
            }
            let mut t = Table::new(&[
                "ID",
                "START",
                "END",
                "SUBJECT",
                "LOCATION",
                "STATE",
                "ATTENDEES",
                "OWNER",
            ]);
            for i in &items {
                t.row(vec![
                    at(i, "id"),
                    time(i, "starts_at"),
                    time(i, "ends_at"),
                    truncate(&at(i, "subject"), SUBJECT_WIDTH),
                    at(i, "location"),
                    at(i, "state"),
                    i.get("attendees")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                        .to_string(),
                    at(i, "owner_id"),
                ]);
            }
            t.print("appointments");
            more(KIND, next);
            Ok(())
        }
        AppointmentsCommand::Get { id } => get(ctx, KIND, &id).await,
        AppointmentsCommand::Create(a) => {
            let mut body = json!({
                "subject": a.subject,
                "starts_at": a.start,
                "ends_at": a.end,
                "location": a.location,
                "description": a.description,
                "all_day": a.all_day,
                "time_zone": a.time_zone,
                "organizer": a.organizer,
                "attendees": a.attendees,
                "state": a.state.map(|s| api_name(&s)),
            });
            if let Some(rule) = a.rrule {
                body["recurrence"] = json!({ "rule": rule });
            }
            owner_and_regarding(ctx, &mut body, a.owner.as_deref(), a.regarding.as_deref()).await?;
            create(ctx, KIND, &body).await
        }
        AppointmentsCommand::Update(a) => update(ctx, KIND, a).await,
        AppointmentsCommand::Delete { id } => delete(ctx, KIND, &id).await,
    }
}

/// `tasks list|get|create|update|delete`.
pub async fn tasks(ctx: &Ctx, c: TasksCommand) -> Result<()> {
    const KIND: Kind = Kind {
        path: "tasks",
        name: "task",
    };
    match c {
        TasksCommand::List(a) => {
            let q = filters(ctx, a.owner.as_deref(), a.state).await?;
            let (items, next) = page(ctx, KIND, q, &a.page).await?;
            if ctx.json {
                output::json(&json!({"items": items, "next": next}));
                return Ok(());
            }
            let mut t = Table::new(&["ID", "DUE", "SUBJECT", "DONE", "STATE", "OWNER"]);
            for i in &items {
                t.row(vec![
                    at(i, "id"),
                    time(i, "due_at"),
                    truncate(&at(i, "subject"), SUBJECT_WIDTH),
                    format!("{}%", at(i, "percent_complete")),
                    at(i, "state"),
                    at(i, "owner_id"),
                ]);
            }
            t.print("tasks");
            more(KIND, next);
            Ok(())
        }
        TasksCommand::Get { id } => get(ctx, KIND, &id).await,
        TasksCommand::Create(a) => {
            let mut body = json!({
                "subject": a.subject,
                "description": a.description,
                "due_at": a.due,
                "state": a.state.map(|s| api_name(&s)),
            });
            if let Some(p) = a.percent_complete {
                body["percent_complete"] = json!(p);
            }
            owner_and_regarding(ctx, &mut body, a.owner.as_deref(), a.regarding.as_deref()).await?;
            create(ctx, KIND, &body).await
        }
        TasksCommand::Update(a) => update(ctx, KIND, a).await,
        TasksCommand::Delete { id } => delete(ctx, KIND, &id).await,
    }
}

/// A record type of the API: its path segment and its name in messages.
#[derive(Clone, Copy)]
struct Kind {
    path: &'static str,
    name: &'static str,
}

/// The `owner` (resolved to a user id) and `state` filters of a list.
async fn filters(
    ctx: &Ctx,
    owner: Option<&str>,
    state: Option<StateArg>,
) -> Result<Vec<(&'static str, String)>> {
    let mut q = Vec::new();
    if let Some(o) = owner {
        q.push(("owner", super::orgs::resolve_user(ctx, o).await?));
    }
    if let Some(s) = state {
        q.push(("state", api_name(&s)));
    }
    Ok(q)
}

/// One page (or, with `--all`, every page) of a list, and the cursor of the next page.
async fn page(
    ctx: &Ctx,
    kind: Kind,
    mut q: Vec<(&str, String)>,
    p: &PageArgs,
) -> Result<(Vec<Value>, Option<String>)> {
    if p.all {
        return Ok((ctx.api.list(&[kind.path], &q).await?, None));
    }
    q.push(("limit", p.limit.to_string()));
    if let Some(c) = &p.after {
        q.push(("after", c.clone()));
    }
    let page = ctx.api.get(&[kind.path], &q).await?;
    let Some(Value::Array(items)) = page.get("items") else {
        bail!("the server's answer has no `items` list");
    };
    Ok((
        items.clone(),
        page.get("next").and_then(Value::as_str).map(str::to_owned),
    ))
}

fn more(kind: Kind, next: Option<String>) {
    if let Some(n) = next {
        eprintln!("more {}s follow: add --after {n} (or --all)", kind.name);
    }
}

/// Sets `owner_id` (a user id or email address) and `regarding` (`TYPE:ID`) when given.
async fn owner_and_regarding(
    ctx: &Ctx,
    body: &mut Value,
    owner: Option<&str>,
    regarding: Option<&str>,
) -> Result<()> {
    if let Some(o) = owner {
        body["owner_id"] = json!(super::orgs::resolve_user(ctx, o).await?);
    }
    if let Some(r) = regarding {
        let Some((t, id)) = r.split_once(':') else {
            bail!("--regarding {r:?} is not TYPE:ID: write e.g. --regarding contact:<id>");
        };
        body["regarding"] = json!({"type": t, "id": id});
    }
    Ok(())
}

async fn get(ctx: &Ctx, kind: Kind, id: &str) -> Result<()> {
    let r = ctx.api.get(&[kind.path, id], &[]).await?;
    if ctx.json {
        output::json(&r);
    } else {
        output::record(&r);
    }
    Ok(())
}

/// Creates a record from `body` (null fields left out) and prints its id.
async fn create(ctx: &Ctx, kind: Kind, body: &Value) -> Result<()> {
    let mut body = body.clone();
    if let Some(o) = body.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    let r = ctx.api.post(&[kind.path], &body).await?;
    if ctx.json {
        output::json(&r);
    } else {
        println!("created {} {}", kind.name, at(&r, "id"));
    }
    Ok(())
}

async fn update(ctx: &Ctx, kind: Kind, a: RecordUpdateArgs) -> Result<()> {
    let body = input::merge_patch(&a.sets)?;
    let r = ctx
        .api
        .patch(&[kind.path, &a.id], &Value::Object(body))
        .await?;
    if ctx.json {
        output::json(&r);
    } else {
        println!(
            "updated {} {} (version {})",
            kind.name,
            at(&r, "id"),
            at(&r, "version")
        );
    }
    Ok(())
}

async fn delete(ctx: &Ctx, kind: Kind, id: &str) -> Result<()> {
    ctx.api.delete(&[kind.path, id]).await?;
    if ctx.json {
        output::json(&json!({ "deleted": id }));
    } else {
        println!("deleted {} {id}", kind.name);
    }
    Ok(())
}

/// `changes [--after N] [--follow]`: prints the change feed, one event a line (JSON lines with
/// `--json`); `--follow` keeps polling.
pub async fn changes(ctx: &Ctx, a: ChangesArgs) -> Result<()> {
    let mut after = a.after;
    loop {
        let page = ctx
            .api
            .get(
                &["changes"],
                &[("after", after.to_string()), ("limit", "1000".into())],
            )
            .await?;
        let items = page
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &items {
            if ctx.json {
                println!("{c}");
            } else {
                println!(
                    "{}  {}  {} {} {} (version {})",
                    at(c, "seq"),
                    time(c, "at"),
                    at(c, "op"),
                    at(c, "record_type"),
                    at(c, "record_id"),
                    at(c, "version")
                );
            }
        }
        if let Some(n) = page.get("next").and_then(Value::as_i64) {
            after = n;
        }
        if items.is_empty() {
            if !a.follow {
                if !ctx.json {
                    eprintln!("next: --after {after}");
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(a.interval.max(1))).await;
        }
    }
}

fn webhook_row(t: &mut Table, w: &Value) {
    let status = w.get("status").cloned().unwrap_or(Value::Null);
    t.row(vec![
        at(w, "id"),
        at(w, "url"),
        at(&status, "state"),
        at(&status, "cursor"),
        at(&status, "consecutive_failures"),
        at(&status, "last_error"),
    ]);
}

/// `webhooks list|create|show|resume|deliveries|delete`.
pub async fn webhooks(ctx: &Ctx, c: WebhooksCommand) -> Result<()> {
    const HEADERS: &[&str] = &["ID", "URL", "STATE", "CURSOR", "FAILURES", "LAST ERROR"];
    let one = |w: Value| {
        if ctx.json {
            output::json(&w);
        } else {
            let mut t = Table::new(HEADERS);
            webhook_row(&mut t, &w);
            t.print("webhooks");
        }
    };
    match c {
        WebhooksCommand::List => {
            let list = ctx.api.get(&["webhooks"], &[]).await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            let mut t = Table::new(HEADERS);
            for w in list.as_array().into_iter().flatten() {
                webhook_row(&mut t, w);
            }
            t.print("webhooks");
        }
        WebhooksCommand::Create {
            endpoint,
            secret_file,
            description,
            record_types,
        } => {
            let secret = if secret_file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("cannot read the secret from standard input")?;
                s
            } else {
                std::fs::read_to_string(&secret_file)
                    .with_context(|| format!("cannot read {}", secret_file.display()))?
            };
            let secret = secret.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                bail!("the secret file is empty: put the signing secret in it");
            }
            let mut body = json!({"url": endpoint, "secret": secret});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if !record_types.is_empty() {
                body["record_types"] = json!(record_types);
            }
            one(ctx.api.post(&["webhooks"], &body).await?);
        }
        WebhooksCommand::Show { id } => one(ctx.api.get(&["webhooks", &id], &[]).await?),
        WebhooksCommand::Resume { id } => one(ctx
            .api
            .post(&["webhooks", &id, "resume"], &json!({}))
            .await?),
        WebhooksCommand::Delete { id } => {
            ctx.api.delete(&["webhooks", &id]).await?;
            if !ctx.json {
                println!("deleted webhook {id}");
            }
        }
        WebhooksCommand::Deliveries { id } => {
            let log = ctx
                .api
                .get(
                    &["webhooks", &id, "deliveries"],
                    &[("limit", "1000".into())],
                )
                .await?;
            if ctx.json {
                output::json(&log);
                return Ok(());
            }
            let mut t = Table::new(&["AT", "EVENT", "ATTEMPT", "OK", "STATUS", "MS", "ERROR"]);
            for d in log
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                t.row(vec![
                    time(d, "at"),
                    at(d, "event_id"),
                    at(d, "attempt"),
                    at(d, "ok"),
                    at(d, "status"),
                    at(d, "duration_ms"),
                    at(d, "error"),
                ]);
            }
            t.print("deliveries");
        }
    }
    Ok(())
}
