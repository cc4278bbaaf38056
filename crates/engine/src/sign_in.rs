//! Password sign-in without tying up the server (issue #14): PBKDF2 runs on tokio's blocking
//! pool, a bounded number at once (the async runtime that runs the API, the engine's leases and
//! LMTP never hashes), with a bounded queue in front; and a throttle per sign-in address and
//! per client address whose wait doubles with each failure beyond a few free ones (the lockout
//! of Amazon Cognito: five failures, then 1 s doubling up to about 15 minutes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Tokens and sign-in.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Lifetime of a new API token unless its request names one; `None`: no expiry.
    pub token_lifetime: Option<chrono::Duration>,
    /// Password hashes computed at once, each on the blocking pool.
    pub hash_concurrency: usize,
    pub throttle: ThrottleConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_lifetime: Some(chrono::Duration::days(90)),
            hash_concurrency: 2,
            throttle: ThrottleConfig::default(),
        }
    }
}

/// When failed sign-ins make the next attempt wait.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures of one sign-in address (organization and email) after which it must wait
    /// before each further attempt.
    pub free_failures_per_address: u32,
    /// Failures from one client address (IPv4, or IPv6 /64) after which it must wait.
    pub free_failures_per_client: u32,
    /// The first wait; each further failure doubles it.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// A key with no failure for this long starts over.
    pub forget_after: Duration,
    /// Keys remembered at most (the oldest are forgotten first).
    pub max_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures_per_address: 5,
            free_failures_per_client: 20,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(900),
            forget_after: Duration::from_secs(12 * 3600),
            max_keys: 100_000,
        }
    }
}

/// A throttled key: the address signed in to, or the client it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Address(String),
    Client(IpAddr),
}

impl Key {
    /// The client's key: its IPv4 address, or the /64 network of an IPv6 address (one host
    /// usually holds a whole /64).
    pub(crate) fn client(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::Client(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Key::Client(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            v4 => Key::Client(v4),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    until: Option<Instant>,
}

/// Failed sign-ins per key, in memory (per process).
#[derive(Debug)]
pub(crate) struct Throttle {
    cfg: ThrottleConfig,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Throttle {
    pub(crate) fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn free(&self, k: &Key) -> u32 {
        match k {
            Key::Address(_) => self.cfg.free_failures_per_address,
            Key::Client(_) => self.cfg.free_failures_per_client,
        }
    }

    /// The wait for a key after `failures` failures, if it must wait: none before the free
    /// failures are used up, then the first delay, doubling with each further failure.
    fn delay(&self, k: &Key, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.free(k).max(1))?;
        let d = self
            .cfg
            .first_delay
            .saturating_mul(1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX));
        Some(d.min(self.cfg.max_delay))
    }

    /// How long any of `keys` must still wait at `now`.
    pub(crate) fn wait(&self, keys: &[Key], now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|k| entries.get(k)?.until)
            .filter_map(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
            .max()
    }

    /// Counts a failure for each key; returns the longest wait it starts.
    pub(crate) fn failed(&self, keys: &[Key], now: Instant) -> Option<Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.cfg.max_keys {
            let forget = self.cfg.forget_after;
            entries.retain(|_, e| now.saturating_duration_since(e.last_failure) < forget);
            while entries.len() >= self.cfg.max_keys {
                let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_failure)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                entries.remove(&oldest);
            }
        }
        let mut longest = None;
        for k in keys {
            let e = entries.entry(k.clone()).or_insert(Entry {
                failures: 0,
                last_failure: now,
                until: None,
            });
            if now.saturating_duration_since(e.last_failure) >= self.cfg.forget_after {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last_failure = now;
            let failures = e.failures;
            let d = self.delay(k, failures);
            e.until = d.map(|d| now + d);
            longest = longest.max(d);
        }
        longest
    }

    /// A successful sign-in clears its address (not its client: one good account must not
    /// buy a client more guesses at others).
    pub(crate) fn succeeded(&self, address: &Key) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(address);
    }
}

/// Runs password hashing off the async runtime: at most `hash_concurrency` at once on the
/// blocking pool, and at most 32 times that many waiting; beyond that a sign-in is refused as
/// busy at once.
#[derive(Debug)]
pub(crate) struct Hasher {
    running: Arc<Semaphore>,
    queue: Arc<Semaphore>,
}

impl Hasher {
    pub(crate) fn new(concurrency: usize) -> Self {
        let n = concurrency.max(1);
        Self {
            running: Arc::new(Semaphore::new(n)),
            queue: Arc::new(Semaphore::new(n * 32)),
        }
    }

    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HasherBusy> {
        let _queued = self
            .queue
            .clone()
            .try_acquire_owned()
            .map_err(|_| HasherBusy)?;
        let _running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HasherBusy)?;
        tokio::task::spawn_blocking(work).await.map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            HasherBusy
        })
    }
}

/// Too many sign-ins are being checked at once (`AdminError::Busy` to the caller).
#[derive(Debug)]
pub(crate) struct HasherBusy;

/// The sign-in state an [`crate::Admin`] shares with its clones.
#[derive(Debug)]
pub(crate) struct SignIn {
    pub(crate) config: AuthConfig,
    pub(crate) throttle: Throttle,
    pub(crate) hasher: Hasher,
}

impl SignIn {
    pub(crate) fn new(config: AuthConfig) -> Self {
        Self {
            throttle: Throttle::new(config.throttle.clone()),
            hasher: Hasher::new(config.hash_concurrency),
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_after_the_free_failures_up_to_the_cap() {
        let t = Throttle::new(ThrottleConfig::default());
        let start = Instant::now();
        let addr = [Key::Address("default/lee@example.test".into())];
        let mut waits = Vec::new();
        let mut now = start;
        for _ in 0..16 {
            waits.push(t.failed(&addr, now).map(|d| d.as_secs()));
            // The next attempt comes once the wait is over.
            now += waits
                .last()
                .unwrap()
                .map_or(Duration::ZERO, Duration::from_secs);
            assert_eq!(t.wait(&addr, now), None);
        }
        assert_eq!(
            waits,
            [
                None,
                None,
                None,
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(32),
                Some(64),
                Some(128),
                Some(256),
                Some(512),
                Some(900),
                Some(900)
            ]
        );
        // While waiting, the key is refused with what is left of the wait.
        let locked_at = now;
        t.failed(&addr, locked_at);
        assert_eq!(
            t.wait(&addr, locked_at + Duration::from_secs(100)),
            Some(Duration::from_secs(800))
        );
        // Success clears the address; twelve quiet hours clear any key.
        t.succeeded(&addr[0]);
        assert_eq!(t.wait(&addr, locked_at), None);
        let ip = [Key::client("192.0.2.1".parse().unwrap())];
        for _ in 0..20 {
            t.failed(&ip, locked_at);
        }
        assert_eq!(t.wait(&ip, locked_at), Some(Duration::from_secs(1)));
        let later = locked_at + Duration::from_secs(12 * 3600);
        assert_eq!(t.failed(&ip, later), None, "starts over");
    }

    #[test]
    fn clients_are_keyed_by_ipv4_address_or_ipv6_network() {
        let k = |s: &str| Key::client(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
    }

    #[test]
    fn the_table_of_keys_is_bounded() {
        let t = Throttle::new(ThrottleConfig {
            max_keys: 3,
            ..Default::default()
        });
        let now = Instant::now();
        for i in 0..10u8 {
            t.failed(
                &[Key::client([192, 0, 2, i].into())],
                now + Duration::from_secs(i.into()),
            );
        }
        let n = t.entries.lock().unwrap().len();
        assert!(n <= 3, "{n}");
    }
}
