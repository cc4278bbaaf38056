//! The HTTP client of `serversync admin`: one organization's API under `/api/v1/orgs/{org}`,
//! bearer-token authentication, problem+json errors turned into one line, paging followed.

use super::Connection;
use crate::config::Config;
use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Items per page when following a list: the API's maximum, so few requests are needed.
const PAGE: &str = "1000";

/// An API token. Its `Debug` never shows the value, so it cannot leak into a log line.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(********)")
    }
}

/// Never fails, so a mistyped token is not echoed in a command-line parsing error; it is
/// checked by [`Token::checked`].
impl FromStr for Token {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Token(s.to_owned()))
    }
}

impl Token {
    /// The token, trimmed, or an error naming where it came from (never the value).
    fn checked(self, source: &str) -> Result<Token> {
        let t = self.0.trim();
        if t.is_empty() {
            bail!(
                "the API token from {source} is empty: create one with `serversync admin token create --user EMAIL`"
            );
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "the API token from {source} has spaces or control characters in it: copy it again (it is one word such as ss_…)"
            );
        }
        Ok(Token(t.to_owned()))
    }

    fn from_file(path: &Path) -> Result<Token> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API token file {}", path.display()))?;
        Token(text).checked(&format!("the file {}", path.display()))
    }

    /// From the flags, then the environment, then the configuration: --token, --token-file,
    /// SERVERSYNC_TOKEN, SERVERSYNC_TOKEN_FILE, admin.token_file.
    fn resolve(conn: &Connection, config_token_file: Option<&Path>) -> Result<Option<Token>> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Ok(if let Some(t) = &conn.token {
            Some(t.clone().checked("--token")?)
        } else if let Some(f) = &conn.token_file {
            Some(Token::from_file(f)?)
        } else if let Some(t) = env("SERVERSYNC_TOKEN") {
            Some(Token(t).checked("SERVERSYNC_TOKEN")?)
        } else if let Some(f) = env("SERVERSYNC_TOKEN_FILE") {
            Some(Token::from_file(Path::new(&f))?)
        } else if let Some(f) = config_token_file {
            Some(Token::from_file(f)?)
        } else {
            None
        })
    }
}

/// The API of one organization on one server.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    org: String,
    token: Option<Token>,
}

/// The URL of a server listening on `listen` as seen from this machine: a wildcard address
/// (0.0.0.0, ::) is reached through loopback.
pub fn url_for_listen(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

impl Client {
    pub fn new(cfg: &Config, conn: &Connection) -> Result<Client> {
        let raw = match &conn.url {
            Some(u) if !u.trim().is_empty() => u.trim().to_owned(),
            _ => match &cfg.admin.url {
                Some(u) if !u.trim().is_empty() => u.trim().to_owned(),
                _ => url_for_listen(cfg.listen_addr()?),
            },
        };
        let base = Url::parse(&raw).map_err(|e| {
            anyhow!("--url {raw:?} is not a URL ({e}): use e.g. http://127.0.0.1:8080")
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("--url {raw:?} must be an http:// or https:// URL such as http://127.0.0.1:8080");
        }
        let token = Token::resolve(conn, cfg.admin.token_file.as_deref())?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("serversync-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            base,
            org: conn.org.clone(),
            token,
        })
    }

    pub fn org(&self) -> &str {
        &self.org
    }

    /// `/api/v1/<segments>` on the server, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    /// `/api/v1/orgs/{org}/<segments>`.
    fn org_url(&self, segments: &[&str]) -> Url {
        let mut all = vec!["orgs", self.org.as_str()];
        all.extend_from_slice(segments);
        self.url(&all)
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value> {
        self.send(Method::GET, self.org_url(segments), query, None)
            .await
    }

    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value> {
        self.send(Method::POST, self.org_url(segments), &[], Some(body))
            .await
    }

    pub async fn patch(&self, segments: &[&str], body: &Value) -> Result<Value> {
        self.send(Method::PATCH, self.org_url(segments), &[], Some(body))
            .await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value> {
        self.send(Method::DELETE, self.org_url(segments), &[], None)
            .await
    }

    /// `GET /api/v1/orgs` (not scoped to one organization).
    pub async fn get_orgs(&self) -> Result<Value> {
        self.send(Method::GET, self.url(&["orgs"]), &[], None).await
    }

    /// `POST /api/v1/orgs`.
    pub async fn post_orgs(&self, body: &Value) -> Result<Value> {
        self.send(Method::POST, self.url(&["orgs"]), &[], Some(body))
            .await
    }

    /// Every item of a paged list (`{items, next}`), following `next` to the end.
    pub async fn list(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        // Bounded: a server that kept answering with a `next` would otherwise loop forever.
        for _ in 0..10_000 {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("limit", PAGE.into()));
            if let Some(a) = &after {
                q.push(("after", a.clone()));
            }
            let page = self.get(segments, &q).await?;
            match page.get("items") {
                Some(Value::Array(a)) => items.extend(a.iter().cloned()),
                _ => bail!(
                    "the server answered {} with no `items` list: is --url a serversync server of the same version?",
                    self.org_url(segments)
                ),
            }
            match page.get("next").and_then(Value::as_str) {
                Some(n) if Some(n) != after.as_deref() => after = Some(n.to_owned()),
                _ => return Ok(items),
            }
        }
        bail!("the list at {} did not end", self.org_url(segments))
    }

    /// `GET` of something that is not JSON (an attachment): the bytes.
    pub async fn get_bytes(&self, segments: &[&str]) -> Result<Vec<u8>> {
        let url = self.org_url(segments);
        Ok(self.send_raw(Method::GET, url, &[], None).await?.1)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, bytes) = self
            .send_raw(method.clone(), url.clone(), query, body)
            .await?;
        if bytes.is_empty() || status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            anyhow!(
                "{method} {} answered HTTP {status} with something that is not JSON: is --url a serversync server?",
                url.path()
            )
        })
    }

    /// Sends a request; a success's status and body, or the problem as an error.
    async fn send_raw(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let Some(token) = &self.token else {
            bail!(
                "no API token: set SERVERSYNC_TOKEN (or --token-file FILE); create one with \
                 `serversync admin token create --user EMAIL` (the first one is in the file \
                 <data_dir>/first-admin-token written by the first `serversync serve`)"
            );
        };
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(&token.0);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            return Ok((status, bytes.to_vec()));
        }
        Err(problem(&method, &url, status, &bytes))
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        // The innermost cause says what happened ("Connection refused (os error 111)").
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let what = if e.is_timeout() {
            "no answer in time".to_owned()
        } else {
            cause.to_string()
        };
        anyhow!(
            "cannot reach serversync at {}: {what} — is `serversync serve` running? set --url / SERVERSYNC_URL",
            self.base.as_str().trim_end_matches('/')
        )
    }
}

/// One line from an error response: the problem's detail, code and field, or the status and
/// the start of the body when it is not a problem document.
fn problem(method: &Method, url: &Url, status: StatusCode, body: &[u8]) -> anyhow::Error {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let text = |k: &str| {
        doc.as_ref()
            .and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    match (text("detail"), text("code")) {
        (Some(detail), Some(code)) => {
            let mut detail = one_line(&detail);
            // Validation details end with their code already: say it once.
            if let Some(d) = detail.strip_suffix(&format!(" ({code})")) {
                detail = d.to_owned();
            }
            if code == "not_found" && detail.starts_with("route ") {
                detail.push_str(&format!(
                    " at {}: check --url (the server's base URL, such as http://127.0.0.1:8080)",
                    url.path()
                ));
            } else if code == "not_found" && detail.starts_with("organization ") {
                detail.push_str(": check --org / SERVERSYNC_ORG (a name or id from `serversync admin orgs list`)");
            }
            match text("field") {
                Some(field) => anyhow!("{detail} (code {code}, field {field})"),
                None => anyhow!("{detail} (code {code})"),
            }
        }
        _ => {
            let snippet: String = one_line(&String::from_utf8_lossy(body))
                .chars()
                .take(200)
                .collect();
            let hint = if status == StatusCode::NOT_FOUND {
                ": is --url a serversync server of the same version?"
            } else {
                ""
            };
            if snippet.is_empty() {
                anyhow!("{method} {} answered HTTP {status}{hint}", url.path())
            } else {
                anyhow!(
                    "{method} {} answered HTTP {status}: {snippet}{hint}",
                    url.path()
                )
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_reached_through_loopback() {
        assert_eq!(
            url_for_listen("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            url_for_listen("[::]:9000".parse().unwrap()),
            "http://[::1]:9000"
        );
        assert_eq!(
            url_for_listen("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80"
        );
    }

    #[test]
    fn problems_become_one_line() {
        let body = br#"{"type":"x","title":"Unprocessable Entity","status":422,"detail":"name: enter\na name (required)","code":"required","field":"name"}"#;
        let url = Url::parse("http://h/api/v1/orgs/default/profiles").unwrap();
        let e = problem(&Method::POST, &url, StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(
            e.to_string(),
            "name: enter a name (code required, field name)"
        );
        let e = problem(
            &Method::GET,
            &url,
            StatusCode::BAD_GATEWAY,
            b"<html>\n bad </html>",
        );
        assert_eq!(
            e.to_string(),
            "GET /api/v1/orgs/default/profiles answered HTTP 502 Bad Gateway: <html> bad </html>"
        );
    }

    #[test]
    fn tokens_do_not_show_in_debug_output() {
        let t: Token = " ss_secret\n".parse().unwrap();
        assert!(!format!("{t:?}").contains("ss_secret"));
        assert_eq!(t.clone().checked("x").unwrap().0, "ss_secret");
        let e = Token("ss_se cret".into())
            .checked("--token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--token") && !e.contains("cret"), "{e}");
        assert!(Token(" ".into()).checked("x").is_err());
    }
}
