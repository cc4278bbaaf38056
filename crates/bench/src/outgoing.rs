//! Outgoing: 1,000 email activities sent by serversync through Postfix's submission port,
//! against a raw SMTP submission loop on one connection (STARTTLS + AUTH).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serversync_engine::Admin;
use serversync_model::auth::Caller;
use serversync_model::crm::{EmailActivity, EmailStatus, NewEmail, Recipient};
use serversync_model::org::Privilege;

use crate::procstat::{Usage, Watched};
use crate::setup::{Serve, World, wait_until};

pub struct Row {
    pub tool: String,
    pub how: String,
    pub emails: usize,
    pub usage: Usage,
}

fn body(i: usize, count: usize) -> String {
    format!("Email {i} of {count}: a short note from the outgoing benchmark.\r\n")
}

/// The raw loop (this binary's `raw-smtp`): one connection, STARTTLS, AUTH PLAIN, then
/// MAIL/RCPT/DATA for every email in turn.
pub async fn raw_smtp(
    port: u16,
    user: &str,
    password: &str,
    to: &str,
    ca: &Path,
    count: usize,
) -> Result<()> {
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(&std::fs::read(ca)?)?)
        .build_rustls()?;
    let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(user.into(), password.into()))
        .pool_config(PoolConfig::new().max_size(1))
        .build();
    for i in 0..count {
        let m = Message::builder()
            .from(user.parse()?)
            .to(to.parse()?)
            .subject(format!("raw loop #{i}"))
            .body(body(i, count))?;
        smtp.send(m).await?;
    }
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
        how: "one connection: STARTTLS, AUTH PLAIN, then MAIL/RCPT/DATA per email".into(),
        emails: count,
        usage,
    })
}

/// serversync: `count` emails composed from one mailbox, then `serve` started; timed from
/// the process start until every activity is Sent. `sent_copy`: also save each email to the
/// IMAP Sent folder (the organization default).
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
    sent_copy: bool,
) -> Result<Row> {
    std::fs::create_dir_all(dir)?;
    let mut world = World::new(url).await?;
    if !sent_copy {
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
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let started = serve.proc.started;
    let org = world.org_id();
    let store = world.store.clone();
    let sent = || async {
        Ok::<_, anyhow::Error>(
            store
                .list_all::<EmailActivity>(Some(org), &[])
                .await?
                .iter()
                .filter(|a| a.value.status == EmailStatus::Sent)
                .count(),
        )
    };
    wait_until(
        Duration::from_secs(900),
        Duration::from_millis(100),
        "serversync sending",
        || async { Ok(sent().await? >= count) },
    )
    .await?;
    let wall = started.elapsed();
    let usage = serve.proc.stop(wall)?;
    world.store.close().await;
    Ok(Row {
        tool: "serversync".into(),
        how: if sent_copy {
            "email activities from one mailbox over STARTTLS + AUTH, each also saved to the IMAP Sent folder (the default)".into()
        } else {
            "email activities from one mailbox over STARTTLS + AUTH, no Sent copy".into()
        },
        emails: count,
        usage,
    })
}
