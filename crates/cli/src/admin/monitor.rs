//! Alerts, jobs (and following one to its end) and the audit log.

use super::mailboxes;
use super::output::{self, Table, at, count, str_at, time};
use super::{AlertsCommand, AuditArgs, Ctx, JobsCommand, WaitArgs};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a job is polled with --wait.
const POLL: Duration = Duration::from_millis(500);

fn is_finished(status: &str) -> bool {
    matches!(
        status,
        "succeeded" | "completed_with_failures" | "failed" | "canceled"
    )
}

/// Failed mailboxes of jobs followed to their end; an error (exit status 1) if any.
#[derive(Debug, Default)]
pub struct JobOutcome {
    problems: Vec<String>,
}

impl JobOutcome {
    pub fn add(&mut self, job: &Value) {
        let id = str_at(job, "id");
        let status = str_at(job, "status");
        let failed = failures(job);
        let total = at(job, "total");
        match status {
            "succeeded" => {}
            "completed_with_failures" => self.problems.push(format!(
                "job {id} completed with failures: {failed} of {total} mailboxes failed (see the results above)"
            )),
            "canceled" => self.problems.push(format!("job {id} was canceled")),
            other => self.problems.push(format!(
                "job {id} {other}: {failed} of {total} mailboxes failed (see the results above)"
            )),
        }
    }

    pub fn merge(&mut self, other: JobOutcome) {
        self.problems.extend(other.problems);
    }

    pub fn result(self) -> Result<()> {
        match self.problems.len() {
            0 => Ok(()),
            _ => bail!("{}", self.problems.join("; ")),
        }
    }
}

fn failures(job: &Value) -> usize {
    job.get("results")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter(|x| x.get("ok").and_then(Value::as_bool) != Some(true))
                .count()
        })
        .unwrap_or(0)
}

/// Polls a job until it finishes (progress on standard error), bounded by `--timeout`.
pub async fn wait_job(ctx: &Ctx, mut job: Value, w: WaitArgs) -> Result<Value> {
    let id = str_at(&job, "id").to_owned();
    if id.is_empty() {
        bail!("the server's answer holds no job id");
    }
    let deadline = Instant::now() + Duration::from_secs(w.timeout);
    let mut last = String::new();
    loop {
        let status = str_at(&job, "status").to_owned();
        let progress = format!(
            "job {id}: {status}, {} of {} mailboxes done",
            at(&job, "done"),
            at(&job, "total")
        );
        if progress != last {
            eprintln!("{progress}");
            last = progress;
        }
        if is_finished(&status) {
            return Ok(job);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "job {id} is still {status} after {} s ({} of {} mailboxes done); it goes on: follow it with `serversync admin jobs show {id} --wait`",
                w.timeout,
                at(&job, "done"),
                at(&job, "total")
            );
        }
        tokio::time::sleep(POLL.min(left)).await;
        job = ctx.api.get(&["jobs", &id], &[]).await?;
    }
}

/// Reports a job just queued: with --wait, follows it and prints its results; otherwise says
/// how to follow it. The outcome counts only jobs waited for.
pub async fn follow_job(ctx: &Ctx, job: Value, w: WaitArgs) -> Result<JobOutcome> {
    let mut outcome = JobOutcome::default();
    if !w.wait {
        if ctx.json {
            output::json(&job);
        } else {
            let id = str_at(&job, "id");
            println!(
                "queued {} of {} as job {id}; follow it with: serversync admin jobs show {id} --wait",
                str_at(&job, "kind").replace('_', " "),
                count(
                    job.get("total").and_then(Value::as_u64).unwrap_or(0) as usize,
                    "mailbox",
                    "mailboxes"
                )
            );
        }
        return Ok(outcome);
    }
    let job = wait_job(ctx, job, w).await?;
    if ctx.json {
        output::json(&job);
    } else {
        print_job(ctx, &job).await?;
    }
    outcome.add(&job);
    Ok(outcome)
}

/// A job for people: one summary line, then one row per mailbox result.
async fn print_job(ctx: &Ctx, job: &Value) -> Result<()> {
    println!(
        "job {} ({}): {}, {} of {} mailboxes done, {} failed",
        str_at(job, "id"),
        at(job, "kind"),
        at(job, "status"),
        at(job, "done"),
        at(job, "total"),
        failures(job)
    );
    let results = job
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if results.is_empty() {
        return Ok(());
    }
    let emails = mailboxes::emails(ctx).await.unwrap_or_default();
    let mut t = Table::new(&["MAILBOX", "RESULT", "MESSAGE"]);
    for r in &results {
        let id = str_at(r, "mailbox_id");
        t.row(vec![
            emails.get(id).cloned().unwrap_or_else(|| id.to_owned()),
            if r.get("ok").and_then(Value::as_bool) == Some(true) {
                "ok".into()
            } else {
                "FAILED".into()
            },
            at(r, "message"),
        ]);
    }
    t.print("results");
    Ok(())
}

pub async fn alerts(ctx: &Ctx, cmd: AlertsCommand) -> Result<()> {
    match cmd {
        AlertsCommand::List { mailbox, all } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            if let Some(m) = &mailbox {
                q.push(("mailbox_id", mailboxes::resolve(ctx, m).await?));
            }
            let mut items = ctx.api.list(&["alerts"], &q).await?;
            if !all {
                items.retain(|a| a.get("dismissed_at").is_none_or(Value::is_null));
            }
            if ctx.json {
                output::json(&Value::Array(items));
                return Ok(());
            }
            let emails = if items.iter().any(|a| a["mailbox_id"].is_string()) {
                mailboxes::emails(ctx).await?
            } else {
                HashMap::new()
            };
            let mut headers = vec!["ID", "CREATED", "SEVERITY", "CODE", "MAILBOX", "MESSAGE"];
            if all {
                headers.insert(5, "DISMISSED");
            }
            let mut t = Table::new(&headers);
            for a in &items {
                let mailbox = match a.get("mailbox_id").and_then(Value::as_str) {
                    Some(id) => emails.get(id).cloned().unwrap_or_else(|| id.to_owned()),
                    None => "-".into(),
                };
                let mut row = vec![
                    at(a, "id"),
                    time(a, "created_at"),
                    at(a, "severity"),
                    at(a, "code"),
                    mailbox,
                    at(a, "message"),
                ];
                if all {
                    row.insert(5, time(a, "dismissed_at"));
                }
                t.row(row);
            }
            t.print(if all { "alerts" } else { "active alerts" });
        }
        AlertsCommand::Dismiss { id } => {
            let a = ctx
                .api
                .post(&["alerts", id.trim(), "dismiss"], &json!({}))
                .await?;
            if ctx.json {
                output::json(&a);
            } else {
                println!(
                    "dismissed alert {}: {}",
                    str_at(&a, "id"),
                    at(&a, "message")
                );
            }
        }
    }
    Ok(())
}

pub async fn jobs(ctx: &Ctx, cmd: JobsCommand) -> Result<()> {
    match cmd {
        JobsCommand::List => {
            let items = ctx.api.list(&["jobs"], &[]).await?;
            if ctx.json {
                output::json(&Value::Array(items));
                return Ok(());
            }
            let mut t = Table::new(&["ID", "CREATED", "KIND", "STATUS", "DONE", "FAILED"]);
            for j in &items {
                t.row(vec![
                    at(j, "id"),
                    time(j, "created_at"),
                    at(j, "kind"),
                    at(j, "status"),
                    format!("{}/{}", at(j, "done"), at(j, "total")),
                    failures(j).to_string(),
                ]);
            }
            t.print("jobs");
        }
        JobsCommand::Show { id, wait } => {
            let job = ctx.api.get(&["jobs", id.trim()], &[]).await?;
            if wait.wait {
                follow_job(ctx, job, wait).await?.result()?;
            } else if ctx.json {
                output::json(&job);
            } else {
                print_job(ctx, &job).await?;
            }
        }
    }
    Ok(())
}

pub async fn audit(ctx: &Ctx, a: AuditArgs) -> Result<()> {
    let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
    if let Some(after) = a.after {
        q.push(("after", after.to_string()));
    }
    let newest_first = a.newest_first || a.before.is_some();
    if newest_first {
        q.push(("newest_first", "true".into()));
    }
    if let Some(before) = a.before {
        q.push(("before", before.to_string()));
    }
    let v = ctx.api.get(&["audit"], &q).await?;
    let entries = v.as_array().cloned().unwrap_or_default();
    if ctx.json {
        output::json(&Value::Array(entries));
        return Ok(());
    }
    // Users by id, to show who did what; without the privilege to list users, ids are shown.
    let users: HashMap<String, String> = match ctx.api.list(&["users"], &[]).await {
        Ok(us) => us
            .iter()
            .map(|u| (str_at(u, "id").to_owned(), str_at(u, "email").to_owned()))
            .collect(),
        Err(_) => HashMap::new(),
    };
    let mut t = Table::new(&["SEQ", "AT", "ACTOR", "ACTION", "ENTITY", "ENTITY ID"]);
    for e in &entries {
        let actor_id = at(e, "actor.id");
        let actor = match str_at(e, "actor.type") {
            "user" => users.get(&actor_id).cloned().unwrap_or(actor_id),
            kind => format!("{kind}:{actor_id}"),
        };
        t.row(vec![
            at(e, "seq"),
            time(e, "at"),
            actor,
            at(e, "action"),
            at(e, "entity"),
            at(e, "entity_id"),
        ]);
    }
    t.print("audit entries");
    if entries.len() as u64 >= u64::from(a.limit)
        && let Some(last) = entries
            .last()
            .and_then(|e| e.get("seq"))
            .and_then(Value::as_i64)
    {
        if newest_first {
            eprintln!("older entries may follow: serversync admin audit --before {last}");
        } else {
            eprintln!("more entries may follow: serversync admin audit --after {last}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_with_failed_mailboxes_fail_the_command() {
        let mut o = JobOutcome::default();
        o.add(&json!({"id": "j1", "status": "succeeded", "total": 1, "results": [{"ok": true}]}));
        assert!(o.result().is_ok());
        let mut o = JobOutcome::default();
        o.add(
            &json!({"id": "j2", "status": "completed_with_failures", "total": 2,
            "results": [{"ok": true}, {"ok": false}]}),
        );
        let e = o.result().unwrap_err().to_string();
        assert_eq!(
            e,
            "job j2 completed with failures: 1 of 2 mailboxes failed (see the results above)"
        );
    }
}
