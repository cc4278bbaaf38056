//! A scriptable SMTP submission peer for fault tests of outgoing mail.
//!
//! The Postfix of the test environment accepts what it is given; it cannot be told to answer
//! `451` to the next two messages, refuse one recipient, reject the credentials or hang up
//! right after the message data. [`ScriptedSmtp`] can: it runs a small Python program built
//! on aiosmtpd (Debian's `python3-aiosmtpd`, see `scripts/install-deps.sh`) that answers as a
//! [`SmtpScript`] says and records what it saw, so a test can check both what the sender did
//! and what the server got.
//!
//! ```no_run
//! # fn demo(dir: &std::path::Path) -> anyhow::Result<()> {
//! use serversync_testkit::{ScriptedSmtp, SmtpScript};
//! let script = SmtpScript {
//!     username: "sender@example.test".into(),
//!     password: "secret".into(),
//!     data_replies: vec![(451, "4.3.0 Try again later".into())],
//!     ..SmtpScript::default()
//! };
//! let peer = ScriptedSmtp::start(dir, &script)?; // stopped when dropped
//! // ... point the mailbox's SMTP settings at peer.addr(), send, retry ...
//! let replies: Vec<_> = peer.received()?.iter().map(|r| r.reply).collect();
//! assert_eq!(replies, [Some(451), Some(250)]);
//! # Ok(()) }
//! ```
//!
//! The peer speaks plain SMTP (no TLS) on 127.0.0.1 and requires AUTH (PLAIN or LOGIN) before
//! MAIL FROM (`530 5.7.0 Authentication required` otherwise).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::util::{HOST, detach_stdio, find_program, free_ports, tcp_greeting, wait_ready};

/// The Python program (aiosmtpd) behind [`ScriptedSmtp`].
const PROGRAM: &str = include_str!("smtp_peer.py");

/// How the peer answers. Serialized as JSON for the Python program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmtpScript {
    /// AUTH PLAIN and AUTH LOGIN succeed only with this user name ...
    pub username: String,
    /// ... and this password.
    pub password: String,
    /// Every AUTH fails with `535 5.7.8 Authentication credentials invalid`.
    pub reject_auth: bool,
    /// Answers to DATA (after the message data), used up in order by the answered DATA
    /// transactions of all sessions, e.g. `(451, "4.3.0 Try again later")`. Once used up,
    /// DATA is answered `250 2.0.0 OK`.
    pub data_replies: Vec<(u16, String)>,
    /// `(address, code, text)`: RCPT TO that address (compared case-insensitively) is always
    /// answered `code text`. Other recipients get `250 OK`.
    pub rcpt_replies: Vec<(String, u16, String)>,
    /// The first N DATA transactions get no answer: the peer closes the connection right after
    /// the message data arrived (a connection broken after the hand-over). They are recorded
    /// with `reply: None` and do not use up `data_replies`.
    pub drop_after_data: u32,
    /// Announce PIPELINING at EHLO (RFC 2920); the peer reads commands in order either way.
    pub pipelining: bool,
}

/// One message data the peer received (whatever it answered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The MAIL FROM address (without angle brackets).
    pub mail_from: String,
    /// The accepted RCPT TO addresses (refused ones are not listed).
    pub rcpt_tos: Vec<String>,
    /// The message as sent, dot-unstuffed, CRLF line ends, decoded as UTF-8 with replacement
    /// characters.
    pub data: String,
    /// The code the peer answered, `None` when it dropped the connection instead.
    pub reply: Option<u16>,
}

/// One AUTH decision (a line of `auth.jsonl`).
#[derive(Debug, Deserialize)]
struct AuthAttempt {
    success: bool,
}

/// A running scripted SMTP peer on 127.0.0.1. Killed when dropped.
#[derive(Debug)]
pub struct ScriptedSmtp {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl ScriptedSmtp {
    /// Writes the script and the program to `dir` (created if needed), starts the peer on a
    /// free port and waits (up to 10 s) until it greets.
    ///
    /// `dir` also receives `received.jsonl`, `auth.jsonl`, `state.json` (how far the script has
    /// got) and `smtp_peer.log` (the program's output).
    pub fn start(dir: &Path, script: &SmtpScript) -> Result<ScriptedSmtp> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let program = dir.join("smtp_peer.py");
        let script_file = dir.join("script.json");
        let state_file = dir.join("state.json");
        let log = dir.join("smtp_peer.log");
        fs::write(&program, PROGRAM).with_context(|| format!("writing {}", program.display()))?;
        fs::write(&script_file, serde_json::to_vec_pretty(script)?)
            .with_context(|| format!("writing {}", script_file.display()))?;

        let port = free_ports(1)?[0];
        let mut cmd = Command::new(python_with_aiosmtpd()?);
        cmd.arg(&program)
            .arg(&script_file)
            .arg(&state_file)
            .arg(port.to_string());
        detach_stdio(&mut cmd, &log)?;
        let child = cmd
            .spawn()
            .context("starting the scripted SMTP peer (python3)")?;
        // From here on, Drop kills the child if the peer does not come up.
        let mut peer = ScriptedSmtp { dir, port, child };
        wait_ready("scripted SMTP peer", &log, Duration::from_secs(10), || {
            if let Some(status) = peer.child.try_wait()? {
                bail!("exited with {status}");
            }
            tcp_greeting(port, "220 ")
        })?;
        Ok(peer)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// The directory holding the script, the records and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every message data received so far, in order (including the ones answered with an
    /// error and the dropped ones).
    pub fn received(&self) -> Result<Vec<Received>> {
        read_jsonl(&self.dir.join("received.jsonl"))
    }

    /// AUTH attempts so far: `(succeeded, failed)`. Attempts that never reached the credential
    /// check (bad base64, aborted with `*`, unknown mechanism) are not counted.
    pub fn auth_attempts(&self) -> Result<(u32, u32)> {
        let attempts: Vec<AuthAttempt> = read_jsonl(&self.dir.join("auth.jsonl"))?;
        let ok = attempts.iter().filter(|a| a.success).count();
        Ok((u32::try_from(ok)?, u32::try_from(attempts.len() - ok)?))
    }
}

impl Drop for ScriptedSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a JSON-lines file; a missing file is an empty list. A trailing partial line (the
/// program writing it right now) is skipped.
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .with_context(|| format!("parsing {} line {line:?}", path.display()))
        })
        .collect()
}

/// A python3 that can import aiosmtpd: Debian's /usr/bin/python3 first (a python3 earlier in
/// PATH, e.g. pyenv's, does not see Debian's python3-aiosmtpd), then the one in PATH.
fn python_with_aiosmtpd() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/bin/python3")];
    candidates.extend(find_program("python3", &[]));
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import aiosmtpd.controller"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python);
        }
    }
    bail!("no python3 with the aiosmtpd module found (run scripts/install-deps.sh)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::time::timeout;

    const STEP: Duration = Duration::from_secs(10);

    /// A raw SMTP client: sends lines, reads (multi-line) replies, every step bounded.
    struct Client {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl Client {
        /// Connects, reads the greeting and says EHLO.
        async fn connect(peer: &ScriptedSmtp) -> Client {
            let stream = timeout(STEP, TcpStream::connect((HOST, peer.port())))
                .await
                .expect("connect timed out")
                .expect("connect");
            let (read, writer) = stream.into_split();
            let mut client = Client {
                reader: BufReader::new(read),
                writer,
            };
            assert_eq!(client.reply().await.0, 220);
            assert_eq!(client.cmd("EHLO client.test").await.0, 250);
            client
        }

        /// The next reply: code and the last line's text.
        async fn reply(&mut self) -> (u16, String) {
            loop {
                let mut line = String::new();
                let n = timeout(STEP, self.reader.read_line(&mut line))
                    .await
                    .expect("reply timed out")
                    .expect("read");
                assert!(n > 0, "connection closed while waiting for a reply");
                let line = line.trim_end();
                assert!(line.len() >= 4, "short reply line {line:?}");
                if line.as_bytes()[3] == b' ' {
                    return (
                        line[..3].parse().expect("reply code"),
                        line[4..].to_string(),
                    );
                }
            }
        }

        async fn cmd(&mut self, line: &str) -> (u16, String) {
            self.send(line).await;
            self.reply().await
        }

        async fn send(&mut self, line: &str) {
            timeout(
                STEP,
                self.writer.write_all(format!("{line}\r\n").as_bytes()),
            )
            .await
            .expect("write timed out")
            .expect("write");
        }

        async fn auth_plain(&mut self, user: &str, password: &str) -> (u16, String) {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            self.cmd(&format!("AUTH PLAIN {token}")).await
        }

        /// MAIL, RCPT, DATA and the message; returns the answer to the data.
        async fn send_mail(&mut self, from: &str, to: &str, body: &str) -> (u16, String) {
            assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).await.0, 250);
            assert_eq!(self.cmd(&format!("RCPT TO:<{to}>")).await.0, 250);
            assert_eq!(self.cmd("DATA").await.0, 354);
            self.cmd(&format!("Subject: test\r\n\r\n{body}\r\n.")).await
        }
    }

    fn script() -> SmtpScript {
        SmtpScript {
            username: "sender@example.test".into(),
            password: "secret".into(),
            ..SmtpScript::default()
        }
    }

    #[tokio::test]
    async fn scripted_data_replies_then_ok() {
        let dir = tempfile::tempdir().unwrap();
        let peer = ScriptedSmtp::start(
            dir.path(),
            &SmtpScript {
                data_replies: vec![(451, "4.3.0 Try again later".into())],
                ..script()
            },
        )
        .unwrap();
        assert!(peer.addr().ends_with(&format!(":{}", peer.port())));

        let mut c = Client::connect(&peer).await;
        assert_eq!(c.cmd("MAIL FROM:<sender@example.test>").await.0, 530);
        assert_eq!(c.auth_plain("sender@example.test", "secret").await.0, 235);
        let first = c
            .send_mail("sender@example.test", "to@example.test", "one")
            .await;
        assert_eq!(first, (451, "4.3.0 Try again later".to_string()));
        let second = c
            .send_mail("sender@example.test", "to@example.test", "two")
            .await;
        assert_eq!(second.0, 250);
        assert_eq!(c.cmd("QUIT").await.0, 221);

        let received = peer.received().unwrap();
        assert_eq!(received.len(), 2, "{received:?}");
        assert_eq!(received[0].reply, Some(451));
        assert_eq!(received[1].reply, Some(250));
        assert_eq!(received[0].mail_from, "sender@example.test");
        assert_eq!(received[0].rcpt_tos, ["to@example.test"]);
        assert_eq!(received[1].data, "Subject: test\r\n\r\ntwo\r\n");
        assert_eq!(peer.auth_attempts().unwrap(), (1, 0));
    }

    #[tokio::test]
    async fn reject_auth_is_535_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let peer = ScriptedSmtp::start(
            dir.path(),
            &SmtpScript {
                reject_auth: true,
                ..script()
            },
        )
        .unwrap();
        let mut c = Client::connect(&peer).await;
        let reply = c.auth_plain("sender@example.test", "secret").await;
        assert_eq!(
            reply,
            (535, "5.7.8 Authentication credentials invalid".to_string())
        );
        // AUTH LOGIN goes through the same check.
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(c.cmd("AUTH LOGIN").await.0, 334);
        assert_eq!(c.cmd(&b64("sender@example.test")).await.0, 334);
        assert_eq!(c.cmd(&b64("secret")).await.0, 535);
        assert_eq!(c.cmd("MAIL FROM:<sender@example.test>").await.0, 530);
        assert_eq!(peer.auth_attempts().unwrap(), (0, 2));
        assert!(peer.received().unwrap().is_empty());
    }

    #[tokio::test]
    async fn rcpt_reply_refuses_that_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let peer = ScriptedSmtp::start(
            dir.path(),
            &SmtpScript {
                rcpt_replies: vec![("gone@example.test".into(), 550, "5.1.1 No such user".into())],
                ..script()
            },
        )
        .unwrap();
        let mut c = Client::connect(&peer).await;
        assert_eq!(c.auth_plain("sender@example.test", "secret").await.0, 235);
        assert_eq!(c.cmd("MAIL FROM:<sender@example.test>").await.0, 250);
        assert_eq!(
            c.cmd("RCPT TO:<Gone@example.test>").await,
            (550, "5.1.1 No such user".to_string())
        );
        assert_eq!(c.cmd("RCPT TO:<ok@example.test>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        assert_eq!(c.cmd("Subject: x\r\n\r\nbody\r\n.").await.0, 250);
        let received = peer.received().unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].rcpt_tos, ["ok@example.test"]);
    }

    #[tokio::test]
    async fn drop_after_data_closes_without_reply() {
        let dir = tempfile::tempdir().unwrap();
        let peer = ScriptedSmtp::start(
            dir.path(),
            &SmtpScript {
                drop_after_data: 1,
                data_replies: vec![(452, "4.3.1 Full".into())],
                ..script()
            },
        )
        .unwrap();
        let mut c = Client::connect(&peer).await;
        assert_eq!(c.auth_plain("sender@example.test", "secret").await.0, 235);
        assert_eq!(c.cmd("MAIL FROM:<sender@example.test>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<to@example.test>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        c.send("Subject: x\r\n\r\nbody\r\n.").await;
        let mut rest = String::new();
        let n = timeout(STEP, c.reader.read_line(&mut rest))
            .await
            .expect("no close within the timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected the connection closed, got {rest:?}");

        // The next transaction gets the first scripted reply.
        let mut c = Client::connect(&peer).await;
        assert_eq!(c.auth_plain("sender@example.test", "secret").await.0, 235);
        let reply = c
            .send_mail("sender@example.test", "to@example.test", "again")
            .await;
        assert_eq!(reply.0, 452);
        let replies: Vec<_> = peer.received().unwrap().iter().map(|r| r.reply).collect();
        assert_eq!(replies, [None, Some(452)]);
    }
}
