//! Configuration file text → the configuration loader of the `serversync` binary
//! (`crates/cli/src/config.rs`, included here: TOML parsing with the place of an error,
//! environment and flags on top, validation).
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/cli/src/config.rs"]
mod config;

use config::{Config, Overrides};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn assert_one_line(e: &anyhow::Error) {
    let m = format!("{e:#}");
    assert!(!m.contains('\n'), "an error of several lines: {m:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    let cfg = match Config::from_toml(text, file) {
        Ok(c) => c,
        Err(e) => {
            assert_one_line(&e);
            assert!(format!("{e:#}").contains("fuzz.toml"), "{e:#}");
            return;
        }
    };
    let no_env = |_: &str| None;
    match cfg.clone().apply(&no_env, &Overrides::default()) {
        Err(e) => assert_one_line(&e),
        Ok(c) => {
            assert_eq!(c, cfg, "nothing set, yet the configuration changed");
            let listen = c.listen_addr().expect("validated");
            assert_eq!(listen.to_string().parse(), Ok(listen));
            let _ = c.lmtp_addr().expect("validated");
            let lmtp = c.lmtp();
            assert_eq!(lmtp.max_message_bytes >> 20, c.router.lmtp_max_message_mb);
            assert!(lmtp.max_connections >= 1);
            assert!(!c.database_url().is_empty());
            let _ = c.key_file();
        }
    }
    // The environment wins over the file.
    let env = |k: &str| (k == "SERVERSYNC_LISTEN").then(|| "127.0.0.1:1".to_owned());
    match cfg.apply(&env, &Overrides::default()) {
        Ok(c) => assert_eq!(c.server.listen, "127.0.0.1:1"),
        Err(e) => assert_one_line(&e),
    }
});
