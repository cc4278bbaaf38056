//! The shared HTTP client: reqwest with rustls on the same [`TlsTrust`] as the mail
//! connections, connecting only to addresses the [`NetworkPolicy`] allows. OAuth token
//! endpoints ([`crate::oauth`]) and the engine's webhook deliveries use it.
//!
//! Host names are resolved by [`PolicyResolver`], which keeps only the addresses the policy
//! allows, so the connection goes to an address that was checked (no second lookup to
//! rebind). There is no proxy (a proxy would make the policy judge the proxy's address) and
//! no redirect (a redirect could lead anywhere).

use crate::policy::NetworkPolicy;
use crate::tls::TlsTrust;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a client is for, as the words of a refusal: "this installation does not
/// {refused}: {fix}".
#[derive(Debug, Clone, Copy)]
pub struct Purpose {
    /// E.g. "deliver webhooks to loopback, private, link-local or reserved addresses".
    pub refused: &'static str,
    /// E.g. "use a public receiver, or ask the installation's administrator to allow the range
    /// (network.allow_ranges)".
    pub fix: &'static str,
}

/// Requests to OAuth token endpoints.
pub const TOKEN_ENDPOINTS: Purpose = Purpose {
    refused: "request OAuth tokens from loopback, private, link-local or reserved addresses",
    fix: "check the token endpoint URL, or ask the installation's administrator to allow the \
          range (network.allow_ranges)",
};

/// A reqwest client with `trust`'s TLS configuration, the policy-filtering resolver, no
/// proxy, no redirects and `timeout` for a whole request.
pub fn client(
    trust: &TlsTrust,
    policy: Arc<NetworkPolicy>,
    purpose: Purpose,
    user_agent: &str,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured((*trust.client_config()).clone())
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(PolicyResolver { policy, purpose })
        .timeout(timeout)
        .build()
}

/// A lookup at the configured nameserver gives up after this (the request's own timeout
/// bounds it too).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves host names and keeps only the addresses the [`NetworkPolicy`] allows.
pub struct PolicyResolver {
    policy: Arc<NetworkPolicy>,
    purpose: Purpose,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let purpose = self.purpose;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<_> = match policy.nameserver() {
                Some(ns) => crate::dns::addresses(&host, 0, ns, LOOKUP_TIMEOUT)
                    .await
                    .map_err(|e| e.message)?,
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let mut refused = None;
            let allowed: Vec<_> = found
                .into_iter()
                .filter(|a| match policy.refusal(a.ip()) {
                    Some(class) => {
                        refused.get_or_insert((a.ip(), class));
                        false
                    }
                    None => true,
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some((ip, class))) => Err(format!(
                    "{host} resolves to {ip}, {class}, and this installation does not {}: {}",
                    purpose.refused, purpose.fix
                )
                .into()),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The policy's class for a URL whose host is an IP address it refuses (such a host is not
/// resolved, so the resolver never sees it); `None` for host names and allowed addresses.
pub fn refused_ip(policy: &NetworkPolicy, url: &reqwest::Url) -> Option<(IpAddr, &'static str)> {
    let host = url.host_str()?;
    let ip: IpAddr = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()?;
    policy.refusal(ip).map(|class| (ip, class))
}

/// A readable cause for a failed request, with its chain of sources (a request never carries a
/// secret in its URL, so none is in the text).
pub fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = format!("{cause}: {s}");
        src = s.source();
    }
    format!("{what}: {cause}")
}
