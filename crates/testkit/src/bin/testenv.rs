//! `testenv up|down|env --dir DIR`: the real-server test environment of serversync.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: testenv up|down|env --dir DIR\n\
  up    start Dovecot, Postfix, Radicale and PostgreSQL under DIR; write DIR/env.json, DIR/env.sh\n\
  down  stop what `up` started in DIR (safe to repeat)\n\
  env   print DIR/env.sh (export lines)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, dir) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(msg) => {
            eprintln!("testenv: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testenv: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command.as_str() {
            "up" => {
                let env = serversync_testkit::up(&dir).await?;
                eprintln!(
                    "testenv: up in {} (IMAP {}, IMAPS {}, POP3 {}, POP3S {}, SMTP {}, \
                     submission {}, Radicale {}, PostgreSQL {}{})",
                    env.dir.display(),
                    env.imap_port(),
                    env.imaps_port(),
                    env.pop3_port(),
                    env.pop3s_port(),
                    env.smtp_port(),
                    env.submission_port(),
                    env.radicale_url(),
                    env.pg_admin_url(),
                    if env.postgres.owned {
                        ", throwaway cluster"
                    } else {
                        ""
                    },
                );
                println!("{}", env.dir.join("env.sh").display());
                Ok(())
            }
            "down" => {
                serversync_testkit::down(&dir).await?;
                eprintln!("testenv: down in {}", dir.display());
                Ok(())
            }
            "env" => {
                let env = serversync_testkit::TestEnv::load(&dir.join("env.json"))?;
                print!("{}", env.env_sh());
                Ok(())
            }
            other => anyhow::bail!("unknown command `{other}`"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testenv {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<(String, PathBuf), String> {
    let mut command = None;
    let mut dir = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => dir = Some(it.next().ok_or("--dir needs a value")?.clone()),
            s if s.starts_with("--dir=") => dir = Some(s["--dir=".len()..].to_string()),
            "-h" | "--help" => return Err("help".into()),
            s if command.is_none() && !s.starts_with('-') => command = Some(s.to_string()),
            s => return Err(format!("unexpected argument `{s}`")),
        }
    }
    let command = command.ok_or("missing command")?;
    let dir = dir.ok_or("missing --dir DIR")?;
    Ok((command, PathBuf::from(dir)))
}
