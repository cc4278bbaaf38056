//! The fault proxy against a tiny local server: a line "big" is answered with 100,000 bytes,
//! anything else is echoed. Needs none of the test servers.

use serversync_testkit::{Fault, FaultProxy};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const BIG: usize = 100_000;
/// Every read in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if line == "big" {
                        vec![b'x'; BIG]
                    } else {
                        format!("{line}\n").into_bytes()
                    };
                    if w.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `line` and reads until `want` bytes or the end of the stream.
async fn ask(s: &mut TcpStream, line: &str, want: usize) -> std::io::Result<Vec<u8>> {
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.len() < want {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .expect("the proxy answers or closes within the bound")?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

async fn connect(p: &FaultProxy) -> TcpStream {
    TcpStream::connect(p.addr()).await.unwrap()
}

#[tokio::test]
async fn passes_and_counts() {
    let p = FaultProxy::start(server().await).await.unwrap();
    let mut s = connect(&p).await;
    assert_eq!(ask(&mut s, "hello", 6).await.unwrap(), b"hello\n");
    assert_eq!(ask(&mut s, "big", BIG).await.unwrap().len(), BIG);
    p.set(Fault::Delay(Duration::from_millis(5)));
    assert_eq!(ask(&mut s, "slow", 5).await.unwrap(), b"slow\n");
    let st = p.stats();
    assert_eq!(st.accepted, 1);
    assert_eq!(st.to_server, 6 + 4 + 5);
    assert_eq!(st.to_client, (6 + BIG + 5) as u64);
    assert_eq!(st.faulted, 0);
}

#[tokio::test]
async fn cuts_after_n_bytes_once() {
    let p = FaultProxy::start(server().await).await.unwrap();
    let mut s = connect(&p).await;
    assert_eq!(ask(&mut s, "hi", 3).await.unwrap(), b"hi\n");
    p.set(Fault::CutAfter(10_000));
    let got = ask(&mut s, "big", BIG).await.unwrap_or_default();
    assert_eq!(got.len(), 10_000, "exactly the allowed bytes, then the end");
    assert_eq!(p.fault(), Fault::Pass, "one cut per set");
    assert_eq!(p.stats().cuts, 1);
    let mut again = connect(&p).await;
    assert_eq!(ask(&mut again, "big", BIG).await.unwrap().len(), BIG);
}

#[tokio::test]
async fn drops_resets_and_refuses_then_recovers() {
    let p = FaultProxy::start(server().await).await.unwrap();

    p.set(Fault::Drop);
    let mut s = connect(&p).await;
    let got = ask(&mut s, "x", 2).await.unwrap_or_default();
    assert!(got.is_empty(), "closed before a byte: {got:?}");

    p.set(Fault::Reset);
    let mut s = connect(&p).await;
    let r = ask(&mut s, "x", 2).await;
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)),
        "reset: {r:?}"
    );

    p.set(Fault::Refuse);
    // The listener goes away asynchronously: bounded wait for the refusal.
    let mut refused = false;
    for _ in 0..200 {
        match TcpStream::connect(p.addr()).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "nothing listens while refusing");

    p.set(Fault::Pass);
    let mut ok = None;
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(p.addr()).await {
            ok = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = ok.expect("listening again on the same port");
    assert_eq!(ask(&mut s, "back", 5).await.unwrap(), b"back\n");
    assert!(p.stats().faulted >= 2, "{:?}", p.stats());
}

#[tokio::test]
async fn kills_live_connections() {
    let p = FaultProxy::start(server().await).await.unwrap();
    let mut a = connect(&p).await;
    let mut b = connect(&p).await;
    assert_eq!(ask(&mut a, "a", 2).await.unwrap(), b"a\n");
    assert_eq!(ask(&mut b, "b", 2).await.unwrap(), b"b\n");
    p.kill_connections();
    for s in [&mut a, &mut b] {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap();
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "reset: {r:?}"
        );
    }
    assert_eq!(p.stats().faulted, 2);
    let mut c = connect(&p).await;
    assert_eq!(ask(&mut c, "c", 2).await.unwrap(), b"c\n");
}
