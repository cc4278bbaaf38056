//! Outgoing: 1,000 email activities sent by serversync through Postfix's submission port,
//! against a raw SMTP submission loop on one connection (STARTTLS + AUTH).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
use serversync_engine::Admin;
use serversync_model::auth::Caller;
use serversync_model::crm::{EmailActivity, EmailStatus, NewEmail, Recipient};
use serversync_model::org::Privilege;
use serversync_store::{Col, Filter};

use crate::mailgen::maildir_count;
use crate::procstat::{Usage, Watched};
use crate::setup::{Serve, World, wait_until};

pub struct Row {
    pub tool: String,
    pub how: String,
    pub emails: usize,
    /// Of the median round.
    pub usage: Usage,
    /// Every round's seconds, in the order run.
    pub rounds: Vec<f64>,
}

/// Rounds of the outgoing rows: the raw loop, serversync without and with the Sent copy, in
/// turn, then again. The machine's pace drifts over a run by more than the differences
/// measured; each row is reported by its median round.
pub const ROUNDS: usize = 3;

/// The recipient of `row` in `round`: every row delivers into an empty Inbox. Dovecot's
/// delivery costs more as the Inbox grows (it reads the whole maildir's file list each
/// time), which, with one shared recipient, charged each row for the rows before it.
pub fn sink(row: usize, round: usize) -> String {
    format!("sink-{row}-{round}@example.test")
}

/// Every [`sink`].
pub fn sinks() -> impl Iterator<Item = String> {
    (0..3).flat_map(|row| (0..ROUNDS).map(move |round| sink(row, round)))
}

/// The round of median seconds, carrying every round's seconds.
pub fn median(mut rounds: Vec<Row>) -> Row {
    let seconds: Vec<f64> = rounds.iter().map(|r| r.usage.wall.as_secs_f64()).collect();
    rounds.sort_by_key(|r| r.usage.wall);
    let mut row = rounds.swap_remove(rounds.len() / 2);
    row.rounds = seconds;
    row
}

fn body(i: usize, count: usize) -> String {
    format!("Email {i} of {count}: a short note from the outgoing benchmark.\r\n")
}

/// Reads one SMTP reply (all its lines); fails unless its code is `want`.
pub(crate) async fn reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, want: &str) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    loop {
        line.clear();
        ensure!(
            r.read_line(&mut line).await? > 0,
            "the server closed the connection"
        );
        ensure!(
            line.starts_with(want),
            "expected {want}, got {}",
            line.trim_end()
        );
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// The raw loop (this binary's `raw-smtp`): one connection with TCP_NODELAY, EHLO,
/// STARTTLS, EHLO, AUTH PLAIN, then MAIL/RCPT/DATA for every email in turn, each command
/// waiting for its reply (no pipelining), like a careful hand-written client.
pub async fn raw_smtp(
    port: u16,
    user: &str,
    password: &str,
    to: &str,
    ca: &Path,
    count: usize,
) -> Result<()> {
    use base64::Engine as _;
    use tokio::io::{AsyncWriteExt, BufReader};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let mut plain = BufReader::new(tcp);
    reply(&mut plain, "220").await?;
    plain
        .get_mut()
        .write_all(b"EHLO bench.localhost\r\n")
        .await?;
    reply(&mut plain, "250").await?;
    plain.get_mut().write_all(b"STARTTLS\r\n").await?;
    reply(&mut plain, "220").await?;
    let tls = crate::ingest::tls_wrap(plain.into_inner(), ca).await?;
    let mut s = BufReader::new(tls);
    s.get_mut().write_all(b"EHLO bench.localhost\r\n").await?;
    s.get_mut().flush().await?;
    reply(&mut s, "250").await?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    s.get_mut()
        .write_all(format!("AUTH PLAIN {token}\r\n").as_bytes())
        .await?;
    s.get_mut().flush().await?;
    reply(&mut s, "235").await?;
    for i in 0..count {
        for (cmd, want) in [
            (format!("MAIL FROM:<{user}>\r\n"), "250"),
            (format!("RCPT TO:<{to}>\r\n"), "250"),
            ("DATA\r\n".to_owned(), "354"),
        ] {
            s.get_mut().write_all(cmd.as_bytes()).await?;
            s.get_mut().flush().await?;
            reply(&mut s, want).await?;
        }
        let message = format!(
            "From: <{user}>\r\nTo: <{to}>\r\nSubject: raw loop #{i}\r\n\
             Message-ID: <raw-{i}-{}@bench.example.test>\r\nDate: {}\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}.\r\n",
            std::process::id(),
            chrono::Utc::now().to_rfc2822(),
            body(i, count)
        );
        s.get_mut().write_all(message.as_bytes()).await?;
        s.get_mut().flush().await?;
        reply(&mut s, "250").await?;
    }
    s.get_mut().write_all(b"QUIT\r\n").await?;
    s.get_mut().flush().await?;
    let _ = reply(&mut s, "221").await;
    Ok(())
}

pub fn raw_row(
    port: u16,
    user: &str,
    password: &str,
    to: &str,
    ca: &Path,
    count: usize,
) -> Result<Row> {
    let me = std::env::current_exe()?;
    let (status, usage) = Watched::spawn(
        Command::new(me)
            .args([
                "raw-smtp",
                "--port",
                &port.to_string(),
                "--user",
                user,
                "--to",
                to,
            ])
            .args(["--count", &count.to_string()])
            .arg("--ca")
            .arg(ca)
            .env("BENCH_PASSWORD", password)
            .stdout(Stdio::null()),
    )?
    .wait(Duration::from_secs(900))?;
    ensure!(status.success(), "the raw SMTP loop failed: {status}");
    Ok(Row {
        tool: "raw SMTP loop".into(),
        how: "one connection (TCP_NODELAY): STARTTLS, AUTH PLAIN, then MAIL/RCPT/DATA per email, each waiting for its reply".into(),
        emails: count,
        usage,
        rounds: Vec::new(),
    })
}

/// Waits until the Inbox `inbox` (a maildir) holds `count` messages: the row before is
/// delivered, and Postfix and Dovecot are quiet again for the next row.
pub async fn delivered(inbox: &Path, count: usize) -> Result<()> {
    wait_until(
        Duration::from_secs(300),
        Duration::from_millis(50),
        "Postfix delivering the row's emails",
        || async { Ok(maildir_count(inbox) >= count) },
    )
    .await
}

/// serversync: `count` emails composed from one mailbox, then `serve` started; timed from
/// the process start until every activity is Sent. `sent_copy`: the maildir of the sender's
/// Sent folder when each email is also saved there (the organization default); then timed
/// until every copy is in it too.
#[allow(clippy::too_many_arguments)]
pub async fn serversync_row(
    bin: &Path,
    dir: &Path,
    url: &str,
    imaps: u16,
    submission: u16,
    user: &str,
    password: &str,
    to: &str,
    ca: &Path,
    count: usize,
    sent_copy: Option<&Path>,
) -> Result<Row> {
    std::fs::create_dir_all(dir)?;
    let mut world = World::new(url).await?;
    if sent_copy.is_none() {
        let mut s = world
            .store
            .fetch::<serversync_model::settings::EmailSettings>(&world.org_id().to_string())
            .await?;
        s.value.save_outgoing_to_sent = false;
        world.store.update(&s.value, Some(s.version)).await?;
        world.settings = s.value;
    }
    let profile = world.profile(imaps, Some(submission)).await?;
    let mailbox = world.mailbox(&profile, user, password, false, true).await?;
    let caller = Caller {
        user: world.admin.clone(),
        privileges: [Privilege::ReadRecords, Privilege::WriteRecords]
            .into_iter()
            .collect(),
    };
    let admin = Admin::new(world.store.clone(), Default::default());
    for i in 0..count {
        admin
            .compose_email(
                &caller,
                world.org_id(),
                NewEmail {
                    from_mailbox: mailbox,
                    to: vec![Recipient::Address(to.into())],
                    cc: Vec::new(),
                    bcc: Vec::new(),
                    subject: format!("serversync send #{i}"),
                    text_body: Some(body(i, count)),
                    html_body: None,
                    attachments: Vec::new(),
                    regarding: None,
                    send_after: None,
                    draft: false,
                    in_reply_to: None,
                },
            )
            .await?;
    }
    let copies_before = sent_copy.map_or(0, maildir_count);
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let started = serve.proc.started;
    let org = world.org_id();
    let store = world.store.clone();
    let sent = || async {
        Ok::<_, anyhow::Error>(
            store
                .count_where::<EmailActivity>(
                    Some(org),
                    &[Filter::Eq(
                        "status",
                        Col::text(serversync_model::wire_name(&EmailStatus::Sent)),
                    )],
                )
                .await? as usize,
        )
    };
    wait_until(
        Duration::from_secs(900),
        // Often: the raw loop's end is the exit of its process, to the millisecond.
        Duration::from_millis(10),
        "serversync sending",
        || async {
            Ok(sent().await? >= count
                && sent_copy.is_none_or(|f| maildir_count(f) >= copies_before + count))
        },
    )
    .await?;
    let wall = started.elapsed();
    let usage = serve.proc.stop(wall)?;
    world.store.close().await;
    Ok(Row {
        tool: "serversync".into(),
        how: if sent_copy.is_some() {
            "email activities from one mailbox over STARTTLS + AUTH, each also saved to the IMAP Sent folder (the default)".into()
        } else {
            "email activities from one mailbox over STARTTLS + AUTH, no Sent copy".into()
        },
        emails: count,
        usage,
        rounds: Vec::new(),
    })
}
