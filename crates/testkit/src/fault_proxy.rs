//! A TCP proxy that injects network faults between serversync and a server the test started.
//!
//! ```no_run
//! # async fn demo(dovecot_imap: u16) -> anyhow::Result<()> {
//! use serversync_testkit::fault_proxy::{Fault, FaultProxy};
//! use std::time::Duration;
//! let proxy = FaultProxy::start(([127, 0, 0, 1], dovecot_imap).into()).await?;
//! // point the client at 127.0.0.1:proxy.port() …
//! proxy.set(Fault::CutAfter(50_000)); // the next 50,000 bytes from the server, then close
//! proxy.set(Fault::Delay(Duration::from_millis(20))); // every chunk, both ways
//! proxy.kill_connections(); // RST every live connection now
//! proxy.set(Fault::Refuse); // nothing listens: connecting fails
//! proxy.set(Fault::Pass);
//! println!("{:?}", proxy.stats());
//! # Ok(()) }
//! ```
//!
//! It works at the TCP level, so TLS passes through untouched: a client still verifies the
//! server's certificate by name (only the port differs). It listens on 127.0.0.1 only.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to traffic; switch at any time with [`FaultProxy::set`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Wait this long before forwarding each chunk (both directions).
    Delay(Duration),
    /// New connections are accepted and closed at once (FIN) before a byte is forwarded; a
    /// live connection is closed at its next chunk.
    Drop,
    /// Nothing listens on the port: connecting is refused. Passing again listens on the same
    /// port.
    Refuse,
    /// Forward this many more bytes from the server to the client (on the current or next
    /// connections), then close that connection (FIN both ways) and go back to [`Fault::Pass`].
    /// One cut per `set`.
    CutAfter(u64),
    /// New connections are accepted and reset (RST, `SO_LINGER` 0); a live connection is reset
    /// at its next chunk.
    Reset,
}

/// Counters since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted (including those closed or reset at once by a fault).
    pub accepted: u64,
    /// Connections open now (forwarding).
    pub open: u64,
    /// Connections closed or reset by a fault (at accept, mid-stream, or killed).
    pub faulted: u64,
    /// [`Fault::CutAfter`] cuts that happened.
    pub cuts: u64,
    /// Bytes forwarded client → server.
    pub to_server: u64,
    /// Bytes forwarded server → client.
    pub to_client: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    faulted: AtomicU64,
    cuts: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Fault>,
    /// Bumped by [`FaultProxy::kill_connections`]; every connection watches it.
    kill: watch::Sender<u64>,
    counters: Counters,
}

/// A running proxy on `127.0.0.1:port` forwarding to one upstream address. Stops listening and
/// resets its live connections when dropped.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            mode: watch::channel(Fault::Pass).0,
            kill: watch::channel(0).0,
            counters: Counters::default(),
        });
        let task = tokio::spawn(accept_loop(listener, port, shared.clone()));
        Ok(FaultProxy { port, shared, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Switches the fault mode (applies to live connections at their next chunk).
    pub fn set(&self, fault: Fault) {
        self.shared.mode.send_replace(fault);
    }

    /// The current mode ([`Fault::CutAfter`] counts down and turns into [`Fault::Pass`]).
    pub fn fault(&self) -> Fault {
        *self.shared.mode.borrow()
    }

    /// Resets (RST) every live connection now, whatever the mode.
    pub fn kill_connections(&self) {
        self.shared.kill.send_modify(|g| *g += 1);
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            faulted: c.faulted.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            to_server: c.to_server.load(Ordering::Relaxed),
            to_client: c.to_client.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.kill_connections();
    }
}

async fn accept_loop(mut listener: TcpListener, port: u16, shared: Arc<Shared>) {
    let mut mode = shared.mode.subscribe();
    loop {
        if *mode.borrow_and_update() == Fault::Refuse {
            drop(listener);
            // Listen again once the mode changes away from Refuse.
            loop {
                if mode.changed().await.is_err() {
                    return;
                }
                if *mode.borrow_and_update() != Fault::Refuse {
                    break;
                }
            }
            listener = loop {
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    // The port is briefly unavailable; bounded by the test's own waits.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            continue;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = mode.changed() => continue,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let c = &shared.counters;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        let mode = *shared.mode.borrow();
        match mode {
            Fault::Drop | Fault::Refuse => {
                c.faulted.fetch_add(1, Ordering::Relaxed);
                drop(client);
                continue;
            }
            Fault::Reset => {
                c.faulted.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_zero_linger();
                drop(client);
                continue;
            }
            _ => {}
        }
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// End of stream (the write side was shut down in turn) or an I/O error.
    Eof,
    /// Close both sides now (FIN).
    Close,
    /// Reset both sides now (RST).
    Reset,
}

async fn connection(mut client: TcpStream, shared: Arc<Shared>) {
    let Ok(mut server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let mut kill = shared.kill.subscribe();
    kill.borrow_and_update();
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = pump(&mut cr, &mut sw, false, &shared);
        let down = pump(&mut sr, &mut cw, true, &shared);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            if up_done && down_done {
                break End::Eof;
            }
            tokio::select! {
                e = &mut up, if !up_done => match e {
                    End::Eof => up_done = true,
                    other => break other,
                },
                e = &mut down, if !down_done => match e {
                    End::Eof => down_done = true,
                    other => break other,
                },
                _ = kill.changed() => break End::Reset,
            }
        }
    };
    if end != End::Eof {
        shared.counters.faulted.fetch_add(1, Ordering::Relaxed);
    }
    if end == End::Reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
    drop((client, server));
    shared.counters.open.fetch_sub(1, Ordering::Relaxed);
}

/// Forwards one direction chunk by chunk, applying the current fault to each chunk.
async fn pump(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    to_client: bool,
    shared: &Shared,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
        };
        let mut send = n;
        let mut then = None;
        let mode = *shared.mode.borrow();
        match mode {
            Fault::Pass | Fault::CutAfter(_) => {}
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Drop | Fault::Refuse => return End::Close,
            Fault::Reset => return End::Reset,
        }
        if to_client {
            shared.mode.send_if_modified(|m| match *m {
                Fault::CutAfter(left) if left <= n as u64 => {
                    send = left as usize;
                    then = Some(End::Close);
                    *m = Fault::Pass;
                    true
                }
                Fault::CutAfter(left) => {
                    *m = Fault::CutAfter(left - n as u64);
                    false
                }
                _ => false,
            });
        }
        if send > 0 && to.write_all(&buf[..send]).await.is_err() {
            return End::Eof;
        }
        let counter = if to_client {
            &shared.counters.to_client
        } else {
            &shared.counters.to_server
        };
        counter.fetch_add(send as u64, Ordering::Relaxed);
        if let Some(end) = then {
            shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
            let _ = to.flush().await;
            return end;
        }
    }
}
