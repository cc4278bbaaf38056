//! Writing into a serversync database directly, behind the store's back: for tests that need
//! rows as they would be after some time (timestamps relative to the run), without waiting.

use sqlx::Connection as _;

/// Runs one SQL statement (values written into it; test data only) on the database at `url`
/// (`sqlite://PATH` or `postgres://…`, as given to `Store::open`); how many rows it changed.
pub async fn execute_sql(url: &str, sql: &str) -> anyhow::Result<u64> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    let n = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut c = sqlx::PgConnection::connect(url).await?;
        let n = sqlx::query(sql).execute(&mut c).await?.rows_affected();
        c.close().await?;
        n
    } else {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(std::time::Duration::from_secs(10));
        let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
        let n = sqlx::query(sql).execute(&mut c).await?.rows_affected();
        c.close().await?;
        n
    };
    Ok(n)
}

/// Unix milliseconds `days` days before now (negative: after), for [`execute_sql`].
pub fn days_ago_ms(days: i64) -> i64 {
    (chrono::Utc::now() - chrono::Duration::days(days)).timestamp_millis()
}
