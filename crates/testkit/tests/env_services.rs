//! The environment's other services and the private-instance launchers.
//! Run through `scripts/test.sh`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use serversync_testkit::{Dovecot, TestEnv};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test]
async fn pg_database_is_fresh_and_dropped_with_its_guard() -> Result<()> {
    let env = TestEnv::from_env();
    let db = env.pg_database().await?;
    let name = db.name().to_string();
    let mut conn = sqlx::PgConnection::connect(db.url()).await?;
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(current, name);
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&mut conn)
        .await?;
    // Dropped even while a connection is still open (DROP DATABASE … WITH (FORCE)).
    drop(db);
    let mut admin = sqlx::PgConnection::connect(env.pg_admin_url()).await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(left, 0, "database {name} still exists");
    drop(conn);
    Ok(())
}

async fn http_status(port: u16, request: String) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .context("HTTP read timed out")??;
    Ok(response.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn radicale_authenticates_the_test_users() -> Result<()> {
    let env = TestEnv::from_env();
    let port = env.radicale.port;
    for (password, expected) in [(env.password.as_str(), " 207 "), ("wrong", " 401 ")] {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", env.users[0]));
        let status = http_status(
            port,
            format!(
                "PROPFIND / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\n\
                 Depth: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await?;
        ensure!(status.contains(expected), "PROPFIND: {status}");
    }
    ensure!(env.radicale_url().ends_with(&format!(":{port}/")));
    Ok(())
}

async fn imap_greeting_and_login(port: u16, user: &str, password: &str) -> Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    ensure!(line.starts_with("* OK"), "greeting: {line}");
    stream
        .get_mut()
        .write_all(format!("a1 LOGIN \"{user}\" \"{password}\"\r\n").as_bytes())
        .await?;
    loop {
        line.clear();
        ensure!(stream.read_line(&mut line).await? > 0, "connection closed");
        if line.starts_with("a1 ") {
            return Ok(line.trim_end().to_string());
        }
    }
}

#[tokio::test]
async fn private_dovecot_survives_a_restart() -> Result<()> {
    // Private instance, independent of the shared environment.
    let dir = tempfile::Builder::new()
        .prefix("serversync-private-")
        .tempdir_in("/tmp")?;
    let mut dovecot = Dovecot::start(dir.path())?;
    let port = dovecot.info().imap_port;
    let user = serversync_testkit::USERS[0];
    let password = serversync_testkit::TEST_PASSWORD;
    let answer = imap_greeting_and_login(port, user, password).await?;
    ensure!(answer.starts_with("a1 OK"), "login: {answer}");

    dovecot.stop()?;
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "port {port} still open after stop"
    );
    dovecot.restart()?;
    ensure!(dovecot.info().imap_port == port, "restart changed the port");
    let answer = imap_greeting_and_login(port, user, password).await?;
    ensure!(answer.starts_with("a1 OK"), "login after restart: {answer}");

    dovecot.kill();
    dovecot.restart()?;
    let answer = imap_greeting_and_login(port, user, password).await?;
    ensure!(
        answer.starts_with("a1 OK"),
        "login after crash + restart: {answer}"
    );
    drop(dovecot);
    Ok(())
}
