//! The NTLMv2 client (`serversync_connectors::ntlm`) against an independent acceptor:
//! pyspnego's pure-Python NTLM server (`tests/ntlm_acceptor.py`), which checks the NTLMv2
//! response against the password, the MIC, and the TLS channel binding it computes itself
//! from the certificate with Python's `cryptography` package.
//!
//! Needs `python3` with pyspnego (`scripts/install-deps.sh`). Every wait on the acceptor is
//! bounded, and the acceptor is killed when a test ends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serversync_connectors::Secret;
use serversync_connectors::ntlm::{
    ChannelBinding, NtlmIdentity, authenticate_message, negotiate_message,
};

const PASSWORD: &str = "Sync-Pa55word!";
/// A password and (below) a user name beyond ASCII: UTF-16 and the upper-casing of NTOWFv2.
const UNICODE_PASSWORD: &str = "Pässwörd-€-密码";
const WORKSTATION: &str = "SERVERSYNC01";
/// How long the acceptor may take to answer one message (Python start-up included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn cert(name: &str) -> (PathBuf, Vec<u8>) {
    let path = data(&format!("tests/data/ntlm/{name}.der"));
    let der = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, der)
}

/// One run of the acceptor script; killed on drop.
struct Acceptor {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Acceptor {
    /// Starts the acceptor requiring the channel binding of `cert` (or none).
    fn start(cert: Option<&Path>) -> Acceptor {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("ntlm-users");
        std::fs::write(
            &users,
            format!(
                "CONTOSO:svc-sync:{PASSWORD}\n:svc-sync@contoso.com:{PASSWORD}\n\
                 CONTOSO:jürgen.müller:{UNICODE_PASSWORD}\n"
            ),
        )
        .unwrap();
        let mut command = Command::new("python3");
        command
            .arg(data("tests/ntlm_acceptor.py"))
            .env("NTLM_USER_FILE", &users)
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(cert) = cert {
            command.arg("--cert").arg(cert);
        }
        let mut child = command
            .spawn()
            .expect("python3 runs (scripts/install-deps.sh installs it with pyspnego)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Acceptor {
            stdin: child.stdin.take(),
            child,
            lines,
            _dir: dir,
        }
    }

    /// Sends one token and waits (bounded) for the answer line.
    fn step(&mut self, token: &[u8]) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", B64.encode(token)).unwrap();
        stdin.flush().unwrap();
        self.lines.recv_timeout(ANSWER_TIMEOUT).unwrap_or_else(|e| {
            panic!("the NTLM acceptor did not answer within {ANSWER_TIMEOUT:?}: {e}")
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three legs against an acceptor requiring the binding of `acceptor_cert` (or none),
/// the client sending `client_binding`: the acceptor's final line.
fn handshake(
    username: &str,
    password: &str,
    acceptor_cert: Option<&str>,
    client_binding: Option<&ChannelBinding>,
) -> String {
    let path = acceptor_cert.map(|name| cert(name).0);
    let mut acceptor = Acceptor::start(path.as_deref());
    let challenge = acceptor.step(&negotiate_message(WORKSTATION));
    assert!(
        !challenge.starts_with("ERR"),
        "negotiate refused: {challenge}"
    );
    let challenge = B64.decode(challenge.trim()).expect("a base64 challenge");
    let id = NtlmIdentity::parse(username, Secret::new(password));
    let authenticate = authenticate_message(&id, &challenge, client_binding, WORKSTATION)
        .expect("pyspnego's challenge is answered");
    acceptor.step(&authenticate)
}

fn binding(name: &str) -> ChannelBinding {
    ChannelBinding::tls_server_end_point(&cert(name).1)
}

#[test]
fn right_password_with_matching_channel_binding_signs_in() {
    let answer = handshake(
        "CONTOSO\\svc-sync",
        PASSWORD,
        Some("rsa-sha256"),
        Some(&binding("rsa-sha256")),
    );
    assert_eq!(answer, "OK CONTOSO\\svc-sync");
}

#[test]
fn channel_binding_of_sha384_and_sha512_certificates_matches_pythons() {
    for name in ["ecdsa-sha384", "rsa-pss-sha512", "rsa-sha1"] {
        let answer = handshake(
            "CONTOSO\\svc-sync",
            PASSWORD,
            Some(name),
            Some(&binding(name)),
        );
        assert_eq!(answer, "OK CONTOSO\\svc-sync", "{name}");
    }
}

#[test]
fn upn_user_signs_in() {
    let answer = handshake(
        "svc-sync@contoso.com",
        PASSWORD,
        Some("rsa-sha256"),
        Some(&binding("rsa-sha256")),
    );
    assert_eq!(answer, "OK svc-sync@contoso.com");
}

#[test]
fn non_ascii_user_and_password_sign_in() {
    let answer = handshake(
        "CONTOSO\\jürgen.müller",
        UNICODE_PASSWORD,
        Some("rsa-sha256"),
        Some(&binding("rsa-sha256")),
    );
    assert_eq!(answer, "OK CONTOSO\\jürgen.müller");
}

#[test]
fn acceptor_without_bindings_accepts_a_client_sending_them() {
    let answer = handshake(
        "CONTOSO\\svc-sync",
        PASSWORD,
        None,
        Some(&binding("rsa-sha256")),
    );
    assert_eq!(answer, "OK CONTOSO\\svc-sync");
}

#[test]
fn wrong_password_is_refused() {
    let answer = handshake(
        "CONTOSO\\svc-sync",
        "not-the-password",
        Some("rsa-sha256"),
        Some(&binding("rsa-sha256")),
    );
    assert!(answer.starts_with("ERR InvalidTokenError"), "{answer}");
}

#[test]
fn acceptor_requiring_binding_refuses_a_client_without() {
    let answer = handshake("CONTOSO\\svc-sync", PASSWORD, Some("rsa-sha256"), None);
    assert!(answer.starts_with("ERR BadBindingsError"), "{answer}");
}

#[test]
fn binding_of_another_certificate_is_refused() {
    let answer = handshake(
        "CONTOSO\\svc-sync",
        PASSWORD,
        Some("rsa-sha256"),
        Some(&binding("ecdsa-sha384")),
    );
    assert!(answer.starts_with("ERR BadBindingsError"), "{answer}");
}

#[test]
fn tampered_authenticate_message_fails_the_mic() {
    // Flip a flag bit covered only by the MIC (NEGOTIATE_ALWAYS_SIGN): the NTLMv2 response
    // still matches, so only the MIC catches it.
    let path = cert("rsa-sha256").0;
    let mut acceptor = Acceptor::start(Some(&path));
    let challenge = acceptor.step(&negotiate_message(WORKSTATION));
    let challenge = B64.decode(challenge.trim()).unwrap();
    let id = NtlmIdentity::parse("CONTOSO\\svc-sync", Secret::new(PASSWORD));
    let mut authenticate =
        authenticate_message(&id, &challenge, Some(&binding("rsa-sha256")), WORKSTATION).unwrap();
    authenticate[61] ^= 0x80; // flags at 60..64; 0x8000 is ALWAYS_SIGN
    let answer = acceptor.step(&authenticate);
    assert!(answer.starts_with("ERR InvalidTokenError"), "{answer}");
    assert!(answer.contains("MIC"), "{answer}");
}
