//! `serversync-bench`: serversync against its peers on private Dovecot, Postfix and
//! PostgreSQL servers (the test environment's launchers), written to `docs/benchmarks.md`.
//!
//! Run it through `scripts/bench.sh`, which installs the peers and builds in release mode.

mod dav;
mod ews;
mod graph;
mod ingest;
mod latency;
mod mailgen;
mod merge;
mod outgoing;
mod pages;
mod procstat;
mod report;
mod scale;
mod scaleout;
mod setup;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serversync_testkit::{
    Accounts, Dovecot, DovecotOptions, Postfix, Postgres, TEST_PASSWORD, TlsFiles,
};

#[derive(Parser)]
#[command(about = "Benchmarks serversync against fetchmail, mbsync and raw protocol loops")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmarks and write the report.
    Run(RunArgs),
    /// (internal) The raw TLS fetch ceiling; the password comes from BENCH_PASSWORD.
    RawFetch {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        user: String,
        #[arg(long)]
        ca: PathBuf,
    },
    /// (internal) The raw SMTP submission loop; the password comes from BENCH_PASSWORD.
    RawSmtp {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        user: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        ca: PathBuf,
    },
    /// Puts the benchmark sections of a partial run's page (`run --only … --out FROM`) into a
    /// full page (INTO, rewritten in place): same-named sections replaced, new ones added.
    Merge {
        #[arg(long)]
        from: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.md")]
        into: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// The `serversync` binary to measure (a release build).
    #[arg(long)]
    serversync: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Messages seeded for the ingest benchmark.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Messages timed for arrival latency.
    #[arg(long, default_value_t = 500)]
    probes: usize,
    /// Emails sent by the outgoing benchmark.
    #[arg(long, default_value_t = 1_000)]
    emails: usize,
    /// Mailboxes enabled for the scale benchmark.
    #[arg(long, default_value_t = 2_000)]
    mailboxes: usize,
    /// Contacts, and appointments, each, synchronized by the CalDAV/CardDAV benchmark.
    #[arg(long, default_value_t = 10_000)]
    dav_items: usize,
    /// Contacts, and appointments, each, already on the server for the CalDAV/CardDAV
    /// first sync from the server (`dav-down`).
    #[arg(long, default_value_t = 10_000)]
    dav_down_items: usize,
    /// Email activities in the organization for the admin center's pages.
    #[arg(long, default_value_t = 100_000)]
    activities: usize,
    /// Benchmarks to run (all by default): ingest, latency, ews, graph, outgoing, dav,
    /// dav-down, pages, scale, scaleout.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The command line recorded in the report.
    #[arg(long, default_value = "scripts/bench.sh")]
    command: String,
}

const BENCH_USER: &str = "bench@example.test";
const LATENCY_USER: &str = "late@example.test";
const SENDER: &str = "out@example.test";
/// The mailbox of the EWS latency benchmark, in the Exchange test double.
const EWS_LATENCY_USER: &str = "late@localhost";
/// The mailbox of the Graph latency benchmark, in the Graph test double.
const GRAPH_LATENCY_USER: &str = "late@example.test";

fn main() -> Result<()> {
    let cli = Cli::parse();
    // reqwest's TLS needs a process-wide rustls provider; which one cargo's feature
    // unification gives depends on what else is built with the benchmark (built alone, none).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let password = || std::env::var("BENCH_PASSWORD").unwrap_or_else(|_| TEST_PASSWORD.into());
    match cli.command {
        Cmd::RawFetch { port, user, ca } => {
            let (n, bytes) = rt.block_on(ingest::raw_fetch(port, &user, &password(), &ca))?;
            println!("{n} messages, {bytes} bytes");
            Ok(())
        }
        Cmd::RawSmtp {
            port,
            user,
            to,
            count,
            ca,
        } => rt.block_on(outgoing::raw_smtp(
            port,
            &user,
            &password(),
            &to,
            &ca,
            count,
        )),
        Cmd::Merge { from, into } => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let merged = merge::merge(&read(&into)?, &read(&from)?)?;
            write_report(&into, &merged)?;
            eprintln!("bench: merged {} into {}", from.display(), into.display());
            Ok(())
        }
        Cmd::Run(args) => rt.block_on(run(args)),
    }
}

fn wants(args: &RunArgs, what: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o == what)
}

/// Dovecot limits for thousands of IDLE connections: login processes in high-performance
/// mode, and IMAP processes serving up to 100 connections each (a process per connection
/// would be 10,000 processes for the 10,000-mailbox run). `service_count = 0` lets an IMAP
/// process take more than one connection (Dovecot's default, 1, ends it after its first,
/// whatever `client_limit` says); every account has the same system user here, which Dovecot
/// requires for that. Only the scale section's own Dovecot: in an IMAP process serving
/// several connections, Dovecot 2.3 stops telling a connection that re-issues IDLE on a
/// mailbox another connection of the process also idles on (it falls back to checking every
/// 30 s), which turned the arrival-latency figures into 20–30 s. No address-space limit
/// (`vsz_limit = 0`): a login process terminating TLS for a thousand connections outgrows the
/// default 256 MB and is killed with all of them.
fn dovecot_limits(mailboxes: usize) -> String {
    let n = mailboxes + 200;
    format!(
        "\nservice imap-login {{\n  service_count = 0\n  client_limit = {n}\n  process_limit = 8\n  process_min_avail = 8\n  vsz_limit = 0\n}}\n\
         service imap {{\n  service_count = 0\n  client_limit = 100\n  process_limit = {p}\n  vsz_limit = 0\n}}\n\
         service anvil {{\n  client_limit = {c}\n}}\n\
         service stats {{\n  client_limit = {c}\n}}\n\
         service auth {{\n  client_limit = {c}\n}}\n",
        c = 2 * n + 100,
        p = n / 100 + 50
    )
}

/// Dovecot watches each idling mailbox with inotify: one instance per IMAP process (a hundred
/// connections each, see [`dovecot_limits`]) and two watches per mailbox. The kernel's
/// defaults (128 instances per user) stop a few thousand mailboxes short; raised here, for
/// this machine, when they are lower (as root; a warning otherwise).
fn raise_inotify_limits(mailboxes: usize) {
    for (name, wanted) in [
        ("max_user_instances", mailboxes / 50 + 256),
        ("max_user_watches", mailboxes * 4 + 65_536),
    ] {
        let path = format!("/proc/sys/fs/inotify/{name}");
        let now: usize = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if now >= wanted {
            continue;
        }
        match std::fs::write(&path, wanted.to_string()) {
            Ok(()) => eprintln!("bench: fs.inotify.{name} raised from {now} to {wanted}"),
            Err(e) => eprintln!(
                "bench: warning: cannot raise fs.inotify.{name} from {now} to {wanted} ({e}); Dovecot may not watch every idling mailbox"
            ),
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let bin = std::fs::canonicalize(&args.serversync).with_context(|| {
        format!(
            "{} (build it with cargo build --release)",
            args.serversync.display()
        )
    })?;
    let dir = PathBuf::from(format!("/tmp/serversync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tls = TlsFiles::ensure(&dir.join("tls"))?;
    let ca = tls.ca_cert.clone();
    let mut users: Vec<String> = [BENCH_USER, LATENCY_USER, SENDER]
        .iter()
        .map(|s| s.to_string())
        .chain(outgoing::sinks())
        .collect();
    let mail_users = Accounts {
        users: users.clone(),
        queue_mailboxes: Vec::new(),
        password: TEST_PASSWORD.into(),
    };
    if wants(&args, "scaleout") {
        users.extend((0..scaleout::MAILBOXES).map(scaleout::account));
    }
    // The mail servers keep their mail and queues in memory (tmpfs) where there is one: on a
    // file system without a journal (this machine's), ext4 passes over every inode deleted in
    // the last minute or more before it gives out a new one, so Postfix's queue files and
    // Dovecot's deliveries got slower with whatever ran before (up to twice as slow in a row
    // of runs). The tools measured still write to the disk, as they would.
    let shm = Path::new("/dev/shm");
    let servers = if shm.is_dir() {
        shm.join(format!("serversync-bench-{}", std::process::id()))
    } else {
        dir.clone()
    };
    eprintln!(
        "bench: starting Dovecot and Postfix under {}, PostgreSQL under {}",
        servers.display(),
        dir.display()
    );
    let dovecot = Dovecot::start_with(
        &servers.join("dovecot"),
        &DovecotOptions {
            accounts: Accounts {
                users,
                queue_mailboxes: Vec::new(),
                password: TEST_PASSWORD.into(),
            },
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )?;
    let postfix = Postfix::start(&servers.join("postfix"), dovecot.info(), &tls, &mail_users)?;
    let pg = Postgres::find_or_start(&dir.join("pg")).await?;
    let imaps = dovecot.info().imaps_port;
    let mut rep = report::Report::new(&args);
    rep.versions = report::versions(&pg.info().admin_url, &postfix.info().config_dir);

    if wants(&args, "ingest") {
        let info = dovecot.info();
        eprintln!("bench: seeding {} messages", args.messages);
        let bytes = mailgen::seed_maildir(
            &info.maildir(BENCH_USER),
            info.mail_uid,
            info.mail_gid,
            args.messages,
            BENCH_USER,
            "bench",
        )?;
        let src = ingest::Source {
            port: imaps,
            user: BENCH_USER,
            password: TEST_PASSWORD,
            ca: &ca,
            messages: args.messages,
            bytes,
        };
        let warm = ingest::warm_up(&src).await?;
        eprintln!("bench: warm-up fetch (Dovecot indexing) took {warm:?}");
        rep.warm_up = Some(warm);
        eprintln!("bench: raw TLS fetch");
        rep.ingest.push(ingest::raw_row(&src)?);
        eprintln!("bench: serversync on SQLite");
        let sqlite = format!(
            "sqlite://{}",
            dir.join("ingest-sqlite/serversync.db").display()
        );
        std::fs::create_dir_all(dir.join("ingest-sqlite"))?;
        let empty_sqlite =
            ingest::serversync_row(&bin, &src, &dir.join("ingest-sqlite"), &sqlite, "SQLite")
                .await?;
        rep.ingest.push(empty_sqlite.clone());
        eprintln!("bench: serversync on PostgreSQL");
        let pg_url = setup::pg_database(&pg.info().admin_url, "serversync_bench_ingest")?;
        let empty_pg =
            ingest::serversync_row(&bin, &src, &dir.join("ingest-pg"), &pg_url, "PostgreSQL")
                .await?;
        rep.ingest.push(empty_pg.clone());
        // Resolution at scale: the same ingest with 100,000 contacts in the organization.
        for (backend, empty) in [("SQLite", &empty_sqlite), ("PostgreSQL", &empty_pg)] {
            eprintln!(
                "bench: serversync on {backend}, {} contacts in the organization",
                ingest::CONTACTS
            );
            let sub = dir.join(format!("ingest-contacts-{}", backend.to_lowercase()));
            std::fs::create_dir_all(&sub)?;
            let url = match backend {
                "SQLite" => format!("sqlite://{}", sub.join("serversync.db").display()),
                _ => setup::pg_database(&pg.info().admin_url, "serversync_bench_ingest_contacts")?,
            };
            let mut row = ingest::serversync_row_with_contacts(
                &bin,
                &src,
                &sub,
                &url,
                backend,
                ingest::CONTACTS,
            )
            .await?;
            row.note = Some(ingest::contacts_note(empty, &row, backend));
            rep.ingest.push(row);
        }
        eprintln!("bench: mbsync");
        rep.ingest
            .push(ingest::mbsync_row(&src, &dir.join("mbsync"))?);
        eprintln!("bench: fetchmail");
        rep.ingest
            .push(ingest::fetchmail_row(&src, &dir.join("fetchmail"))?);
        rep.avg_message = Some(bytes / args.messages.max(1) as u64);
    }

    if wants(&args, "latency") {
        eprintln!("bench: arrival latency over {} messages", args.probes);
        let url = format!("sqlite://{}", dir.join("latency/serversync.db").display());
        rep.latency = Some(
            latency::run(
                &bin,
                &dir.join("latency"),
                &url,
                imaps,
                postfix.info().smtp_port,
                LATENCY_USER,
                TEST_PASSWORD,
                &ca,
                args.probes,
            )
            .await?,
        );
    }

    if wants(&args, "ews") {
        // The same messages as the IMAP ingest (addressed to the same mailbox), in the Inbox
        // of the in-process Exchange test double.
        let double = ews::double(&tls, &[BENCH_USER]).await?;
        eprintln!(
            "bench: delivering {} messages into the Exchange double",
            args.messages
        );
        let bytes = ews::seed(&double, BENCH_USER, args.messages, "bench");
        if rep.avg_message.is_none() {
            rep.avg_message = Some(bytes / args.messages.max(1) as u64);
        }
        eprintln!("bench: serversync over EWS on SQLite");
        let sqlite = format!(
            "sqlite://{}",
            dir.join("ews-sqlite/serversync.db").display()
        );
        std::fs::create_dir_all(dir.join("ews-sqlite"))?;
        rep.ingest.push(
            ews::ingest_row(
                &bin,
                &double,
                BENCH_USER,
                args.messages,
                bytes,
                &dir.join("ews-sqlite"),
                &sqlite,
                "SQLite",
                &ca,
            )
            .await?,
        );
        eprintln!("bench: serversync over EWS on PostgreSQL");
        let pg_url = setup::pg_database(&pg.info().admin_url, "serversync_bench_ews")?;
        rep.ingest.push(
            ews::ingest_row(
                &bin,
                &double,
                BENCH_USER,
                args.messages,
                bytes,
                &dir.join("ews-pg"),
                &pg_url,
                "PostgreSQL",
                &ca,
            )
            .await?,
        );
        drop(double);
        eprintln!("bench: arrival latency over EWS, {} messages", args.probes);
        let url = format!(
            "sqlite://{}",
            dir.join("ews-latency/serversync.db").display()
        );
        rep.ews_latency = Some(
            ews::latency(
                &bin,
                &dir.join("ews-latency"),
                &url,
                &tls,
                EWS_LATENCY_USER,
                args.probes,
            )
            .await?,
        );
    }

    if wants(&args, "graph") {
        // The same messages as the IMAP ingest, in the Inbox of the in-process Graph double.
        let double = graph::double(&tls, &[BENCH_USER]).await?;
        eprintln!(
            "bench: delivering {} messages into the Graph double",
            args.messages
        );
        let bytes = graph::seed(&double, BENCH_USER, args.messages, "bench");
        if rep.avg_message.is_none() {
            rep.avg_message = Some(bytes / args.messages.max(1) as u64);
        }
        eprintln!("bench: serversync over Graph on SQLite");
        let sqlite = format!(
            "sqlite://{}",
            dir.join("graph-sqlite/serversync.db").display()
        );
        std::fs::create_dir_all(dir.join("graph-sqlite"))?;
        rep.ingest.push(
            graph::ingest_row(
                &bin,
                &double,
                BENCH_USER,
                args.messages,
                bytes,
                &dir.join("graph-sqlite"),
                &sqlite,
                "SQLite",
                &ca,
            )
            .await?,
        );
        eprintln!("bench: serversync over Graph on PostgreSQL");
        let pg_url = setup::pg_database(&pg.info().admin_url, "serversync_bench_graph")?;
        rep.ingest.push(
            graph::ingest_row(
                &bin,
                &double,
                BENCH_USER,
                args.messages,
                bytes,
                &dir.join("graph-pg"),
                &pg_url,
                "PostgreSQL",
                &ca,
            )
            .await?,
        );
        drop(double);
        eprintln!(
            "bench: arrival latency over Graph, {} messages",
            args.probes
        );
        let url = format!(
            "sqlite://{}",
            dir.join("graph-latency/serversync.db").display()
        );
        rep.graph_latency = Some(
            graph::latency(
                &bin,
                &dir.join("graph-latency"),
                &url,
                &tls,
                GRAPH_LATENCY_USER,
                args.probes,
            )
            .await?,
        );
    }

    if wants(&args, "outgoing") {
        let submission = postfix.info().submission_port;
        // The sender's Sent folder, as Dovecot stores it (`maildir:~/Maildir`).
        let sent = dovecot.info().maildir(SENDER).join(".Sent");
        // Rounds of the three rows in turn; each row is reported by its median round.
        let mut rows: [Vec<outgoing::Row>; 3] = Default::default();
        for round in 0..outgoing::ROUNDS {
            eprintln!(
                "bench: outgoing round {}/{}: raw SMTP loop, {} emails",
                round + 1,
                outgoing::ROUNDS,
                args.emails
            );
            rows[0].push(outgoing::raw_row(
                submission,
                SENDER,
                TEST_PASSWORD,
                &outgoing::sink(0, round),
                &ca,
                args.emails,
            )?);
            outgoing::delivered(
                &dovecot.info().maildir(&outgoing::sink(0, round)),
                args.emails,
            )
            .await?;
            for (row, sent_copy) in [(1, None), (2, Some(sent.as_path()))] {
                eprintln!(
                    "bench: outgoing round {}/{}: serversync sending {} emails (Sent copy: {})",
                    round + 1,
                    outgoing::ROUNDS,
                    args.emails,
                    sent_copy.is_some()
                );
                let name = format!(
                    "send{}-{round}",
                    if sent_copy.is_some() { "-copy" } else { "" }
                );
                let url = format!(
                    "sqlite://{}",
                    dir.join(&name).join("serversync.db").display()
                );
                rows[row].push(
                    outgoing::serversync_row(
                        &bin,
                        &dir.join(&name),
                        &url,
                        imaps,
                        submission,
                        SENDER,
                        TEST_PASSWORD,
                        &outgoing::sink(row, round),
                        &ca,
                        args.emails,
                        sent_copy,
                    )
                    .await?,
                );
                outgoing::delivered(
                    &dovecot.info().maildir(&outgoing::sink(row, round)),
                    args.emails,
                )
                .await?;
            }
        }
        rep.outgoing = rows.into_iter().map(outgoing::median).collect();
    }

    if wants(&args, "dav") {
        let n = args.dav_items;
        eprintln!("bench: CalDAV/CardDAV, first sync of {n} contacts and {n} events");
        let radicale = serversync_testkit::radicale::Radicale::start_with(
            &dir.join("radicale"),
            &Accounts {
                users: vec![dav::CRM_USER.into(), dav::VDIR_USER.into()],
                queue_mailboxes: Vec::new(),
                password: TEST_PASSWORD.into(),
            },
        )?;
        let server = dav::Radicale::new(radicale.info().clone(), TEST_PASSWORD)?;
        rep.versions
            .push(("Radicale".into(), dav::Radicale::version()));
        rep.versions
            .push(("vdirsyncer".into(), dav::vdirsyncer_version()));
        let mut bench = dav::DavBench {
            items: n,
            ..Default::default()
        };
        eprintln!("bench: serversync on SQLite");
        let sqlite = format!(
            "sqlite://{}",
            dir.join("dav-sqlite/serversync.db").display()
        );
        let row = dav::serversync_row(
            &bin,
            &dir.join("dav-sqlite"),
            &sqlite,
            "SQLite",
            &server,
            "sqlite",
            imaps,
            &ca,
            n,
        )
        .await?;
        bench.rows.push(row);
        eprintln!("bench: serversync on PostgreSQL");
        let pg_url = setup::pg_database(&pg.info().admin_url, "serversync_bench_dav")?;
        let row = dav::serversync_row(
            &bin,
            &dir.join("dav-pg"),
            &pg_url,
            "PostgreSQL",
            &server,
            "pg",
            imaps,
            &ca,
            n,
        )
        .await?;
        bench.rows.push(row);
        eprintln!("bench: vdirsyncer");
        let (row, (vcf, ics)) =
            dav::vdirsyncer_row(&dir.join("vdirsyncer"), &server, n, "sqlite").await?;
        bench.rows.push(row);
        (bench.vcard_bytes, bench.event_bytes) = (vcf, ics);
        rep.dav = Some(bench);
        drop(radicale);
    }

    if wants(&args, "dav-down") {
        let n = args.dav_down_items;
        eprintln!(
            "bench: CalDAV/CardDAV, first sync of {n} contacts and {n} events from the server"
        );
        let radicale = serversync_testkit::radicale::Radicale::start_with(
            &dir.join("radicale-down"),
            &Accounts {
                users: vec![dav::CRM_USER.into(), dav::VDIR_USER.into()],
                queue_mailboxes: Vec::new(),
                password: TEST_PASSWORD.into(),
            },
        )?;
        let server = dav::Radicale::new(radicale.info().clone(), TEST_PASSWORD)?;
        for (what, version) in [
            ("Radicale", dav::Radicale::version()),
            ("vdirsyncer", dav::vdirsyncer_version()),
        ] {
            if !rep.versions.iter().any(|(k, _)| k == what) {
                rep.versions.push((what.into(), version));
            }
        }
        let mut bench = dav::DavBench {
            items: n,
            ..Default::default()
        };
        eprintln!("bench: serversync on SQLite");
        let sqlite = format!(
            "sqlite://{}",
            dir.join("dav-down-sqlite/serversync.db").display()
        );
        let (row, seeded) = dav::serversync_down_row(
            &bin,
            &dir.join("dav-down-sqlite"),
            &sqlite,
            "SQLite",
            &server,
            "sqlite",
            imaps,
            &ca,
            n,
        )
        .await?;
        bench.rows.push(row);
        (bench.vcard_bytes, bench.event_bytes) = (seeded.vcard_bytes, seeded.event_bytes);
        eprintln!("bench: serversync on PostgreSQL");
        let pg_url = setup::pg_database(&pg.info().admin_url, "serversync_bench_dav_down")?;
        let (row, _) = dav::serversync_down_row(
            &bin,
            &dir.join("dav-down-pg"),
            &pg_url,
            "PostgreSQL",
            &server,
            "pg",
            imaps,
            &ca,
            n,
        )
        .await?;
        bench.rows.push(row);
        eprintln!("bench: vdirsyncer");
        let row =
            dav::vdirsyncer_down_row(&dir.join("vdirsyncer-down"), &server, n, &seeded.org_name)
                .await?;
        bench.rows.push(row);
        rep.dav_down = Some(bench);
        drop(radicale);
    }

    if wants(&args, "pages") {
        let n = args.activities;
        eprintln!("bench: the admin center's pages at {n} email activities");
        let mut bench = pages::PagesBench {
            activities: n,
            ..Default::default()
        };
        let sqlite = format!(
            "sqlite://{}",
            dir.join("pages-sqlite/serversync.db").display()
        );
        bench
            .rows
            .extend(pages::run(&bin, &dir.join("pages-sqlite"), &sqlite, "SQLite", &ca, n).await?);
        let pg_url = setup::pg_database(&pg.info().admin_url, "serversync_bench_pages")?;
        bench
            .rows
            .extend(pages::run(&bin, &dir.join("pages-pg"), &pg_url, "PostgreSQL", &ca, n).await?);
        rep.pages = Some(bench);
    }

    if wants(&args, "scale") {
        eprintln!("bench: {} mailboxes idling", args.mailboxes);
        raise_inotify_limits(args.mailboxes);
        // A Dovecot of its own, with one account per mailbox and the limits for them.
        let scale_dovecot = Dovecot::start_with(
            &dir.join("dovecot-scale"),
            &DovecotOptions {
                accounts: Accounts {
                    users: (0..args.mailboxes).map(scale::account).collect(),
                    queue_mailboxes: Vec::new(),
                    password: TEST_PASSWORD.into(),
                },
                tls: Some(tls.clone()),
                extra_config: dovecot_limits(args.mailboxes),
                ..Default::default()
            },
        )?;
        // Thousands of mailboxes are a server deployment: PostgreSQL (see benchmarks-notes.md).
        let url = setup::pg_database(&pg.info().admin_url, "serversync_bench_scale")?;
        rep.scale = Some(
            scale::run(
                &bin,
                &dir.join("scale"),
                &url,
                scale_dovecot.info().imaps_port,
                TEST_PASSWORD,
                &ca,
                args.mailboxes,
            )
            .await?,
        );
    }

    if wants(&args, "scaleout") {
        // The ingest's messages spread over the scale-out accounts.
        let info = dovecot.info();
        let per = args.messages / scaleout::MAILBOXES;
        let mut bytes = 0;
        for i in 0..scaleout::MAILBOXES {
            let account = scaleout::account(i);
            bytes += mailgen::seed_maildir(
                &info.maildir(&account),
                info.mail_uid,
                info.mail_gid,
                per,
                &account,
                &scaleout::tag(i),
            )?;
        }
        rep.scaleout = Some(
            scaleout::run(
                &bin,
                &dir.join("scaleout"),
                &pg.info().admin_url,
                imaps,
                TEST_PASSWORD,
                &ca,
                per * scaleout::MAILBOXES,
                bytes,
            )
            .await?,
        );
    }

    rep.total = started.elapsed();
    write_report(&args.out, &rep.render())?;
    eprintln!("bench: wrote {} in {:?}", args.out.display(), rep.total);
    drop(postfix);
    drop(dovecot);
    drop(pg);
    if std::env::var_os("SERVERSYNC_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&servers);
    }
    Ok(())
}

fn write_report(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
