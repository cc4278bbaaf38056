//! Autodiscover: the EWS URL of a mailbox from its email address.
//!
//! Candidates in the documented order (MS-OXDSCLI §3.1.5): `https://<domain>` and then
//! `https://autodiscover.<domain>`; at each, the SOAP service (`/autodiscover/autodiscover.svc`,
//! `GetUserSettings`, MS-OXWSADISC) and then the POX one (`/autodiscover/autodiscover.xml`).
//! When both find nothing, the DNS SRV record `_autodiscover._tcp.<domain>` names the host
//! and port to ask the same way (best record first, [`crate::dns::srv`]; at the policy's
//! nameserver, else the system's). An answer that redirects to another address or URL is
//! followed, at most [`MAX_REDIRECTS`] times. Every attempt is kept, with its outcome, for
//! the test report. Not done: the Active Directory service connection point (serversync is
//! not in the domain) and the plain-HTTP redirect probe (MS-OXDSCLI lets a client skip it:
//! it follows an unauthenticated redirect).

use super::xml::{Element, escape};
use super::{EwsClient, EwsSettings};
use crate::probe::StepLog;
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Result};

/// Redirects followed before giving up (MS-OXDSCLI recommends 10).
pub const MAX_REDIRECTS: usize = 10;
/// SRV targets tried, best first (a DNS answer may list many).
pub const MAX_SRV_TARGETS: usize = 4;

/// One URL tried and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub url: String,
    pub outcome: String,
}

/// What Autodiscover found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub ews_url: String,
    pub attempts: Vec<Attempt>,
}

/// Where to look: the HTTPS port (443; tests run servers elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options { port: 443 }
    }
}

enum Found {
    Url(String),
    RedirectAddr(String),
    RedirectUrl(String),
}

/// Finds the EWS URL of `email`, signing in with `settings`' credentials (its URL is
/// ignored).
pub async fn discover(
    email: &str,
    settings: &EwsSettings,
    opts: &ConnectOptions,
    options: Options,
) -> std::result::Result<Discovered, (ConnectError, Vec<Attempt>)> {
    let mut attempts = Vec::new();
    let mut address = email.trim().to_owned();
    let mut queue = candidates(&address, options.port);
    let mut redirects = 0;
    let mut sign_in_refused: Option<ConnectError> = None;
    let mut srv_asked = false;
    loop {
        if queue.is_empty() && !srv_asked {
            srv_asked = true;
            queue = srv_candidates(&address, opts, &mut attempts).await;
        }
        if queue.is_empty() {
            break;
        }
        let url = queue.remove(0);
        let soap = url.ends_with(".svc");
        let outcome = attempt(&url, soap, &address, settings, opts).await;
        match outcome {
            Ok(Found::Url(ews_url)) => {
                attempts.push(Attempt {
                    url,
                    outcome: format!("EWS at {ews_url}"),
                });
                return Ok(Discovered { ews_url, attempts });
            }
            Ok(Found::RedirectAddr(to)) | Ok(Found::RedirectUrl(to))
                if redirects >= MAX_REDIRECTS =>
            {
                attempts.push(Attempt {
                    url,
                    outcome: format!("redirected to {to}, more than {MAX_REDIRECTS} redirects"),
                });
                break;
            }
            Ok(Found::RedirectAddr(to)) => {
                redirects += 1;
                attempts.push(Attempt {
                    url,
                    outcome: format!("redirected to the address {to}"),
                });
                address = to;
                queue = candidates(&address, options.port);
                srv_asked = false;
            }
            Ok(Found::RedirectUrl(to)) => {
                redirects += 1;
                attempts.push(Attempt {
                    url,
                    outcome: format!("redirected to {to}"),
                });
                if !to.starts_with("https://") {
                    attempts.push(Attempt {
                        url: to,
                        outcome: "not followed: only https:// redirects are".into(),
                    });
                    continue;
                }
                queue.insert(0, to);
            }
            Err(e) => {
                attempts.push(Attempt {
                    url,
                    outcome: e.message.clone(),
                });
                if e.step == FailureStep::Authentication && sign_in_refused.is_none() {
                    sign_in_refused = Some(e);
                }
            }
        }
    }
    if let Some(e) = sign_in_refused {
        return Err((e, attempts));
    }
    let domain = domain_of(email);
    let tried: Vec<String> = attempts
        .iter()
        .map(|a| format!("{} ({})", a.url, a.outcome))
        .collect();
    Err((
        ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Config,
            format!(
                "the mailbox location could not be determined for {email}: Autodiscover found \
                 nothing ({}). Publish autodiscover.{domain} (a DNS name for the Exchange \
                 server's Autodiscover service) or an SRV record _autodiscover._tcp.{domain}, \
                 or turn auto-discover off in the profile and enter the EWS URL \
                 (https://<server>/EWS/Exchange.asmx)",
                tried.join("; ")
            ),
        )
        .with_code("autodiscover_failed"),
        attempts,
    ))
}

fn domain_of(email: &str) -> &str {
    email.rsplit_once('@').map(|(_, d)| d).unwrap_or(email)
}

/// The URLs to try for `email`, in order.
fn candidates(email: &str, port: u16) -> Vec<String> {
    let domain = domain_of(email).trim().to_ascii_lowercase();
    if domain.is_empty() {
        return Vec::new();
    }
    let mut out = at_host(&domain, port);
    out.extend(at_host(&format!("autodiscover.{domain}"), port));
    out
}

/// The SOAP and POX services at `host`.
fn at_host(host: &str, port: u16) -> Vec<String> {
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    ["svc", "xml"]
        .iter()
        .map(|ext| format!("https://{host}{port}/autodiscover/autodiscover.{ext}"))
        .collect()
}

/// The services at the hosts the SRV record of `email`'s domain names, best first; the
/// lookup is recorded as an attempt.
async fn srv_candidates(
    email: &str,
    opts: &ConnectOptions,
    attempts: &mut Vec<Attempt>,
) -> Vec<String> {
    let domain = domain_of(email).trim().to_ascii_lowercase();
    if domain.is_empty() {
        return Vec::new();
    }
    let name = format!("_autodiscover._tcp.{domain}");
    let nameserver = opts
        .policy
        .nameserver()
        .unwrap_or_else(crate::dns::system_nameserver);
    let (outcome, urls) = match crate::dns::srv(&name, nameserver, opts.timeout).await {
        Ok(records) if records.is_empty() => ("no SRV record".to_owned(), Vec::new()),
        Ok(records) => (
            format!(
                "SRV record: {}",
                records
                    .iter()
                    .map(|r| format!("{} port {}", r.target, r.port))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            records
                .iter()
                .take(MAX_SRV_TARGETS)
                .flat_map(|r| at_host(&r.target.to_ascii_lowercase(), r.port))
                .collect(),
        ),
        Err(e) => (e.message, Vec::new()),
    };
    attempts.push(Attempt {
        url: format!("DNS SRV {name}"),
        outcome,
    });
    urls
}

async fn attempt(
    url: &str,
    soap: bool,
    email: &str,
    settings: &EwsSettings,
    opts: &ConnectOptions,
) -> Result<Found> {
    let mut s = settings.clone();
    s.url = url.to_owned();
    s.acting = super::Acting::Own;
    let mut log = StepLog::new();
    let mut client = EwsClient::connect(s, opts, &mut log).await?;
    let (what, body) = if soap {
        ("GetUserSettings", soap_request(url, email))
    } else {
        ("Autodiscover", pox_request(email))
    };
    let resp = client.post(what, body).await?;
    if resp.status == 404 {
        return Err(ConnectError::new(
            FailureStep::Protocol,
            ErrorKind::Config,
            "no Autodiscover service here (HTTP 404)",
        ));
    }
    if matches!(resp.status, 301 | 302 | 307 | 308)
        && let Some(loc) = resp.header_values("location").into_iter().next()
    {
        return Ok(Found::RedirectUrl(loc));
    }
    let doc = Element::parse(&resp.body).map_err(|e| {
        ConnectError::new(
            FailureStep::Protocol,
            ErrorKind::Permanent,
            format!(
                "HTTP {}: the answer is not Autodiscover XML ({e})",
                resp.status
            ),
        )
    })?;
    if soap {
        read_soap(&doc)
    } else {
        read_pox(&doc)
    }
}

fn pox_request(email: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>{}</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>",
        escape(email)
    )
}

fn soap_request(url: &str, email: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:a=\"http://schemas.microsoft.com/exchange/2010/Autodiscover\" xmlns:wsa=\"http://www.w3.org/2005/08/addressing\" xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Header><a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion><wsa:Action>http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettings</wsa:Action><wsa:To>{}</wsa:To></soap:Header><soap:Body><a:GetUserSettingsRequestMessage><a:Request><a:Users><a:User><a:Mailbox>{}</a:Mailbox></a:User></a:Users><a:RequestedSettings><a:Setting>ExternalEwsUrl</a:Setting><a:Setting>InternalEwsUrl</a:Setting><a:Setting>GroupingInformation</a:Setting></a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage></soap:Body></soap:Envelope>",
        escape(url),
        escape(email)
    )
}

fn not_found(message: String) -> ConnectError {
    ConnectError::new(FailureStep::Protocol, ErrorKind::Config, message)
}

/// A POX answer: settings (the EWS URL of the `EXCH` protocol, else `EXPR`), a redirect,
/// or an error.
fn read_pox(doc: &Element) -> Result<Found> {
    let response = doc
        .child("Response")
        .ok_or_else(|| not_found("the answer has no Response".into()))?;
    if let Some(err) = response.child("Error") {
        return Err(not_found(format!(
            "error {}: {}",
            err.text_of("ErrorCode").unwrap_or("?"),
            err.text_of("Message").unwrap_or_default()
        )));
    }
    let account = response
        .child("Account")
        .ok_or_else(|| not_found("the answer has no Account".into()))?;
    match account.text_of("Action").unwrap_or("settings") {
        "redirectAddr" => account
            .text_of("RedirectAddr")
            .map(|a| Found::RedirectAddr(a.to_owned()))
            .ok_or_else(|| not_found("redirectAddr without an address".into())),
        "redirectUrl" => account
            .text_of("RedirectUrl")
            .map(|u| Found::RedirectUrl(u.to_owned()))
            .ok_or_else(|| not_found("redirectUrl without a URL".into())),
        _ => {
            let url = |kind: &str| {
                account
                    .children_named("Protocol")
                    .find(|p| p.text_of("Type") == Some(kind))
                    .and_then(|p| p.text_of("EwsUrl"))
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
            };
            url("EXCH")
                .or_else(|| url("EXPR"))
                .map(Found::Url)
                .ok_or_else(|| not_found("the settings name no EWS URL".into()))
        }
    }
}

/// A SOAP `GetUserSettings` answer: `ExternalEwsUrl` (else `InternalEwsUrl`), a redirect, or
/// the user's error.
fn read_soap(doc: &Element) -> Result<Found> {
    let response = doc
        .find("GetUserSettingsResponseMessage")
        .and_then(|m| m.child("Response"))
        .ok_or_else(|| not_found("the answer has no GetUserSettings response".into()))?;
    let user = response.find("UserResponse").ok_or_else(|| {
        not_found(format!(
            "error {}",
            response.text_of("ErrorCode").unwrap_or("?")
        ))
    })?;
    match user.text_of("ErrorCode").unwrap_or("NoError") {
        "NoError" => {}
        "RedirectAddress" => {
            return user
                .text_of("RedirectTarget")
                .map(|a| Found::RedirectAddr(a.to_owned()))
                .ok_or_else(|| not_found("RedirectAddress without a target".into()));
        }
        "RedirectUrl" => {
            return user
                .text_of("RedirectTarget")
                .map(|u| Found::RedirectUrl(u.to_owned()))
                .ok_or_else(|| not_found("RedirectUrl without a target".into()));
        }
        code => {
            return Err(not_found(format!(
                "{code}: {}",
                user.text_of("ErrorMessage").unwrap_or_default()
            )));
        }
    }
    let setting = |name: &str| {
        user.find("UserSettings").and_then(|s| {
            s.children
                .iter()
                .find(|x| x.text_of("Name") == Some(name))
                .and_then(|x| x.text_of("Value"))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        })
    };
    setting("ExternalEwsUrl")
        .or_else(|| setting("InternalEwsUrl"))
        .map(Found::Url)
        .ok_or_else(|| not_found("the user settings name no EWS URL".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_documented_order() {
        assert_eq!(
            candidates("Alice@Contoso.com", 443),
            [
                "https://contoso.com/autodiscover/autodiscover.svc",
                "https://contoso.com/autodiscover/autodiscover.xml",
                "https://autodiscover.contoso.com/autodiscover/autodiscover.svc",
                "https://autodiscover.contoso.com/autodiscover/autodiscover.xml",
            ]
        );
        assert!(candidates("x@localhost", 8443)[0].starts_with("https://localhost:8443/"));
        assert!(candidates("nobody", 443).len() == 4 && candidates("a@", 443).is_empty());
    }

    #[test]
    fn pox_answers_give_the_url_a_redirect_or_an_error() {
        let settings = br#"<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><AccountType>email</AccountType><Action>settings</Action><Protocol><Type>EXPR</Type><EwsUrl>https://ext/EWS/Exchange.asmx</EwsUrl></Protocol><Protocol><Type>EXCH</Type><EwsUrl>https://int/EWS/Exchange.asmx</EwsUrl></Protocol></Account></Response></Autodiscover>"#;
        assert!(
            matches!(read_pox(&Element::parse(settings).unwrap()), Ok(Found::Url(u)) if u == "https://int/EWS/Exchange.asmx")
        );
        let redirect = br#"<Autodiscover><Response><Account><Action>redirectAddr</Action><RedirectAddr>bob@fabrikam.com</RedirectAddr></Account></Response></Autodiscover>"#;
        assert!(
            matches!(read_pox(&Element::parse(redirect).unwrap()), Ok(Found::RedirectAddr(a)) if a == "bob@fabrikam.com")
        );
        let error = br#"<Autodiscover><Response><Error Time="1" Id="2"><ErrorCode>500</ErrorCode><Message>The email address can't be found.</Message></Error></Response></Autodiscover>"#;
        let e = read_pox(&Element::parse(error).unwrap()).err().unwrap();
        assert!(e.message.contains("can't be found"));
    }

    #[test]
    fn soap_answers_give_the_url() {
        let doc = br#"<s:Envelope xmlns:s="s"><s:Body><GetUserSettingsResponseMessage xmlns="a"><Response><ErrorCode>NoError</ErrorCode><UserResponses><UserResponse><ErrorCode>NoError</ErrorCode><UserSettings><UserSetting><Name>InternalEwsUrl</Name><Value>https://int/EWS/Exchange.asmx</Value></UserSetting><UserSetting><Name>ExternalEwsUrl</Name><Value>https://ext/EWS/Exchange.asmx</Value></UserSetting></UserSettings></UserResponse></UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"#;
        assert!(
            matches!(read_soap(&Element::parse(doc).unwrap()), Ok(Found::Url(u)) if u == "https://ext/EWS/Exchange.asmx")
        );
        let invalid = br#"<s:Envelope xmlns:s="s"><s:Body><GetUserSettingsResponseMessage><Response><ErrorCode>NoError</ErrorCode><UserResponses><UserResponse><ErrorCode>InvalidUser</ErrorCode><ErrorMessage>Invalid user: 'x@y'</ErrorMessage></UserResponse></UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"#;
        assert!(read_soap(&Element::parse(invalid).unwrap()).is_err());
    }
}
