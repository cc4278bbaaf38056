//! `serversync`: the one binary. `serve` runs the HTTP server and the engine; the other
//! subcommands administer a database directly (`migrate`, `keys rotate`).

mod admin;
mod config;
mod deliver;
mod keys;
mod serve;

use clap::{Parser, Subcommand};
use config::{Config, LogFormat, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

/// Server-side synchronization of email, appointments, contacts and tasks between CRM
/// organizations and Exchange, Exchange Online, Gmail, Yahoo and any IMAP/POP3/SMTP server.
#[derive(Debug, Parser)]
#[command(name = "serversync", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Default: ./serversync.toml when it exists.
    #[arg(
        long,
        short = 'c',
        env = "SERVERSYNC_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH (default: <data-dir>/serversync.db) or postgres://…
    /// [env: SERVERSYNC_DATABASE_URL or DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Directory for the SQLite database and the master key file. [env: SERVERSYNC_DATA_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log format. [env: SERVERSYNC_LOG_FORMAT; filter: SERVERSYNC_LOG]
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (health, readiness, metrics, API) and the synchronization engine
    /// until SIGINT or SIGTERM. Applies pending database migrations first.
    Serve {
        /// Address to listen on, such as 127.0.0.1:8080. [env: SERVERSYNC_LISTEN]
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<String>,
        /// Also serve LMTP for the Email Router on this address, such as 127.0.0.1:2424
        /// (off by default). [env: SERVERSYNC_LMTP_LISTEN]
        #[arg(long, value_name = "IP:PORT")]
        lmtp_listen: Option<String>,
    },
    /// Apply pending database migrations and check the master key, then exit.
    Migrate,
    /// Administer serversync: profiles, email settings, mailboxes, approval, test and enable,
    /// alerts, jobs, audit log. Talks to a running server's API (URL and token from flags, env
    /// or config); `admin token create` works on the database directly.
    Admin(admin::AdminArgs),
    /// Email Router intake: store the message on standard input for the mailbox with this
    /// address (whose incoming delivery method is email_router), through the same pipeline as
    /// synchronized mail, in the organization the address's domain is assigned to
    /// (`admin domains assign`). Delivering the same message twice keeps it once.
    Deliver {
        /// The mailbox's email address.
        #[arg(long, value_name = "ADDRESS")]
        mailbox: String,
        /// Organization name: delivery is refused unless it holds the address's domain.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
    },
    /// Manage the master key that encrypts stored credentials.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a new master key and re-encrypt every stored secret under it, in one
    /// transaction. With a key file, the file is replaced (the old key is kept as
    /// <file>.previous); with SERVERSYNC_MASTER_KEY, the new key is written to --out and you
    /// set the variable to it afterwards. Stop `serve` processes first.
    Rotate {
        /// Where to write the new key when the current one comes from SERVERSYNC_MASTER_KEY.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// glibc's malloc gives every thread that allocates an arena of its own, up to eight per core,
/// and keeps what each arena freed: the parse threads of an initial synchronization (each
/// holding whole messages for a moment) left 20 MB of freed memory resident that way. Two
/// arenas are shared by every thread (each keeps its own small cache of freed blocks).
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let (listen, lmtp_listen) = match &cli.command {
        Command::Serve {
            listen,
            lmtp_listen,
        } => (listen.clone(), lmtp_listen.clone()),
        _ => (None, None),
    };
    let flags = Overrides {
        listen,
        lmtp_listen,
        database_url: cli.database_url.clone(),
        data_dir: cli.data_dir.clone(),
        log_format: cli.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }),
    };
    let env = |name: &str| std::env::var(name).ok();
    let result = Config::load(cli.config.as_deref(), &env, &flags).and_then(|cfg| {
        init_logging(&cfg)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            match cli.command {
                Command::Serve { .. } => serve::run(cfg).await,
                Command::Migrate => serve::migrate(cfg).await,
                Command::Deliver { mailbox, org } => deliver::run(cfg, mailbox, org).await,
                Command::Admin(args) => admin::run(cfg, args).await,
                Command::Keys {
                    command: KeysCommand::Rotate { out },
                } => keys::rotate(cfg, out).await,
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: the chain of causes joined with ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("serversync: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.log.level).map_err(|e| {
        anyhow::anyhow!(
            "log level {:?} is not valid ({e}): use e.g. info or serversync_engine=debug,info",
            cfg.log.level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let r = match cfg.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    r.map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}
