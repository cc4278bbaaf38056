//! The benchmark's mail: deterministic messages of realistic shape (plain and HTML bodies,
//! a share with attachments, a few hundred senders) written straight into a Dovecot Maildir.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;

/// A small deterministic PRNG (xorshift64*), so every run seeds the same mail.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "order",
    "invoice",
    "meeting",
    "quarter",
    "renewal",
    "support",
    "customer",
    "contract",
    "delivery",
    "schedule",
    "proposal",
    "budget",
    "review",
    "account",
    "service",
    "request",
    "thanks",
    "please",
    "attached",
    "update",
    "follow-up",
    "pricing",
    "the",
    "and",
    "for",
    "with",
    "we",
    "you",
    "our",
    "next",
    "week",
    "team",
    "project",
    "status",
    "ticket",
    "release",
];

/// Senders: `count` distinct addresses at a handful of domains.
pub fn sender(i: usize) -> (String, String) {
    let domains = [
        "contoso.test",
        "fabrikam.test",
        "adatum.test",
        "litware.test",
    ];
    (
        format!("Sender {i}"),
        format!("sender{i}@{}", domains[i % domains.len()]),
    )
}

pub const SENDERS: usize = 300;

fn words(rng: &mut Rng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 80);
    let mut col = 0;
    while out.len() < bytes {
        let w = WORDS[rng.range(0, WORDS.len() - 1)];
        out.push_str(w);
        col += w.len() + 1;
        if col > 72 {
            out.push_str("\r\n");
            col = 0;
        } else {
            out.push(' ');
        }
    }
    out.push_str("\r\n");
    out
}

/// Message `i` of a seeded set addressed to `to`: about 20 KB on average; one in ten carries
/// a PDF-like attachment of 40–80 KB.
pub fn message(seed: u64, i: usize, to: &str, tag: &str) -> Vec<u8> {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1));
    let (name, from) = sender(rng.range(0, SENDERS - 1));
    let len = rng.range(2_000, 26_000);
    let text = words(&mut rng, len);
    let subject = format!(
        "{tag} {i}: {} {}",
        WORDS[rng.range(0, WORDS.len() - 1)],
        WORDS[rng.range(0, WORDS.len() - 1)]
    );
    let day = 1 + i % 28;
    let boundary = format!("=_b{i}_{}", rng.next() % 1_000_000);
    let mut m = format!(
        "Message-ID: <{tag}-{i}@bench.example.test>\r\n\
         Date: Mon, {day} Nov 2026 09:{:02}:{:02} +0000\r\n\
         From: {name} <{from}>\r\n\
         To: {to}\r\n\
         Subject: {subject}\r\n\
         MIME-Version: 1.0\r\n",
        i / 60 % 60,
        i % 60
    );
    let html = format!(
        "<html><body><p>{}</p></body></html>\r\n",
        &text[..text.len().min(1500)]
    );
    if i % 10 == 3 {
        let mut bytes = vec![0u8; rng.range(40_000, 80_000)];
        for b in bytes.iter_mut() {
            *b = rng.next() as u8;
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\
             --{boundary}\r\nContent-Type: application/pdf; name=\"report-{i}.pdf\"\r\n\
             Content-Disposition: attachment; filename=\"report-{i}.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--{boundary}--\r\n",
            lines.join("\r\n")
        ));
    } else {
        m.push_str(&format!(
            "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\
             --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\
             --{boundary}--\r\n"
        ));
    }
    m.into_bytes()
}

/// Writes `count` messages into `maildir` (its `cur/`, unseen) owned by `uid:gid`; returns
/// the total bytes written.
pub fn seed_maildir(
    maildir: &Path,
    uid: u32,
    gid: u32,
    count: usize,
    to: &str,
    tag: &str,
) -> Result<u64> {
    for sub in ["", "cur", "new", "tmp"] {
        let d = maildir.join(sub);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        chown(&d, Some(uid), Some(gid))?;
    }
    let mut total = 0u64;
    for i in 0..count {
        let raw = message(7, i, to, tag);
        total += raw.len() as u64;
        let name = format!("1790000000.M{i}P1.bench,S={}:2,", raw.len());
        let path = maildir.join("cur").join(name);
        std::fs::write(&path, &raw).with_context(|| format!("writing {}", path.display()))?;
        chown(&path, Some(uid), Some(gid))?;
    }
    // Parent directories of the Maildir (the user's home) must belong to the mail user too.
    let mut p = maildir.parent();
    while let Some(dir) = p {
        if dir.ends_with("mail") {
            break;
        }
        chown(dir, Some(uid), Some(gid))?;
        p = dir.parent();
    }
    Ok(total)
}

/// The messages in a maildir folder (`cur` and `new`; none when it does not exist yet).
pub fn maildir_count(folder: &Path) -> usize {
    ["cur", "new"]
        .iter()
        .filter_map(|d| std::fs::read_dir(folder.join(d)).ok())
        .map(|d| d.count())
        .sum()
}
