//! Ingest: the initial synchronization of a seeded mailbox by serversync (SQLite and
//! PostgreSQL), fetchmail, mbsync, and a raw single-connection `UID FETCH 1:* BODY.PEEK[]`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::procstat::{Usage, Watched};
use crate::setup::{Serve, World, wait_until};

/// One row of the ingest table.
#[derive(Debug, Clone)]
pub struct Row {
    pub tool: String,
    pub how: String,
    pub messages: usize,
    pub bytes: u64,
    pub usage: Usage,
    /// serversync over EWS (from the Exchange test double), not IMAP.
    pub ews: bool,
    /// serversync over Microsoft Graph (from the Graph test double), not IMAP.
    pub graph: bool,
    /// A remark shown under the table.
    pub note: Option<String>,
}

/// Where the mailbox is and who reads it.
pub struct Source<'a> {
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub ca: &'a Path,
    pub messages: usize,
    pub bytes: u64,
}

/// A TLS stream to 127.0.0.1:`port` trusting only `ca`.
pub async fn tls_connect(
    port: u16,
    ca: &Path,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    tls_wrap(tcp, ca).await
}

/// TLS over `tcp` to the server named `localhost`, trusting only `ca`.
pub async fn tls_wrap(
    tcp: tokio::net::TcpStream,
    ca: &Path,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost")?.to_owned();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// The ceiling: one TLS connection, `UID FETCH 1:* BODY.PEEK[]`, bytes counted and dropped.
/// Returns (messages, literal bytes).
pub async fn raw_fetch(port: u16, user: &str, password: &str, ca: &Path) -> Result<(usize, u64)> {
    let tls = tls_connect(port, ca).await?;
    let mut s = BufReader::with_capacity(256 * 1024, tls);
    let mut line = Vec::new();
    s.read_until(b'\n', &mut line).await?;
    ensure!(
        line.starts_with(b"* OK"),
        "greeting: {}",
        String::from_utf8_lossy(&line)
    );
    let mut messages = 0usize;
    let mut bytes = 0u64;
    let mut sink = vec![0u8; 256 * 1024];
    for (tag, cmd) in [
        ("a", format!("LOGIN \"{user}\" \"{password}\"")),
        ("b", "SELECT INBOX".to_owned()),
        ("c", "UID FETCH 1:* BODY.PEEK[]".to_owned()),
        ("d", "LOGOUT".to_owned()),
    ] {
        s.get_mut()
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .await?;
        s.get_mut().flush().await?;
        loop {
            line.clear();
            if s.read_until(b'\n', &mut line).await? == 0 {
                bail!("the server closed the connection during {cmd}");
            }
            // A literal: `{N}\r\n` then N bytes, then the rest of the response line.
            while let Some(n) = literal_len(&line) {
                messages += 1;
                bytes += n;
                let mut left = n;
                while left > 0 {
                    let k = (left as usize).min(sink.len());
                    s.read_exact(&mut sink[..k]).await?;
                    left -= k as u64;
                }
                line.clear();
                s.read_until(b'\n', &mut line).await?;
            }
            if line.starts_with(format!("{tag} ").as_bytes()) {
                ensure!(
                    line.starts_with(format!("{tag} OK").as_bytes()),
                    "{cmd}: {}",
                    String::from_utf8_lossy(&line)
                );
                break;
            }
        }
    }
    Ok((messages, bytes))
}

fn literal_len(line: &[u8]) -> Option<u64> {
    let l = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&l[open + 1..]).ok()?.parse().ok()
}

/// The raw fetch as a child process (this binary's `raw-fetch`), measured like the peers.
pub fn raw_row(src: &Source) -> Result<Row> {
    let me = std::env::current_exe()?;
    let (status, usage) = Watched::spawn(
        Command::new(me)
            .args([
                "raw-fetch",
                "--port",
                &src.port.to_string(),
                "--user",
                src.user,
            ])
            .arg("--ca")
            .arg(src.ca)
            .env("BENCH_PASSWORD", src.password)
            .stdout(Stdio::piped()),
    )?
    .wait(Duration::from_secs(600))?;
    ensure!(status.success(), "raw fetch failed: {status}");
    Ok(Row {
        tool: "raw TLS fetch (ceiling)".into(),
        how: "one connection, `UID FETCH 1:* BODY.PEEK[]`, bytes discarded".into(),
        messages: src.messages,
        bytes: src.bytes,
        usage,
        ews: false,
        graph: false,
        note: None,
    })
}

/// fetchmail's run control file.
pub fn fetchmail_rc(port: u16, user: &str, pw: &str, ca: &str, out: &str) -> String {
    format!(
        "set no bouncemail\nset no syslog\n\
         poll 127.0.0.1 with proto IMAP port {port}\n  \
         user \"{user}\" there with password \"{pw}\" is \"root\" here\n  \
         options keep fetchall ssl sslcertck sslcertfile \"{ca}\" sslcommonname \"localhost\"\n  \
         bsmtp \"{out}\"\n"
    )
}

/// The command line fetchmail runs with (in `dir`).
pub const FETCHMAIL_CMD: &str = "fetchmail --fetchmailrc DIR/fetchmailrc --idfile DIR/fetchids --pidfile DIR/fetchmail.pid --nodetach --silent";

/// mbsync's configuration.
pub fn mbsync_rc(port: u16, user: &str, pw: &str, ca: &str, mail: &str) -> String {
    format!(
        "IMAPAccount bench\nHost localhost\nPort {port}\nUser {user}\nPass {pw}\n\
         SSLType IMAPS\nCertificateFile {ca}\n\n\
         IMAPStore remote\nAccount bench\n\n\
         MaildirStore local\nPath {mail}/\nInbox {mail}/INBOX\n\n\
         Channel bench\nFar :remote:\nNear :local:\nPatterns INBOX\nSync Pull\nCreate Near\n\
         SyncState *\n"
    )
}

/// The command line mbsync runs with.
pub const MBSYNC_CMD: &str = "mbsync -c DIR/mbsyncrc -q bench";

/// fetchmail from empty state (no UID list), all messages kept on the server, delivered to
/// a BSMTP file.
pub fn fetchmail_row(src: &Source, dir: &Path) -> Result<Row> {
    std::fs::create_dir_all(dir)?;
    let out = dir.join("fetchmail.bsmtp");
    let rc = dir.join("fetchmailrc");
    std::fs::write(
        &rc,
        fetchmail_rc(
            src.port,
            src.user,
            src.password,
            &src.ca.display().to_string(),
            &out.display().to_string(),
        ),
    )?;
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (status, usage) = Watched::spawn(
        Command::new("fetchmail")
            .arg("--fetchmailrc")
            .arg(&rc)
            .arg("--idfile")
            .arg(dir.join("fetchids"))
            .arg("--pidfile")
            .arg(dir.join("fetchmail.pid"))
            .args(["--nodetach", "--silent"])
            .env("HOME", dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("fetchmail.log"))?),
    )?
    .wait(Duration::from_secs(1800))?;
    ensure!(
        status.success(),
        "fetchmail failed: {status} (see {})",
        dir.join("fetchmail.log").display()
    );
    let text = std::fs::read(&out)?;
    let got = text
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"MAIL FROM:"))
        .count();
    ensure!(
        got == src.messages,
        "fetchmail fetched {got} of {} messages",
        src.messages
    );
    Ok(Row {
        tool: "fetchmail".into(),
        how: "IMAP over TLS, `keep fetchall`, to a BSMTP file".into(),
        messages: got,
        bytes: src.bytes,
        usage,
        ews: false,
        graph: false,
        note: None,
    })
}

/// mbsync (isync) from empty state: the Inbox pulled into a local Maildir.
pub fn mbsync_row(src: &Source, dir: &Path) -> Result<Row> {
    std::fs::create_dir_all(dir.join("mail"))?;
    let rc = dir.join("mbsyncrc");
    std::fs::write(
        &rc,
        mbsync_rc(
            src.port,
            src.user,
            src.password,
            &src.ca.display().to_string(),
            &dir.join("mail").display().to_string(),
        ),
    )?;
    let (status, usage) = Watched::spawn(
        Command::new("mbsync")
            .arg("-c")
            .arg(&rc)
            .args(["-q", "bench"])
            .env("HOME", dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mbsync.log"))?),
    )?
    .wait(Duration::from_secs(1800))?;
    ensure!(
        status.success(),
        "mbsync failed: {status} (see {})",
        dir.join("mbsync.log").display()
    );
    let got = crate::mailgen::maildir_count(&dir.join("mail/INBOX"));
    ensure!(
        got == src.messages,
        "mbsync stored {got} of {} messages",
        src.messages
    );
    Ok(Row {
        tool: "mbsync (isync)".into(),
        how: "IMAP over TLS, `Sync Pull` into a Maildir (fsync on)".into(),
        messages: got,
        bytes: src.bytes,
        usage,
        ews: false,
        graph: false,
        note: None,
    })
}

/// serversync from empty state: `serve` on a fresh store with one enabled mailbox; timed
/// from the process start until every message is stored and tracked as an email activity.
pub async fn serversync_row(
    bin: &Path,
    src: &Source<'_>,
    dir: &Path,
    url: &str,
    backend: &str,
) -> Result<Row> {
    serversync_row_with_contacts(bin, src, dir, url, backend, 0).await
}

/// Contacts in the organization of the "resolution at scale" rows.
pub const CONTACTS: usize = 100_000;

/// Like [`serversync_row`], with `contacts` contacts in the organization before `serve`
/// starts (seeded directly in the store, not timed): the first 150 have the address of every
/// other one of the generated messages' 300 senders, the rest addresses no message uses.
pub async fn serversync_row_with_contacts(
    bin: &Path,
    src: &Source<'_>,
    dir: &Path,
    url: &str,
    backend: &str,
    contacts: usize,
) -> Result<Row> {
    std::fs::create_dir_all(dir)?;
    let mut world = World::new(url).await?;
    if contacts > 0 {
        let t = Instant::now();
        seed_contacts(&world.store, world.org.id, world.admin.id, contacts).await?;
        // The seeding's WAL (tens of MB) into the database file now, not by `serve` on the
        // clock: contacts written long before the mail arrives are in the file by then.
        world.reopen_store().await?;
        eprintln!("bench: seeded {contacts} contacts in {:?}", t.elapsed());
    }
    let profile = world.profile(src.port, None).await?;
    let mailbox = world
        .mailbox(&profile, src.user, src.password, true, false)
        .await?;
    let serve = Serve::start(bin, dir, &world, src.ca).await?;
    let started = serve.proc.started;
    let n = src.messages as i64;
    // When the last message was stored, to tell intake's time from the tracker's tail.
    let all_stored = std::sync::Mutex::new(None);
    wait_until(
        Duration::from_secs(1800),
        Duration::from_millis(50),
        "serversync ingest",
        || async {
            let (stored, tracked) = world.progress(mailbox).await?;
            if stored >= n {
                all_stored
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| started.elapsed());
            }
            Ok(stored >= n && tracked)
        },
    )
    .await?;
    let wall = started.elapsed();
    if let Some(t) = *all_stored.lock().unwrap() {
        eprintln!("bench: every message stored after {t:.2?}, stored and tracked after {wall:.2?}");
    }
    let usage = serve.proc.stop(wall)?;
    let (stored, _) = world.progress(mailbox).await?;
    ensure!(stored == n, "serversync stored {stored} of {n} messages");
    world.store.close().await;
    Ok(Row {
        tool: "serversync".into(),
        how: format!(
            "IMAP over TLS → parsed, parties resolved, stored and tracked as activities in {backend}{}",
            if contacts > 0 {
                format!(", {} contacts in the organization", thousands(contacts))
            } else {
                String::new()
            }
        ),
        messages: src.messages,
        bytes: src.bytes,
        usage,
        ews: false,
        graph: false,
        note: None,
    })
}

/// `100000` as `100,000`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` contacts of `owner` in `org`, written a thousand to a transaction (each with its
/// address-index row and change-feed entry, as any insert): the first 150 have the address of
/// every other generated sender (`sender0`, `sender2`, …), the others their own.
pub async fn seed_contacts(
    store: &serversync_store::Store,
    org: serversync_model::OrgId,
    owner: serversync_model::UserId,
    n: usize,
) -> Result<()> {
    use serversync_model::crm::Contact;
    let now = chrono::Utc::now();
    let mut writes = Vec::with_capacity(1000);
    for i in 0..n {
        let email = if i < crate::mailgen::SENDERS / 2 {
            crate::mailgen::sender(2 * i).1
        } else {
            format!("customer{i}@clients{}.test", i % 97)
        };
        let c = Contact {
            id: serversync_model::ContactId::new(),
            org_id: org,
            full_name: format!("Customer {i}"),
            emails: vec![email],
            account_id: None,
            company: None,
            job_title: None,
            phones: Vec::new(),
            owner_id: owner,
            created_at: now,
        };
        writes.push(serversync_store::EntityWrite::insert(&c)?);
        if writes.len() == 1000 || i + 1 == n {
            store.write_all_audited(&writes, Vec::new()).await?;
            writes.clear();
        }
    }
    Ok(())
}

/// The note under the ingest table comparing serversync with `contacts` contacts in the
/// organization to serversync with none, on the same store in the same run.
pub fn contacts_note(empty: &Row, full: &Row, backend: &str) -> String {
    let rate = |r: &Row| r.messages as f64 / r.usage.wall.as_secs_f64();
    format!(
        "Resolution at scale on {backend}: with {} contacts in the organization serversync \
         ingests {:.0} messages/s, {:.2}× its {:.0} messages/s with an empty organization \
         ({:+.1} %).",
        thousands(CONTACTS),
        rate(full),
        rate(full) / rate(empty),
        rate(empty),
        (rate(full) / rate(empty) - 1.0) * 100.0
    )
}

/// Warms Dovecot's index and the page cache so that no tool pays for the first read.
pub async fn warm_up(src: &Source<'_>) -> Result<Duration> {
    let t = Instant::now();
    let (n, _) = raw_fetch(src.port, src.user, src.password, src.ca).await?;
    ensure!(
        n == src.messages,
        "the warm-up fetch saw {n} of {} messages",
        src.messages
    );
    Ok(t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::literal_len;

    #[test]
    fn finds_literals() {
        assert_eq!(literal_len(b"* 1 FETCH (UID 1 BODY[] {123}\r\n"), Some(123));
        assert_eq!(literal_len(b"* 1 FETCH (UID 1)\r\n"), None);
        assert_eq!(literal_len(b"c OK done\r\n"), None);
    }
}
