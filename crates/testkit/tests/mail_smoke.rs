//! Smoke test of the real-server environment: submission (STARTTLS + AUTH) → Postfix → LMTP →
//! Dovecot, read back over IMAPS and POP3S with certificate checks on.
//! Run through `scripts/test.sh` (it starts the servers and sets SERVERSYNC_TESTENV).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::TryStreamExt;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serversync_testkit::TestEnv;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

async fn tls_connect(env: &TestEnv, port: u16) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect((env.host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {}:{port}", env.host))?;
    env.tls_connector()
        .connect(env.tls_server_name(), tcp)
        .await
        .context("TLS handshake (certificate checked against the test CA)")
}

/// Submits a message as alice over STARTTLS + AUTH PLAIN.
async fn submit(env: &TestEnv, to: &str, subject: &str, message_id: &str) -> Result<()> {
    let ca = Certificate::from_pem(env.ca_cert_pem()?.as_bytes())?;
    let tls = TlsParameters::builder(env.tls_server_name.clone())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(ca)
        .build_rustls()?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(env.host.as_str())
        .port(env.submission_port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(ALICE.into(), env.password.clone()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let email = Message::builder()
        .from(format!("Alice <{ALICE}>").parse::<Mailbox>()?)
        .to(to.parse::<Mailbox>()?)
        .subject(subject)
        .message_id(Some(message_id.to_string()))
        .body(String::from(
            "Hello Bob,\r\nthis is the serversync smoke test.\r\n",
        ))?;
    mailer.send(email).await.context("SMTP submission")?;
    Ok(())
}

async fn imap_login(
    env: &TestEnv,
    user: &str,
    password: &str,
) -> Result<
    std::result::Result<
        async_imap::Session<TlsStream<TcpStream>>,
        (
            async_imap::error::Error,
            async_imap::Client<TlsStream<TcpStream>>,
        ),
    >,
> {
    let stream = tls_connect(env, env.imaps_port()).await?;
    let mut client = async_imap::Client::new(stream);
    let greeting = client
        .read_response()
        .await?
        .context("IMAP server closed before its greeting")?;
    ensure!(
        matches!(
            greeting.parsed(),
            async_imap::imap_proto::Response::Data {
                status: async_imap::imap_proto::Status::Ok,
                ..
            }
        ),
        "unexpected IMAP greeting: {:?}",
        greeting.parsed()
    );
    Ok(client.login(user, password).await)
}

/// Reads the message back over IMAPS; returns its raw bytes.
async fn imap_fetch(env: &TestEnv, user: &str, subject: &str, message_id: &str) -> Result<Vec<u8>> {
    let mut session = imap_login(env, user, &env.password)
        .await?
        .map_err(|(e, _)| e)
        .context("IMAP LOGIN")?;
    session.select("INBOX").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let uid = loop {
        let found = session
            .uid_search(format!("HEADER Message-ID \"{message_id}\""))
            .await?;
        if let Some(uid) = found.into_iter().next() {
            break uid;
        }
        if Instant::now() > deadline {
            bail!(
                "message {message_id} did not arrive in {user}'s INBOX within 30 s; see {} and {}",
                env.postfix.log.display(),
                env.dovecot.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fetches: Vec<_> = session
        .uid_fetch(uid.to_string(), "(UID FLAGS BODY.PEEK[])")
        .await?
        .try_collect()
        .await?;
    let fetch = fetches
        .iter()
        .find(|f| f.uid == Some(uid))
        .context("no FETCH response for the message")?;
    let raw = fetch
        .body()
        .context("no BODY[] in the FETCH response")?
        .to_vec();
    let text = String::from_utf8_lossy(&raw);
    ensure!(
        text.contains(&format!("Message-ID: {message_id}")),
        "Message-ID missing:\n{text}"
    );
    ensure!(
        text.contains(&format!("Subject: {subject}")),
        "Subject missing:\n{text}"
    );
    ensure!(
        !fetch.flags().any(|f| f == async_imap::types::Flag::Seen),
        "\\Seen set by BODY.PEEK[]"
    );
    // And still unseen afterwards.
    let again: Vec<_> = session
        .uid_fetch(uid.to_string(), "FLAGS")
        .await?
        .try_collect()
        .await?;
    ensure!(
        again
            .iter()
            .all(|f| !f.flags().any(|f| f == async_imap::types::Flag::Seen)),
        "\\Seen set after BODY.PEEK[]"
    );
    session.logout().await?;
    Ok(raw)
}

/// A minimal POP3 client over POP3S, enough for the smoke test.
struct Pop3 {
    stream: BufReader<TlsStream<TcpStream>>,
}

impl Pop3 {
    async fn connect(env: &TestEnv) -> Result<Pop3> {
        let mut pop = Pop3 {
            stream: BufReader::new(tls_connect(env, env.pop3s_port()).await?),
        };
        let greeting = pop.read_line().await?;
        ensure!(greeting.starts_with("+OK"), "POP3 greeting: {greeting}");
        Ok(pop)
    }

    async fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read_line(&mut line))
            .await
            .context("POP3 read timed out")??;
        ensure!(n > 0, "POP3 server closed the connection");
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Sends a command, returns the status line (`+OK …` or `-ERR …`).
    async fn command(&mut self, line: &str) -> Result<String> {
        let stream = self.stream.get_mut();
        stream.write_all(format!("{line}\r\n").as_bytes()).await?;
        stream.flush().await?;
        self.read_line().await
    }

    /// Sends a command that must succeed.
    async fn ok(&mut self, line: &str) -> Result<String> {
        let status = self.command(line).await?;
        let shown = if line.starts_with("PASS") {
            "PASS ***"
        } else {
            line
        };
        ensure!(status.starts_with("+OK"), "POP3 {shown}: {status}");
        Ok(status)
    }

    /// Reads a multi-line response body (after its +OK), dot-unstuffed.
    async fn multiline(&mut self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line == "." {
                return Ok(lines);
            }
            lines.push(line.strip_prefix('.').map(str::to_string).unwrap_or(line));
        }
    }
}

async fn pop3_check(env: &TestEnv, user: &str, subject: &str, message_id: &str) -> Result<()> {
    let mut pop = Pop3::connect(env).await?;
    pop.ok(&format!("USER {user}")).await?;
    pop.ok(&format!("PASS {}", env.password)).await?;
    let stat = pop.ok("STAT").await?;
    let count: usize = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("bad STAT answer: {stat}"))?;
    ensure!(count >= 1, "POP3 STAT shows an empty maildrop: {stat}");
    pop.ok("UIDL").await?;
    let uidl = pop.multiline().await?;
    ensure!(
        uidl.len() == count,
        "UIDL lists {} of {count} messages",
        uidl.len()
    );
    ensure!(
        uidl.iter().all(|l| l.split_whitespace().count() == 2),
        "malformed UIDL lines: {uidl:?}"
    );
    // Newest first: normally only our message is retrieved.
    let mut found = false;
    for n in (1..=count).rev() {
        pop.ok(&format!("RETR {n}")).await?;
        let message = pop.multiline().await?.join("\n");
        if message.contains(&format!("Message-ID: {message_id}")) {
            ensure!(
                message.contains(&format!("Subject: {subject}")),
                "Subject missing"
            );
            found = true;
            break;
        }
    }
    ensure!(found, "message {message_id} not in {user}'s POP3 maildrop");
    pop.ok("QUIT").await?;
    Ok(())
}

#[tokio::test]
async fn submission_delivers_to_imap_and_pop3() -> Result<()> {
    let env = TestEnv::from_env();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let message_id = format!("<smoke-{token}@example.test>");
    let subject = format!("serversync smoke {token}");

    submit(env, BOB, &subject, &message_id).await?;
    let raw = imap_fetch(env, BOB, &subject, &message_id).await?;
    ensure!(
        String::from_utf8_lossy(&raw).contains("this is the serversync smoke test"),
        "body missing"
    );
    pop3_check(env, BOB, &subject, &message_id).await?;
    Ok(())
}

#[tokio::test]
async fn wrong_password_is_refused_quickly() -> Result<()> {
    let env = TestEnv::from_env();
    let started = Instant::now();
    match imap_login(env, BOB, "not-the-password").await? {
        Ok(_) => bail!("IMAP LOGIN with a wrong password succeeded"),
        Err((async_imap::error::Error::No(_), _)) => {}
        Err((e, _)) => bail!("IMAP LOGIN failed the wrong way: {e:?}"),
    }
    let elapsed = started.elapsed();
    ensure!(
        elapsed < Duration::from_millis(1900),
        "failed IMAP login took {elapsed:?}: the test Dovecot should answer auth failures at once"
    );

    let mut pop = Pop3::connect(env).await?;
    pop.ok(&format!("USER {BOB}")).await?;
    let status = pop.command("PASS not-the-password").await?;
    ensure!(
        status.starts_with("-ERR"),
        "POP3 PASS with a wrong password: {status}"
    );

    // The right password still works afterwards.
    let mut session = imap_login(env, BOB, &env.password)
        .await?
        .map_err(|(e, _)| e)
        .context("IMAP LOGIN with the right password")?;
    session.logout().await?;
    Ok(())
}
