//! The EWS test double itself, over raw HTTP/1.1 on TLS (one connection per `Http`, so NTLM's
//! connection affinity is visible): sign-in (Basic, NTLM with channel binding, Bearer), server
//! versions and impersonation, SyncFolderItems paging, item operations, notifications,
//! autodiscover, limits and injected faults. Responses are also checked against the EWS
//! schemas with xmllint where `shared/exchange` is available. Needs none of the test servers.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serversync_testkit::TlsFiles;
use serversync_testkit::ews::{
    AuthScheme, ChannelBinding, EwsConfig, EwsDouble, ExchangeServerVersion, Fault, ntlm,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SVC: &str = "CONTOSO\\svc-sync";
const PW: &str = "Sync-Pa55word!";
const ALICE: &str = "alice@example.test";
/// Every read is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

struct Setup {
    _dir: tempfile::TempDir,
    tls: TlsFiles,
    ews: EwsDouble,
}

async fn setup(cfg: EwsConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let ews = EwsDouble::start(&tls, cfg).await.unwrap();
    ews.add_account(SVC, PW, true);
    ews.add_account("CONTOSO\\helpdesk", "Help-Pa55", false);
    ews.add_mailbox(ALICE, None);
    ews.add_mailbox("bob@example.test", Some("CONTOSO\\bob"));
    ews.add_account("CONTOSO\\bob", "Bob-Pa55", false);
    Setup {
        _dir: dir,
        tls,
        ews,
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One kept-alive HTTPS connection.
struct Http {
    io: BufReader<TlsStream<TcpStream>>,
}

impl Http {
    async fn open(s: &Setup) -> Http {
        let config = serversync_testkit::tls::client_config(&s.tls.ca_cert).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", s.ews.port()))
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Http {
            io: BufReader::new(tls),
        }
    }

    async fn send(&mut self, path: &str, headers: &[(&str, String)], body: &str) {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let io = self.io.get_mut();
        io.write_all(head.as_bytes()).await.unwrap();
        io.write_all(body.as_bytes()).await.unwrap();
        io.flush().await.unwrap();
    }

    /// Reads a status line and headers; `None` if the server closed the connection.
    async fn head(&mut self) -> Option<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        let n = tokio::time::timeout(BOUND, self.io.read_line(&mut line))
            .await
            .expect("an answer within the bound")
            .ok()?;
        if n == 0 {
            return None;
        }
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.io.read_line(&mut h).await.ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Some((status, headers))
    }

    /// Reads one chunk of a chunked body (`None` at the last chunk).
    async fn chunk(&mut self) -> Option<String> {
        let mut size = String::new();
        tokio::time::timeout(BOUND, self.io.read_line(&mut size))
            .await
            .expect("a chunk within the bound")
            .ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut data = vec![0u8; size + 2];
        self.io.read_exact(&mut data).await.ok()?;
        if size == 0 {
            return None;
        }
        data.truncate(size);
        Some(String::from_utf8_lossy(&data).into_owned())
    }

    async fn reply(&mut self) -> Option<Reply> {
        let (status, headers) = self.head().await?;
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut b = String::new();
            while let Some(c) = self.chunk().await {
                b.push_str(&c);
            }
            b
        } else {
            let len: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut b = vec![0u8; len];
            tokio::time::timeout(BOUND, self.io.read_exact(&mut b))
                .await
                .unwrap()
                .ok()?;
            String::from_utf8_lossy(&b).into_owned()
        };
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    async fn post(&mut self, path: &str, headers: &[(&str, String)], body: &str) -> Reply {
        self.send(path, headers, body).await;
        self.reply().await.expect("a response")
    }
}

fn basic(user: &str, pw: &str) -> (&'static str, String) {
    (
        "Authorization",
        format!("Basic {}", B64.encode(format!("{user}:{pw}"))),
    )
}

const EWS: &str = "/EWS/Exchange.asmx";

/// A SOAP request with RequestServerVersion and optional impersonation.
fn soap(version: Option<&str>, impersonate: Option<&str>, body: &str) -> String {
    let mut header = String::new();
    if let Some(v) = version {
        header.push_str(&format!("<t:RequestServerVersion Version=\"{v}\"/>"));
    }
    if let Some(smtp) = impersonate {
        header.push_str(&format!(
            "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{smtp}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
         <soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\" \
         xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\">\
         <soap:Header>{header}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

/// Impersonating alice, Exchange2016 schema.
fn as_alice(body: &str) -> String {
    soap(Some("Exchange2016"), Some(ALICE), body)
}

async fn call(s: &Setup, body: &str) -> Reply {
    let mut http = Http::open(s).await;
    http.post(EWS, &[basic(SVC, PW)], body).await
}

const GET_INBOX: &str = "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>\
    <m:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:FolderIds></m:GetFolder>";

/// Text of the first element with this local name (any prefix).
fn text_of<'a>(xml: &'a str, local: &str) -> Option<&'a str> {
    let open = [
        format!("<m:{local}>"),
        format!("<t:{local}>"),
        format!("<{local}>"),
    ];
    let (start, tag) = open
        .iter()
        .filter_map(|o| xml.find(o.as_str()).map(|i| (i, o)))
        .min_by_key(|(i, _)| *i)?;
    let from = start + tag.len();
    let end = xml[from..].find("</")? + from;
    Some(&xml[from..end])
}

fn count(xml: &str, needle: &str) -> usize {
    xml.matches(needle).count()
}

fn mime(n: usize) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: {ALICE}\r\nSubject: note {n}\r\nMessage-ID: <n{n}@example.org>\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

fn item_ids(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<t:ItemId Id=\"") {
        rest = &rest[i + 14..];
        let id = rest[..rest.find('"').unwrap()].to_string();
        let ck = rest
            .find("ChangeKey=\"")
            .filter(|j| *j < rest.find("/>").unwrap())
            .map(|j| {
                let r = &rest[j + 11..];
                r[..r.find('"').unwrap()].to_string()
            })
            .unwrap_or_default();
        out.push((id, ck));
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn basic_sign_in_and_the_offered_schemes() {
    let s = setup(EwsConfig::default()).await;
    let mut http = Http::open(&s).await;
    let r = http.post(EWS, &[], &as_alice(GET_INBOX)).await;
    assert_eq!(r.status, 401);
    let offered = r.header_values("www-authenticate");
    assert_eq!(offered, ["Basic realm=\"example.test\"", "NTLM"]);
    let r = http
        .post(EWS, &[basic(SVC, "wrong")], &as_alice(GET_INBOX))
        .await;
    assert_eq!(r.status, 401);
    let r = http
        .post(EWS, &[basic(SVC, PW)], &as_alice(GET_INBOX))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("ResponseClass=\"Success\""), "{}", r.body);
    assert_eq!(text_of(&r.body, "DisplayName"), Some("Inbox"));
    assert!(
        r.body
            .contains("<h:ServerVersionInfo MajorVersion=\"15\" MinorVersion=\"2\"")
    );
    // Basic does not make the connection signed in.
    let r = http.post(EWS, &[], &as_alice(GET_INBOX)).await;
    assert_eq!(r.status, 401);
    let recorded = s.ews.requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[2].authenticated_as.as_deref(), Some(SVC));
    assert_eq!(recorded[2].operation, "GetFolder");
    assert!(recorded[0].authenticated_as.is_none());
}

fn server_cert_der(tls: &TlsFiles) -> Vec<u8> {
    CertificateDer::pem_file_iter(&tls.server_cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// NEGOTIATE on `http`, returns the CHALLENGE.
async fn negotiate(http: &mut Http) -> Vec<u8> {
    let r = http
        .post(
            EWS,
            &[(
                "Authorization",
                format!("NTLM {}", B64.encode(ntlm::client_negotiate())),
            )],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 401);
    let value = r.header_values("www-authenticate");
    assert_eq!(value.len(), 1, "{value:?}");
    B64.decode(value[0].strip_prefix("NTLM ").unwrap()).unwrap()
}

fn authenticate(challenge: &[u8], pw: &str, cbt: Option<[u8; 16]>) -> (&'static str, String) {
    let auth = ntlm::client_authenticate(challenge, "CONTOSO", "svc-sync", pw, cbt).unwrap();
    ("Authorization", format!("NTLM {}", B64.encode(auth)))
}

#[tokio::test]
async fn ntlm_legs_on_one_connection_with_channel_binding() {
    let s = setup(EwsConfig::default()).await;
    let cbt = ntlm::channel_bindings_hash(&server_cert_der(&s.tls));

    let mut http = Http::open(&s).await;
    let challenge = negotiate(&mut http).await;
    // The CHALLENGE names the domain and carries the target info the spec asks for.
    let info_len = u16::from_le_bytes([challenge[40], challenge[41]]) as usize;
    let info_off = u32::from_le_bytes(challenge[44..48].try_into().unwrap()) as usize;
    let pairs = ntlm::av_pairs(&challenge[info_off..info_off + info_len]).unwrap();
    let ids: Vec<u16> = pairs.iter().map(|(i, _)| *i).collect();
    for want in [
        ntlm::av::NB_DOMAIN_NAME,
        ntlm::av::DNS_COMPUTER_NAME,
        ntlm::av::TIMESTAMP,
    ] {
        assert!(ids.contains(&want), "{ids:?}");
    }
    let r = http
        .post(
            EWS,
            &[authenticate(&challenge, PW, Some(cbt))],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The connection stays signed in, as with IIS.
    let r = http.post(EWS, &[], &as_alice(GET_INBOX)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.ews.requests().last().unwrap().authenticated_as.as_deref(),
        Some(SVC)
    );
    // ...but a new connection is not.
    let mut other = Http::open(&s).await;
    assert_eq!(other.post(EWS, &[], &as_alice(GET_INBOX)).await.status, 401);

    // AUTHENTICATE on another connection than the CHALLENGE: refused.
    let mut first = Http::open(&s).await;
    let challenge = negotiate(&mut first).await;
    let mut second = Http::open(&s).await;
    let r = second
        .post(
            EWS,
            &[authenticate(&challenge, PW, Some(cbt))],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 401);

    // Wrong password, no channel binding, a wrong channel binding: refused.
    for (pw, binding) in [("nope", Some(cbt)), (PW, None), (PW, Some([9u8; 16]))] {
        let mut http = Http::open(&s).await;
        let challenge = negotiate(&mut http).await;
        let r = http
            .post(
                EWS,
                &[authenticate(&challenge, pw, binding)],
                &as_alice(GET_INBOX),
            )
            .await;
        assert_eq!(r.status, 401, "{pw} {binding:?}");
    }
    // As modern clients sign in: key exchange and a MIC over the three messages.
    let mut http = Http::open(&s).await;
    let neg = ntlm::client_negotiate();
    let r = http
        .post(
            EWS,
            &[("Authorization", format!("NTLM {}", B64.encode(&neg)))],
            &as_alice(GET_INBOX),
        )
        .await;
    let challenge = B64
        .decode(
            r.header_values("www-authenticate")[0]
                .strip_prefix("NTLM ")
                .unwrap(),
        )
        .unwrap();
    let auth =
        ntlm::client_authenticate_with_mic(&neg, &challenge, "CONTOSO", "svc-sync", PW, Some(cbt))
            .unwrap();
    let r = http
        .post(
            EWS,
            &[("Authorization", format!("NTLM {}", B64.encode(auth)))],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 200);
    // A garbage token is a 401, not a crash.
    let mut http = Http::open(&s).await;
    let r = http
        .post(
            EWS,
            &[("Authorization", "NTLM TlRMTVNTUAADAAAA".into())],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn ntlm_without_extended_protection_and_bearer() {
    let cfg = EwsConfig {
        auth: vec![
            AuthScheme::Ntlm {
                channel_binding: ChannelBinding::Optional,
            },
            AuthScheme::Bearer {
                tokens: vec![("tok-123".into(), "app@example.test".into())],
            },
        ],
        ..EwsConfig::default()
    };
    let s = setup(cfg).await;
    let mut http = Http::open(&s).await;
    let r = http
        .post(EWS, &[basic(SVC, PW)], &as_alice(GET_INBOX))
        .await;
    assert_eq!(r.status, 401, "Basic is not offered");
    assert_eq!(r.header_values("www-authenticate")[0], "NTLM");
    assert!(r.header_values("www-authenticate")[1].starts_with("Bearer"));
    let challenge = negotiate(&mut http).await;
    let r = http
        .post(
            EWS,
            &[authenticate(&challenge, PW, None)],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 200);

    let mut http = Http::open(&s).await;
    let r = http
        .post(
            EWS,
            &[("Authorization", "Bearer tok-123".into())],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http
        .post(
            EWS,
            &[("Authorization", "Bearer nope".into())],
            &as_alice(GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.header_values("www-authenticate")[0].contains("invalid_token"));
}

#[tokio::test]
async fn server_versions_and_impersonation() {
    let s = setup(EwsConfig {
        version: ExchangeServerVersion::Exchange2010Sp3,
        ..EwsConfig::default()
    })
    .await;
    let r = call(&s, &soap(Some("Exchange2013_SP1"), Some(ALICE), GET_INBOX)).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("a:ErrorInvalidServerVersion"), "{}", r.body);
    let r = call(&s, &soap(None, Some(ALICE), GET_INBOX)).await;
    assert!(r.body.contains("ErrorInvalidServerVersion"), "{}", r.body);
    // A name the server does not know is "invalid" too (clients step down through them).
    let r = call(&s, &soap(Some("Exchange2015_SP1"), Some(ALICE), GET_INBOX)).await;
    assert!(r.body.contains("ErrorInvalidServerVersion"), "{}", r.body);
    let r = call(&s, &soap(Some("Exchange2010_SP2"), Some(ALICE), GET_INBOX)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("MajorVersion=\"14\" MinorVersion=\"3\""),
        "{}",
        r.body
    );

    // Impersonation: denied without the right, unknown mailbox, own mailbox without it.
    let mut http = Http::open(&s).await;
    let r = http
        .post(
            EWS,
            &[basic("CONTOSO\\helpdesk", "Help-Pa55")],
            &soap(Some("Exchange2010_SP2"), Some(ALICE), GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("<e:ResponseCode xmlns:e=\"http://schemas.microsoft.com/exchange/services/2006/errors\">ErrorImpersonateUserDenied</e:ResponseCode>"), "{}", r.body);
    let r = call(
        &s,
        &soap(
            Some("Exchange2010_SP2"),
            Some("nobody@example.test"),
            GET_INBOX,
        ),
    )
    .await;
    assert!(r.body.contains("ErrorNonExistentMailbox"), "{}", r.body);
    let mut http = Http::open(&s).await;
    let r = http
        .post(
            EWS,
            &[basic("CONTOSO\\bob", "Bob-Pa55")],
            &soap(Some("Exchange2010_SP2"), None, GET_INBOX),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("NoError"));
    // A service account without a mailbox of its own must name one.
    let r = call(&s, &soap(Some("Exchange2010_SP2"), None, GET_INBOX)).await;
    assert!(r.body.contains("ErrorMissingEmailAddress"), "{}", r.body);

    let online = setup(EwsConfig {
        version: ExchangeServerVersion::ExchangeOnline,
        ..EwsConfig::default()
    })
    .await;
    let r = call(&online, &as_alice(GET_INBOX)).await;
    assert!(r.body.contains("Version=\"V2018_01_08\""), "{}", r.body);
    assert!(r.body.contains("MinorVersion=\"20\""));
}

fn sync_request(state: Option<&str>, max: u32, shape: &str) -> String {
    let state = state
        .map(|s| format!("<m:SyncState>{s}</m:SyncState>"))
        .unwrap_or_default();
    as_alice(&format!(
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>{shape}</t:BaseShape></m:ItemShape>\
         <m:SyncFolderId><t:DistinguishedFolderId Id=\"inbox\"/></m:SyncFolderId>{state}\
         <m:MaxChangesReturned>{max}</m:MaxChangesReturned><m:SyncScope>NormalItems</m:SyncScope></m:SyncFolderItems>"
    ))
}

#[tokio::test]
async fn sync_folder_items_pages_and_reports_every_kind_of_change() {
    let s = setup(EwsConfig {
        max_sync_items: 4,
        ..EwsConfig::default()
    })
    .await;
    let ids: Vec<String> = (0..10)
        .map(|n| s.ews.deliver(ALICE, "inbox", &mime(n), false))
        .collect();
    let mut state: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let r = call(&s, &sync_request(state.as_deref(), 512, "IdOnly")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let last = text_of(&r.body, "IncludesLastItemInRange").unwrap() == "true";
        pages.push((count(&r.body, "<t:Create>"), last));
        state = Some(text_of(&r.body, "SyncState").unwrap().to_string());
        if last {
            break;
        }
    }
    assert_eq!(pages, [(4, false), (4, false), (2, true)]);
    let r = call(&s, &sync_request(state.as_deref(), 512, "IdOnly")).await;
    assert_eq!(count(&r.body, "<t:Create>"), 0);
    assert_eq!(text_of(&r.body, "IncludesLastItemInRange"), Some("true"));

    // A read flag, a move out (Delete here), a new delivery and a subject change.
    let items = s.ews.items(ALICE, "inbox");
    let set_read = format!(
        "<m:UpdateItem ConflictResolution=\"AutoResolve\" MessageDisposition=\"SaveOnly\"><m:ItemChanges>\
         <t:ItemChange><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/><t:Updates><t:SetItemField>\
         <t:FieldURI FieldURI=\"message:IsRead\"/><t:Message><t:IsRead>true</t:IsRead></t:Message>\
         </t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
        items[0].id, items[0].change_key
    );
    let r = call(&s, &as_alice(&set_read)).await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    // The same change key again is stale now.
    let r = call(&s, &as_alice(&set_read)).await;
    assert!(r.body.contains("ErrorIrresolvableConflict"), "{}", r.body);
    let r = call(
        &s,
        &as_alice(&format!(
            "<m:MoveItem><m:ToFolderId><t:DistinguishedFolderId Id=\"deleteditems\"/></m:ToFolderId>\
             <m:ItemIds><t:ItemId Id=\"{}\"/></m:ItemIds></m:MoveItem>",
            ids[1]
        )),
    )
    .await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    let moved = item_ids(&r.body);
    assert_eq!(moved.len(), 1);
    assert_ne!(moved[0].0, ids[1], "a moved item gets a new id");
    s.ews.deliver(ALICE, "inbox", &mime(10), true);
    let r = call(&s, &sync_request(state.as_deref(), 512, "Default")).await;
    assert_eq!(count(&r.body, "<t:ReadFlagChange>"), 1, "{}", r.body);
    assert_eq!(count(&r.body, "<t:Delete>"), 1);
    assert_eq!(count(&r.body, "<t:Create>"), 1);
    assert!(r.body.contains("<t:Subject>note 10</t:Subject>"));
    assert!(
        r.body
            .contains(&format!("<t:Delete><t:ItemId Id=\"{}\"/>", ids[1]))
    );

    // Garbage or another folder's SyncState.
    let r = call(&s, &sync_request(Some("bm90IG91cnM="), 10, "IdOnly")).await;
    assert!(r.body.contains("ErrorInvalidSyncStateData"), "{}", r.body);
    // MaxChangesReturned outside 1–512 fails schema validation.
    let r = call(&s, &sync_request(None, 0, "IdOnly")).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("ErrorSchemaValidation"));
    let r = call(&s, &sync_request(None, 513, "IdOnly")).await;
    assert!(r.body.contains("ErrorSchemaValidation"));
    // Nothing changed IsRead but the UpdateItem.
    let now = s.ews.items(ALICE, "inbox");
    assert_eq!(now.iter().filter(|i| i.is_read).count(), 2);
}

/// Thousands of items page through at 512 a time, each exactly once.
#[tokio::test]
async fn sync_folder_items_at_scale() {
    let s = setup(EwsConfig::default()).await;
    for n in 0..3000 {
        s.ews.deliver(ALICE, "inbox", &mime(n), n % 3 == 0);
    }
    let mut state: Option<String> = None;
    let mut ids = std::collections::HashSet::new();
    let mut pages = 0;
    let t = Instant::now();
    loop {
        let r = call(&s, &sync_request(state.as_deref(), 512, "IdOnly")).await;
        pages += 1;
        for (id, _) in item_ids(&r.body) {
            assert!(ids.insert(id), "an item came twice");
        }
        state = Some(text_of(&r.body, "SyncState").unwrap().to_string());
        if text_of(&r.body, "IncludesLastItemInRange") == Some("true") {
            break;
        }
    }
    assert_eq!((ids.len(), pages), (3000, 6));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[tokio::test]
async fn item_operations() {
    let s = setup(EwsConfig::default()).await;
    let id = s.ews.deliver(ALICE, "Inbox", &mime(1), false);
    // GetItem with two ids, one missing: one response message each.
    let r = call(
        &s,
        &as_alice(&format!(
            "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent>\
             <t:AdditionalProperties><t:FieldURI FieldURI=\"message:InternetMessageId\"/></t:AdditionalProperties></m:ItemShape>\
             <m:ItemIds><t:ItemId Id=\"{id}\"/><t:ItemId Id=\"AAMkAbm9wZQ==\"/></m:ItemIds></m:GetItem>"
        )),
    )
    .await;
    assert_eq!(count(&r.body, "<m:GetItemResponseMessage"), 2);
    assert!(r.body.contains("ErrorItemNotFound"));
    let mc = r.body.split("CharacterSet=\"UTF-8\">").nth(1).unwrap();
    let mc = &mc[..mc.find('<').unwrap()];
    assert_eq!(B64.decode(mc).unwrap(), mime(1));
    assert!(
        r.body
            .contains("<t:InternetMessageId>&lt;n1@example.org&gt;</t:InternetMessageId>")
    );

    // FindItem by InternetMessageId (the FieldURI form), and paging.
    for n in 2..6 {
        s.ews.deliver(ALICE, "inbox", &mime(n), false);
    }
    let find = |restriction: &str, view: &str| {
        as_alice(&format!(
            "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>{view}{restriction}\
             <m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds></m:FindItem>"
        ))
    };
    let r = call(
        &s,
        &find(
            "<m:Restriction><t:IsEqualTo><t:FieldURI FieldURI=\"message:InternetMessageId\"/>\
             <t:FieldURIOrConstant><t:Constant Value=\"&lt;n3@example.org&gt;\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction>",
            "",
        ),
    )
    .await;
    assert_eq!(item_ids(&r.body).len(), 1, "{}", r.body);
    assert!(r.body.contains("TotalItemsInView=\"1\""));
    let r = call(
        &s,
        &find("", "<m:IndexedPageItemView MaxEntriesReturned=\"2\" Offset=\"4\" BasePoint=\"Beginning\"/>"),
    )
    .await;
    assert_eq!(item_ids(&r.body).len(), 1);
    assert!(
        r.body
            .contains("TotalItemsInView=\"5\" IncludesLastItemInRange=\"true\""),
        "{}",
        r.body
    );

    // CreateItem: SaveOnly into Drafts, SendOnly, SendAndSaveCopy into Sent Items.
    let create = |disposition: &str, saved: &str| {
        as_alice(&format!(
            "<m:CreateItem MessageDisposition=\"{disposition}\">{saved}<m:Items><t:Message>\
             <t:MimeContent CharacterSet=\"UTF-8\">{}</t:MimeContent></t:Message></m:Items></m:CreateItem>",
            B64.encode(b"Subject: out\r\nTo: x@example.org\r\n\r\nhi\r\n")
        ))
    };
    let r = call(&s, &create("SaveOnly", "")).await;
    assert_eq!(item_ids(&r.body).len(), 1, "{}", r.body);
    assert_eq!(s.ews.items(ALICE, "drafts").len(), 1);
    let r = call(&s, &create("SendOnly", "")).await;
    assert!(r.body.contains("NoError") && item_ids(&r.body).is_empty());
    let r = call(
        &s,
        &create(
            "SendAndSaveCopy",
            "<m:SavedItemFolderId><t:DistinguishedFolderId Id=\"sentitems\"/></m:SavedItemFolderId>",
        ),
    )
    .await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    assert_eq!(s.ews.sent().len(), 2);
    let copy = &s.ews.items(ALICE, "Sent Items")[0];
    assert!(
        copy.is_read && copy.internet_message_id.is_some(),
        "Exchange stamps a Message-ID"
    );
    let r = call(&s, &create("Bogus", "")).await;
    assert!(r.body.contains("ResponseClass=\"Error\""));

    // DeleteItem (hard), CreateFolder, FindFolder by name, ConvertId.
    let r = call(
        &s,
        &as_alice(&format!(
            "<m:DeleteItem DeleteType=\"HardDelete\"><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:DeleteItem>"
        )),
    )
    .await;
    assert!(r.body.contains("NoError"));
    assert_eq!(s.ews.items(ALICE, "inbox").len(), 4);
    let mk = as_alice(
        "<m:CreateFolder><m:ParentFolderId><t:DistinguishedFolderId Id=\"msgfolderroot\"/></m:ParentFolderId>\
         <m:Folders><t:Folder><t:DisplayName>CRM</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>",
    );
    assert!(call(&s, &mk).await.body.contains("NoError"));
    assert!(call(&s, &mk).await.body.contains("ErrorFolderExists"));
    let r = call(
        &s,
        &as_alice(
            "<m:FindFolder Traversal=\"Shallow\"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>\
             <m:Restriction><t:IsEqualTo><t:FieldURI FieldURI=\"folder:DisplayName\"/><t:FieldURIOrConstant>\
             <t:Constant Value=\"CRM\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction>\
             <m:ParentFolderIds><t:DistinguishedFolderId Id=\"msgfolderroot\"/></m:ParentFolderIds></m:FindFolder>",
        ),
    )
    .await;
    assert!(r.body.contains("TotalItemsInView=\"1\""), "{}", r.body);
    s.ews.deliver(ALICE, "CRM", &mime(9), false);
    assert_eq!(s.ews.items(ALICE, "crm").len(), 1);

    // SyncFolderHierarchy: everything below the root first, then only what is new.
    let hierarchy = |state: &str| {
        as_alice(&format!(
            "<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>{state}</m:SyncFolderHierarchy>"
        ))
    };
    let r = call(&s, &hierarchy("")).await;
    // msgfolderroot, the six mail folders, Calendar, Contacts, Tasks and CRM.
    assert_eq!(count(&r.body, "<t:Create>"), 11, "{}", r.body);
    let state = text_of(&r.body, "SyncState").unwrap().to_string();
    let r = call(
        &s,
        &hierarchy(&format!("<m:SyncState>{state}</m:SyncState>")),
    )
    .await;
    assert_eq!(count(&r.body, "<t:Create>"), 0);
    let sub = as_alice(
        "<m:CreateFolder><m:ParentFolderId><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderId>\
         <m:Folders><t:Folder><t:DisplayName>Leads</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>",
    );
    assert!(call(&s, &sub).await.body.contains("NoError"));
    let r = call(
        &s,
        &hierarchy(&format!("<m:SyncState>{state}</m:SyncState>")),
    )
    .await;
    assert_eq!(count(&r.body, "<t:Create>"), 1);
    assert!(r.body.contains("<t:DisplayName>Leads</t:DisplayName>"));
    let r = call(&s, &hierarchy("<m:SyncState>eA==</m:SyncState>")).await;
    assert!(r.body.contains("ErrorInvalidSyncStateData"));
    let r = call(
        &s,
        &soap(
            Some("Exchange2016"),
            None,
            "<m:ConvertId DestinationFormat=\"EntryId\"><m:SourceIds>\
             <t:AlternateId Format=\"EwsId\" Id=\"DUMMY\" Mailbox=\"DUMMY\"/></m:SourceIds></m:ConvertId>",
        ),
    )
    .await;
    assert!(r.body.contains("ErrorInvalidIdMalformed"), "{}", r.body);
}

#[tokio::test]
async fn injected_faults() {
    let s = setup(EwsConfig::default()).await;
    s.ews.inject(Fault::ServerBusy {
        operation: Some("GetItem".into()),
        back_off_ms: 1234,
        as_soap_fault: false,
    });
    // Not a GetItem: the fault waits.
    let r = call(&s, &as_alice(GET_INBOX)).await;
    assert!(r.body.contains("NoError"));
    let get = as_alice(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id=\"AAMkAeA==\"/></m:ItemIds></m:GetItem>",
    );
    let r = call(&s, &get).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("<m:GetItemResponseMessage ResponseClass=\"Error\">"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("<m:ResponseCode>ErrorServerBusy</m:ResponseCode>")
    );
    assert!(r.body.contains(
        "<m:MessageXml><t:Value Name=\"BackOffMilliseconds\">1234</t:Value></m:MessageXml>"
    ));
    // Consumed: the next GetItem is served.
    assert!(call(&s, &get).await.body.contains("ErrorItemNotFound"));

    s.ews.inject(Fault::ServerBusy {
        operation: None,
        back_off_ms: 5000,
        as_soap_fault: true,
    });
    let r = call(&s, &as_alice(GET_INBOX)).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">a:ErrorServerBusy</faultcode>"), "{}", r.body);
    assert!(r.body.contains("BackOffMilliseconds\">5000<"));

    s.ews.inject(Fault::SoapFault { operation: None });
    let r = call(&s, &as_alice(GET_INBOX)).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("<s:Fault>"));

    s.ews.inject(Fault::Http {
        operation: Some("GetFolder".into()),
        status: 503,
    });
    assert_eq!(call(&s, &as_alice(GET_INBOX)).await.status, 503);
    s.ews.inject(Fault::Http {
        operation: None,
        status: 401,
    });
    let r = call(&s, &as_alice(GET_INBOX)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header_values("www-authenticate").len(), 2);

    s.ews.inject(Fault::ResponseCode {
        operation: Some("GetFolder".into()),
        code: "ErrorMailboxMoveInProgress".into(),
    });
    let r = call(&s, &as_alice(GET_INBOX)).await;
    assert!(
        r.body
            .contains("<m:GetFolderResponseMessage ResponseClass=\"Error\">")
    );
    assert!(r.body.contains("ErrorMailboxMoveInProgress"));

    s.ews.inject(Fault::Delay {
        operation: None,
        ms: 600,
    });
    let t = Instant::now();
    assert!(
        call(&s, &as_alice(GET_INBOX))
            .await
            .body
            .contains("NoError")
    );
    assert!(t.elapsed() >= Duration::from_millis(600));

    s.ews.inject(Fault::DropConnection { operation: None });
    let mut http = Http::open(&s).await;
    http.send(EWS, &[basic(SVC, PW)], &as_alice(GET_INBOX))
        .await;
    assert!(
        http.reply().await.is_none(),
        "the connection closed without an answer"
    );
    assert!(
        call(&s, &as_alice(GET_INBOX))
            .await
            .body
            .contains("NoError")
    );
}

fn subscribe(kind: &str) -> String {
    as_alice(&format!(
        "<m:Subscribe><m:{kind}><t:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></t:FolderIds>\
         <t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType>\
         <t:EventType>ModifiedEvent</t:EventType></t:EventTypes>{}</m:{kind}></m:Subscribe>",
        if kind.starts_with("Pull") {
            "<t:Timeout>10</t:Timeout>"
        } else {
            ""
        }
    ))
}

#[tokio::test]
async fn streaming_notifications() {
    let s = setup(EwsConfig {
        streaming_heartbeat: Duration::from_millis(300),
        streaming_timeout_cap: Some(Duration::from_secs(2)),
        ..EwsConfig::default()
    })
    .await;
    let r = call(&s, &subscribe("StreamingSubscriptionRequest")).await;
    let sub = text_of(&r.body, "SubscriptionId").unwrap().to_string();
    assert!(text_of(&r.body, "Watermark").is_none());
    let mut http = Http::open(&s).await;
    http.send(
        EWS,
        &[basic(SVC, PW)],
        &as_alice(&format!(
            "<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{sub}</t:SubscriptionId></m:SubscriptionIds>\
             <m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>"
        )),
    )
    .await;
    let (status, headers) = http.head().await.unwrap();
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    );
    let first = http.chunk().await.unwrap();
    assert!(
        first.contains("<m:ConnectionStatus>OK</m:ConnectionStatus>"),
        "{first}"
    );
    let id = s.ews.deliver(ALICE, "inbox", &mime(1), false);
    let mut seen = String::new();
    let started = Instant::now();
    while !seen.contains("NewMailEvent") {
        seen = http.chunk().await.unwrap();
        assert!(started.elapsed() < BOUND);
    }
    assert!(seen.contains(&format!("<t:ItemId Id=\"{id}\"")), "{seen}");
    assert!(seen.contains("<t:CreatedEvent>"));
    assert!(seen.starts_with("<?xml"), "each chunk is a whole envelope");
    // Heartbeats, then Closed at the (shortened) timeout, then the end of the body.
    let mut last = String::new();
    while let Some(c) = http.chunk().await {
        last = c;
    }
    assert!(
        last.contains("<m:ConnectionStatus>Closed</m:ConnectionStatus>"),
        "{last}"
    );
    // Unknown subscription.
    let r = call(
        &s,
        &as_alice("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>nope</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"),
    )
    .await;
    assert!(r.body.contains("ErrorSubscriptionNotFound"), "{}", r.body);
}

#[tokio::test]
async fn pull_notifications() {
    let s = setup(EwsConfig::default()).await;
    let r = call(&s, &subscribe("PullSubscriptionRequest")).await;
    let sub = text_of(&r.body, "SubscriptionId").unwrap().to_string();
    let mut watermark = text_of(&r.body, "Watermark").unwrap().to_string();
    let get_events = |w: &str| {
        as_alice(&format!(
            "<m:GetEvents><m:SubscriptionId>{sub}</m:SubscriptionId><m:Watermark>{w}</m:Watermark></m:GetEvents>"
        ))
    };
    let r = call(&s, &get_events(&watermark)).await;
    assert!(r.body.contains("<t:StatusEvent>"), "{}", r.body);
    s.ews.deliver(ALICE, "inbox", &mime(1), false);
    s.ews.deliver(ALICE, "sentitems", &mime(2), false);
    let r = call(&s, &get_events(&watermark)).await;
    assert_eq!(count(&r.body, "<t:NewMailEvent>"), 1, "{}", r.body);
    assert_eq!(
        count(&r.body, "<t:CreatedEvent>"),
        1,
        "Sent Items is not watched"
    );
    // Acknowledge with the last watermark: nothing new.
    let marks: Vec<&str> = r
        .body
        .split("<t:Watermark>")
        .skip(1)
        .map(|w| &w[..w.find('<').unwrap()])
        .collect();
    watermark = marks.last().unwrap().to_string();
    let r = call(&s, &get_events(&watermark)).await;
    assert!(
        r.body.contains("<t:StatusEvent>") && !r.body.contains("NewMailEvent"),
        "{}",
        r.body
    );
    let r = call(
        &s,
        &as_alice(&format!(
            "<m:Unsubscribe><m:SubscriptionId>{sub}</m:SubscriptionId></m:Unsubscribe>"
        )),
    )
    .await;
    assert!(r.body.contains("NoError"));
    assert!(
        call(&s, &get_events(&watermark))
            .await
            .body
            .contains("ErrorSubscriptionNotFound")
    );
    assert!(s.ews.subscriptions().is_empty());
}

fn pox(email: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\">\
         <Request><EMailAddress>{email}</EMailAddress>\
         <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>\
         </Request></Autodiscover>"
    )
}

#[tokio::test]
async fn autodiscover_pox_and_soap() {
    let s = setup(EwsConfig::default()).await;
    s.ews.redirect_autodiscover("old@example.test", ALICE);
    let path = "/autodiscover/autodiscover.xml";
    let mut http = Http::open(&s).await;
    assert_eq!(http.post(path, &[], &pox(ALICE)).await.status, 401);
    let r = http.post(path, &[basic(SVC, PW)], &pox(ALICE)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("<AccountType>email</AccountType><Action>settings</Action>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("<Type>EXCH</Type>"));
    assert_eq!(text_of(&r.body, "EwsUrl"), Some(s.ews.ews_url().as_str()));
    assert!(r.body.contains("<ASUrl>"));
    let r = http
        .post(path, &[basic(SVC, PW)], &pox("OLD@example.test"))
        .await;
    assert!(
        r.body.contains(
            "<Action>redirectAddr</Action><RedirectAddr>alice@example.test</RedirectAddr>"
        ),
        "{}",
        r.body
    );
    let r = http
        .post(path, &[basic(SVC, PW)], &pox("ghost@example.test"))
        .await;
    assert!(
        r.body.contains(
            "<ErrorCode>500</ErrorCode><Message>The email address can't be found.</Message>"
        ),
        "{}",
        r.body
    );

    let soap_ad = |mailbox: &str| {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:a=\"http://schemas.microsoft.com/exchange/2010/Autodiscover\" \
             xmlns:wsa=\"http://www.w3.org/2005/08/addressing\" xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
             <soap:Header><a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion>\
             <wsa:Action>http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettings</wsa:Action></soap:Header>\
             <soap:Body><a:GetUserSettingsRequestMessage><a:Request><a:Users><a:User><a:Mailbox>{mailbox}</a:Mailbox></a:User></a:Users>\
             <a:RequestedSettings><a:Setting>ExternalEwsUrl</a:Setting><a:Setting>UserDisplayName</a:Setting>\
             <a:Setting>GroupingInformation</a:Setting><a:Setting>EwsSupportedSchemas</a:Setting><a:Setting>Bogus</a:Setting>\
             </a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage></soap:Body></soap:Envelope>"
        )
    };
    let path = "/autodiscover/autodiscover.svc";
    let r = http.post(path, &[basic(SVC, PW)], &soap_ad(ALICE)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains(&format!(
            "<Name>ExternalEwsUrl</Name><Value>{}</Value>",
            s.ews.ews_url()
        )),
        "{}",
        r.body
    );
    assert!(r.body.contains("<Name>GroupingInformation</Name>"));
    assert!(r.body.contains("<SettingName>Bogus</SettingName>"));
    let r = http
        .post(path, &[basic(SVC, PW)], &soap_ad("ghost@example.test"))
        .await;
    assert!(
        r.body.contains("<ErrorCode>InvalidUser</ErrorCode>"),
        "{}",
        r.body
    );
    let r = http
        .post(path, &[basic(SVC, PW)], &soap_ad("old@example.test"))
        .await;
    assert!(r.body.contains("<ErrorCode>RedirectAddress</ErrorCode>"));
    assert!(
        r.body
            .contains("<RedirectTarget>alice@example.test</RedirectTarget>")
    );
}

#[tokio::test]
async fn limits_and_bad_requests() {
    let s = setup(EwsConfig::default()).await;
    // A body over the limit is refused from its Content-Length, before it is read.
    let mut http = Http::open(&s).await;
    let head = format!(
        "POST {EWS} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        serversync_testkit::ews::MAX_BODY + 1
    );
    http.io.get_mut().write_all(head.as_bytes()).await.unwrap();
    assert_eq!(http.reply().await.unwrap().status, 413);
    let mut http = Http::open(&s).await;
    for bad in [
        "not xml at all",
        "<a><b></a>",
        "<!DOCTYPE x [<!ENTITY e \"boom\">]><x>&e;</x>",
        &"<a>".repeat(1000),
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body/></soap:Envelope>",
    ] {
        let r = http.post(EWS, &[basic(SVC, PW)], bad).await;
        assert_eq!(r.status, 500, "{bad}: {}", r.body);
        assert!(r.body.contains("ErrorSchemaValidation"), "{}", r.body);
    }
    let r = call(&s, &as_alice("<m:ResolveNames ReturnFullContactData=\"true\"><m:UnresolvedEntry>x</m:UnresolvedEntry></m:ResolveNames>")).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("ErrorInvalidRequest"));
    let r = http.post("/owa/", &[basic(SVC, PW)], "").await;
    assert_eq!(r.status, 404);
    // A signed-in GET of the service URL is answered like IIS does (clients probe it).
    let (user, pass) = basic(SVC, PW);
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{user}: {pass}\r\n\r\n");
    http.io
        .get_mut()
        .write_all(get(EWS).as_bytes())
        .await
        .unwrap();
    assert_eq!(http.reply().await.unwrap().status, 200);
    let path = "/autodiscover/autodiscover.xml";
    http.io
        .get_mut()
        .write_all(get(path).as_bytes())
        .await
        .unwrap();
    assert!(
        http.reply()
            .await
            .unwrap()
            .body
            .contains("<ErrorCode>600</ErrorCode>")
    );

    // Every prefix of valid requests (broken XML, cut elements) gets an answer, never a
    // dropped connection (a panic in the handler would drop it).
    let sync = sync_request(Some(&B64.encode("ssd1|x|1")), 5, "AllProperties");
    let get = as_alice(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>\
         <m:ItemIds><t:ItemId Id=\"AAMkAeA==\" ChangeKey=\"x\"/></m:ItemIds></m:GetItem>",
    );
    let mut http = Http::open(&s).await;
    for body in [as_alice(GET_INBOX), sync, get] {
        for cut in (0..body.len()).step_by(11) {
            let r = http.post(EWS, &[basic(SVC, PW)], &body[..cut]).await;
            assert!(r.status == 200 || r.status == 500, "{cut}: {}", r.status);
        }
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let s = setup(EwsConfig {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        ..EwsConfig::default()
    })
    .await;
    // A request head that never ends: the connection is closed.
    let mut http = Http::open(&s).await;
    http.io
        .get_mut()
        .write_all(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let answer = http.reply().await;
    assert!(answer.is_none_or(|r| r.status == 408), "closed or 408");
    assert!(t.elapsed() < Duration::from_secs(5));
    // A body that stops halfway: 408.
    let mut http = Http::open(&s).await;
    let body = as_alice(GET_INBOX);
    let (user, pass) = basic(SVC, PW);
    let head = format!(
        "POST {EWS} HTTP/1.1\r\nHost: localhost\r\n{user}: {pass}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let io = http.io.get_mut();
    io.write_all(head.as_bytes()).await.unwrap();
    io.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    io.flush().await.unwrap();
    assert_eq!(http.reply().await.unwrap().status, 408);
}

/// Responses of the double, checked against the EWS message schemas with xmllint
/// (`shared/exchange/validate.sh`, bare response elements).
#[tokio::test]
async fn responses_are_schema_valid() {
    let dir = serversync_testkit::ews::schema_dir();
    let script = dir.join("validate.sh");
    let s = setup(EwsConfig {
        max_sync_items: 2,
        ..EwsConfig::default()
    })
    .await;
    let id = s.ews.deliver(ALICE, "inbox", &mime(1), false);
    s.ews.deliver(ALICE, "inbox", &mime(2), false);
    s.ews.deliver(ALICE, "inbox", &mime(3), false);
    let sub = {
        let r = call(&s, &subscribe("PullSubscriptionRequest")).await;
        (
            text_of(&r.body, "SubscriptionId").unwrap().to_string(),
            text_of(&r.body, "Watermark").unwrap().to_string(),
        )
    };
    s.ews.deliver(ALICE, "inbox", &mime(4), false);
    // Calendar items, contacts, tasks and a distribution list, as other clients made them.
    let meeting = s.ews.create_item(
        ALICE,
        "calendar",
        "<CalendarItem><Subject>Review</Subject><Body BodyType=\"HTML\">&lt;p&gt;Agenda&lt;/p&gt;</Body>\
         <Categories><String>Tracked to Contoso</String></Categories>\
         <ExtendedProperty><ExtendedFieldURI PropertySetId=\"6a1e3b52-8c0f-4d7e-9b51-2f4c7d9e0a13\" PropertyName=\"serversync-uid\" PropertyType=\"String\"/><Value>u1</Value></ExtendedProperty>\
         <Start>2026-12-10T09:00:00Z</Start><End>2026-12-10T10:00:00Z</End><Location>Room 1</Location>\
         <RequiredAttendees><Attendee><Mailbox><EmailAddress>bob@example.test</EmailAddress></Mailbox></Attendee></RequiredAttendees>\
         <Recurrence><WeeklyRecurrence><Interval>1</Interval><DaysOfWeek>Thursday</DaysOfWeek></WeeklyRecurrence>\
         <NumberedRecurrence><StartDate>2026-12-10</StartDate><NumberOfOccurrences>4</NumberOfOccurrences></NumberedRecurrence></Recurrence>\
         <DeletedOccurrences><DeletedOccurrence><Start>2026-12-17T09:00:00Z</Start></DeletedOccurrence></DeletedOccurrences>\
         <StartTimeZone Id=\"W. Europe Standard Time\"/><EndTimeZone Id=\"W. Europe Standard Time\"/></CalendarItem>",
    );
    let person = s.ews.create_item(
        ALICE,
        "contacts",
        "<Contact><GivenName>Ann</GivenName><Surname>Lee</Surname><CompanyName>Fabrikam</CompanyName>\
         <EmailAddresses><Entry Key=\"EmailAddress1\">ann@example.test</Entry></EmailAddresses>\
         <PhoneNumbers><Entry Key=\"BusinessPhone\">+1 555 0100</Entry></PhoneNumbers><JobTitle>Buyer</JobTitle></Contact>",
    );
    let todo = s.ews.create_item(
        ALICE,
        "tasks",
        "<Task><Subject>Call</Subject><DueDate>2026-12-11T00:00:00Z</DueDate><PercentComplete>100</PercentComplete></Task>",
    );
    let list = s.ews.create_item(
        ALICE,
        "contacts",
        "<DistributionList><DisplayName>Buyers</DisplayName></DistributionList>",
    );
    let uid_uri = "<t:ExtendedFieldURI PropertySetId=\"6a1e3b52-8c0f-4d7e-9b51-2f4c7d9e0a13\" PropertyName=\"serversync-uid\" PropertyType=\"String\"/>";
    let pim_requests = [
        format!("<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape><t:BodyType>Text</t:BodyType><t:AdditionalProperties>{uid_uri}</t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id=\"{meeting}\"/><t:ItemId Id=\"{person}\"/><t:ItemId Id=\"{todo}\"/><t:ItemId Id=\"{list}\"/></m:ItemIds></m:GetItem>"),
        format!("<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"item:Subject\"/><t:IndexedFieldURI FieldURI=\"contacts:EmailAddress\" FieldIndex=\"EmailAddress1\"/><t:FieldURI FieldURI=\"calendar:Organizer\"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id=\"{person}\"/><t:ItemId Id=\"{meeting}\"/></m:ItemIds></m:GetItem>"),
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id=\"calendar\"/></m:SyncFolderId><m:MaxChangesReturned>100</m:MaxChangesReturned></m:SyncFolderItems>".into(),
        format!("<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:Restriction><t:IsEqualTo>{uid_uri}<t:FieldURIOrConstant><t:Constant Value=\"u1\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id=\"calendar\"/></m:ParentFolderIds></m:FindItem>"),
        "<m:CreateItem SendMeetingInvitations=\"SendToNone\"><m:Items><t:CalendarItem><t:Subject>New</t:Subject><t:Start>2026-12-12T09:00:00Z</t:Start><t:End>2026-12-12T10:00:00Z</t:End></t:CalendarItem></m:Items></m:CreateItem>".into(),
        format!("<m:UpdateItem ConflictResolution=\"NeverOverwrite\" SendMeetingInvitationsOrCancellations=\"SendToNone\"><m:ItemChanges><t:ItemChange><t:ItemId Id=\"{meeting}\"/><t:Updates><t:SetItemField><t:FieldURI FieldURI=\"item:Subject\"/><t:CalendarItem><t:Subject>Moved</t:Subject></t:CalendarItem></t:SetItemField><t:DeleteItemField><t:FieldURI FieldURI=\"calendar:Location\"/></t:DeleteItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"),
        format!("<m:UpdateItem ConflictResolution=\"NeverOverwrite\"><m:ItemChanges><t:ItemChange><t:ItemId Id=\"{person}\" ChangeKey=\"stale\"/><t:Updates><t:SetItemField><t:FieldURI FieldURI=\"contacts:JobTitle\"/><t:Contact><t:JobTitle>x</t:JobTitle></t:Contact></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"),
        format!("<m:DeleteItem DeleteType=\"MoveToDeletedItems\" AffectedTaskOccurrences=\"AllOccurrences\"><m:ItemIds><t:ItemId Id=\"{todo}\"/></m:ItemIds></m:DeleteItem>"),
        // Occurrences of the series: moved, read, cancelled, and errors.
        format!("<m:UpdateItem MessageDisposition=\"SaveOnly\" ConflictResolution=\"AlwaysOverwrite\" SendMeetingInvitationsOrCancellations=\"SendToNone\"><m:ItemChanges><t:ItemChange><t:OccurrenceItemId RecurringMasterId=\"{meeting}\" InstanceIndex=\"3\"/><t:Updates><t:SetItemField><t:FieldURI FieldURI=\"item:Subject\"/><t:CalendarItem><t:Subject>Later</t:Subject></t:CalendarItem></t:SetItemField><t:SetItemField><t:FieldURI FieldURI=\"calendar:Start\"/><t:CalendarItem><t:Start>2026-12-24T11:00:00Z</t:Start></t:CalendarItem></t:SetItemField><t:SetItemField><t:FieldURI FieldURI=\"calendar:End\"/><t:CalendarItem><t:End>2026-12-24T12:00:00Z</t:End></t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"),
        format!("<m:DeleteItem DeleteType=\"MoveToDeletedItems\" SendMeetingCancellations=\"SendToNone\"><m:ItemIds><t:OccurrenceItemId RecurringMasterId=\"{meeting}\" InstanceIndex=\"4\"/><t:OccurrenceItemId RecurringMasterId=\"{meeting}\" InstanceIndex=\"9\"/></m:ItemIds></m:DeleteItem>"),
        format!("<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id=\"{meeting}\"/><t:OccurrenceItemId RecurringMasterId=\"{meeting}\" InstanceIndex=\"3\"/><t:OccurrenceItemId RecurringMasterId=\"{meeting}\" InstanceIndex=\"1\"/><t:OccurrenceItemId RecurringMasterId=\"{meeting}\" InstanceIndex=\"2\"/></m:ItemIds></m:GetItem>"),
    ];
    let requests = [
        GET_INBOX.to_string(),
        "<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id=\"msgfolderroot\"/><t:DistinguishedFolderId Id=\"nosuch\"/></m:FolderIds></m:GetFolder>".into(),
        "<m:FindFolder Traversal=\"Deep\"><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"root\"/></m:ParentFolderIds></m:FindFolder>".into(),
        format!("<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape><m:ItemIds><t:ItemId Id=\"{id}\"/><t:ItemId Id=\"AAMkAeA==\"/></m:ItemIds></m:GetItem>"),
        "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned=\"2\" Offset=\"0\" BasePoint=\"Beginning\"/><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds></m:FindItem>".into(),
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id=\"inbox\"/></m:SyncFolderId><m:MaxChangesReturned>100</m:MaxChangesReturned></m:SyncFolderItems>".into(),
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id=\"inbox\"/></m:SyncFolderId><m:SyncState>eA==</m:SyncState><m:MaxChangesReturned>100</m:MaxChangesReturned></m:SyncFolderItems>".into(),
        format!("<m:UpdateItem ConflictResolution=\"AlwaysOverwrite\" MessageDisposition=\"SaveOnly\"><m:ItemChanges><t:ItemChange><t:ItemId Id=\"{id}\"/><t:Updates><t:SetItemField><t:FieldURI FieldURI=\"message:IsRead\"/><t:Message><t:IsRead>true</t:IsRead></t:Message></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"),
        format!("<m:CreateItem MessageDisposition=\"SaveOnly\"><m:Items><t:Message><t:MimeContent>{}</t:MimeContent></t:Message></m:Items></m:CreateItem>", B64.encode(mime(9))),
        format!("<m:CreateItem MessageDisposition=\"SendAndSaveCopy\"><m:Items><t:Message><t:MimeContent>{}</t:MimeContent></t:Message></m:Items></m:CreateItem>", B64.encode(mime(8))),
        format!("<m:MoveItem><m:ToFolderId><t:DistinguishedFolderId Id=\"drafts\"/></m:ToFolderId><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:MoveItem>"),
        "<m:DeleteItem DeleteType=\"HardDelete\"><m:ItemIds><t:ItemId Id=\"AAMkAeA==\"/></m:ItemIds></m:DeleteItem>".into(),
        "<m:CreateFolder><m:ParentFolderId><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderId><m:Folders><t:Folder><t:DisplayName>Sub</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>".into(),
        "<m:ConvertId DestinationFormat=\"EntryId\"><m:SourceIds><t:AlternateId Format=\"EwsId\" Id=\"DUMMY\" Mailbox=\"DUMMY\"/></m:SourceIds></m:ConvertId>".into(),
        "<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape></m:SyncFolderHierarchy>".into(),
        subscribe("StreamingSubscriptionRequest").split("<soap:Body>").nth(1).unwrap().trim_end_matches("</soap:Body></soap:Envelope>").to_string(),
        format!("<m:GetEvents><m:SubscriptionId>{}</m:SubscriptionId><m:Watermark>{}</m:Watermark></m:GetEvents>", sub.0, sub.1),
        format!("<m:Unsubscribe><m:SubscriptionId>{}</m:SubscriptionId></m:Unsubscribe>", sub.0),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (n, body) in requests.iter().chain(pim_requests.iter()).enumerate() {
        let r = call(&s, &as_alice(body)).await;
        assert_eq!(r.status, 200, "{body}: {}", r.body);
        let element = response_element(&r.body);
        let path = dir.path().join(format!("{n:02}.xml"));
        std::fs::write(&path, element).unwrap();
        files.push(path);
    }
    s.ews.inject(Fault::ServerBusy {
        operation: None,
        back_off_ms: 100,
        as_soap_fault: false,
    });
    let r = call(&s, &as_alice(GET_INBOX)).await;
    let path = dir.path().join("busy.xml");
    std::fs::write(&path, response_element(&r.body)).unwrap();
    files.push(path);

    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(&files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
}

/// With `schema_dir` set, a request Exchange's schemas reject gets ErrorSchemaValidation.
#[tokio::test]
async fn requests_are_schema_checked_when_asked() {
    let dir = serversync_testkit::ews::schema_dir();
    let s = setup(EwsConfig {
        schema_dir: Some(dir),
        ..EwsConfig::default()
    })
    .await;
    assert!(
        call(&s, &as_alice(GET_INBOX))
            .await
            .body
            .contains("NoError")
    );
    // FolderIds before FolderShape: out of schema order.
    let r = call(
        &s,
        &as_alice(
            "<m:GetFolder><m:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:FolderIds>\
             <m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape></m:GetFolder>",
        ),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("ErrorSchemaValidation"), "{}", r.body);
    assert!(r.body.contains("<t:Violation>"), "{}", r.body);
}

/// The `m:…Response` element of an envelope, with the namespaces it uses declared on it.
fn response_element(envelope: &str) -> String {
    let body = envelope.split_once("<s:Body").unwrap().1;
    let body = &body[body.find('>').unwrap() + 1..];
    let inner = &body[..body.rfind("</s:Body>").unwrap()];
    let close = inner.find('>').unwrap();
    format!(
        "{} xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"{}",
        &inner[..close],
        &inner[close..]
    )
}

/// Calendar items, contacts and tasks as Exchange keeps them: what a CreateItem of each needs
/// and what the server completes, stale ChangeKeys refused, extended properties returned only
/// when asked for and searchable by FindItem, dictionaries set entry by entry, a task's
/// status and percentage kept consistent, and changes by another client in SyncFolderItems.
#[tokio::test]
async fn calendar_items_contacts_and_tasks() {
    let s = setup(EwsConfig::default()).await;
    let uri = "<t:ExtendedFieldURI PropertySetId=\"6a1e3b52-8c0f-4d7e-9b51-2f4c7d9e0a13\" PropertyName=\"serversync-uid\" PropertyType=\"String\"/>";
    let meeting = |attrs: &str| {
        format!(
            "<m:CreateItem{attrs}><m:SavedItemFolderId><t:DistinguishedFolderId Id=\"calendar\"/></m:SavedItemFolderId><m:Items><t:CalendarItem><t:Subject>Review</t:Subject><t:ExtendedProperty>{uri}<t:Value>u-1</t:Value></t:ExtendedProperty><t:Start>2026-12-10T09:00:00Z</t:Start><t:End>2026-12-10T10:00:00Z</t:End></t:CalendarItem></m:Items></m:CreateItem>"
        )
    };
    // A calendar item needs SendMeetingInvitations.
    let r = call(&s, &as_alice(&meeting(""))).await;
    assert!(
        r.body.contains("ErrorSendMeetingInvitationsRequired"),
        "{}",
        r.body
    );
    let r = call(
        &s,
        &as_alice(&meeting(" SendMeetingInvitations=\"SendToNone\"")),
    )
    .await;
    assert!(r.body.contains("<t:CalendarItem><t:ItemId"), "{}", r.body);
    let (id, ck) = item_ids(&r.body).remove(0);

    // The server completed it: the organizer is the mailbox, a UID, a single item.
    let get = |extra: &str| {
        format!(
            "<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape>{extra}</m:ItemShape><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:GetItem>"
        )
    };
    let r = call(&s, &as_alice(&get(""))).await;
    assert!(
        r.body.contains(ALICE) && r.body.contains("<t:UID>"),
        "{}",
        r.body
    );
    assert_eq!(text_of(&r.body, "CalendarItemType"), Some("Single"));
    assert!(
        !r.body.contains("u-1"),
        "extended properties only when asked for"
    );
    let r = call(
        &s,
        &as_alice(&get(&format!(
            "<t:AdditionalProperties>{uri}</t:AdditionalProperties>"
        ))),
    )
    .await;
    assert!(r.body.contains("<t:Value>u-1</t:Value>"), "{}", r.body);

    // FindItem on the extended property.
    let find = |value: &str| {
        format!(
            "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:Restriction><t:IsEqualTo>{uri}<t:FieldURIOrConstant><t:Constant Value=\"{value}\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id=\"calendar\"/></m:ParentFolderIds></m:FindItem>"
        )
    };
    let r = call(&s, &as_alice(&find("u-1"))).await;
    assert_eq!(item_ids(&r.body).len(), 1, "{}", r.body);
    assert_eq!(
        item_ids(&call(&s, &as_alice(&find("u-2"))).await.body).len(),
        0
    );

    // UpdateItem: a calendar item needs SendMeetingInvitationsOrCancellations; a stale
    // ChangeKey is refused with NeverOverwrite.
    let update = |attrs: &str, key: &str| {
        format!(
            "<m:UpdateItem ConflictResolution=\"NeverOverwrite\"{attrs}><m:ItemChanges><t:ItemChange><t:ItemId Id=\"{id}\" ChangeKey=\"{key}\"/><t:Updates><t:SetItemField><t:FieldURI FieldURI=\"calendar:Location\"/><t:CalendarItem><t:Location>Room 2</t:Location></t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"
        )
    };
    let send = " SendMeetingInvitationsOrCancellations=\"SendToNone\"";
    let r = call(&s, &as_alice(&update("", &ck))).await;
    assert!(
        r.body
            .contains("ErrorSendMeetingInvitationsOrCancellationsRequired")
    );
    let r = call(&s, &as_alice(&update(send, &ck))).await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    let r = call(&s, &as_alice(&update(send, &ck))).await;
    assert!(r.body.contains("ErrorIrresolvableConflict"), "{}", r.body);
    // Another client's change shows up in the next sync as an update.
    let sync = |state: &str| {
        format!(
            "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id=\"calendar\"/></m:SyncFolderId>{state}<m:MaxChangesReturned>10</m:MaxChangesReturned></m:SyncFolderItems>"
        )
    };
    let r = call(&s, &as_alice(&sync(""))).await;
    assert_eq!(
        count(&r.body, "<t:Create><t:CalendarItem>"),
        1,
        "{}",
        r.body
    );
    let state = text_of(&r.body, "SyncState").unwrap().to_string();
    s.ews
        .change_item(ALICE, &id, &["<Location>Room 3</Location>"], &[]);
    let r = call(
        &s,
        &as_alice(&sync(&format!("<m:SyncState>{state}</m:SyncState>"))),
    )
    .await;
    assert_eq!(
        count(&r.body, "<t:Update><t:CalendarItem>"),
        1,
        "{}",
        r.body
    );
    // DeleteItem of a calendar item needs SendMeetingCancellations.
    let delete = |attrs: &str| {
        format!(
            "<m:DeleteItem DeleteType=\"MoveToDeletedItems\"{attrs}><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:DeleteItem>"
        )
    };
    let r = call(&s, &as_alice(&delete(""))).await;
    assert!(r.body.contains("ErrorSendMeetingCancellationsRequired"));
    let r = call(
        &s,
        &as_alice(&delete(" SendMeetingCancellations=\"SendToNone\"")),
    )
    .await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    assert!(s.ews.items(ALICE, "calendar").is_empty());
    assert_eq!(s.ews.items(ALICE, "deleteditems")[0].kind, "CalendarItem");

    // A contact's addresses are set one entry at a time; its display name is composed.
    let r = call(
        &s,
        &as_alice(
            "<m:CreateItem MessageDisposition=\"SaveOnly\"><m:Items><t:Contact><t:GivenName>Ann</t:GivenName><t:EmailAddresses><t:Entry Key=\"EmailAddress1\">ann@example.test</t:Entry></t:EmailAddresses><t:Surname>Lee</t:Surname></t:Contact></m:Items></m:CreateItem>",
        ),
    )
    .await;
    let (cid, cck) = item_ids(&r.body).remove(0);
    let r = call(
        &s,
        &as_alice(&format!(
            "<m:UpdateItem ConflictResolution=\"NeverOverwrite\"><m:ItemChanges><t:ItemChange><t:ItemId Id=\"{cid}\" ChangeKey=\"{cck}\"/><t:Updates><t:SetItemField><t:IndexedFieldURI FieldURI=\"contacts:EmailAddress\" FieldIndex=\"EmailAddress2\"/><t:Contact><t:EmailAddresses><t:Entry Key=\"EmailAddress2\">a.lee@example.org</t:Entry></t:EmailAddresses></t:Contact></t:SetItemField><t:DeleteItemField><t:IndexedFieldURI FieldURI=\"contacts:EmailAddress\" FieldIndex=\"EmailAddress1\"/></t:DeleteItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"
        )),
    )
    .await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    let xml = s.ews.item_xml(ALICE, &cid).unwrap();
    assert!(
        xml.contains("<t:DisplayName>Ann Lee</t:DisplayName>"),
        "{xml}"
    );
    assert!(
        xml.contains("<t:EmailAddresses><t:Entry Key=\"EmailAddress2\">a.lee@example.org</t:Entry></t:EmailAddresses>"),
        "{xml}"
    );

    // A completed task is 100 % complete.
    let r = call(
        &s,
        &as_alice(
            "<m:CreateItem MessageDisposition=\"SaveOnly\"><m:Items><t:Task><t:Subject>Call</t:Subject><t:Status>Completed</t:Status></t:Task></m:Items></m:CreateItem>",
        ),
    )
    .await;
    let (tid, _) = item_ids(&r.body).remove(0);
    let xml = s.ews.item_xml(ALICE, &tid).unwrap();
    assert!(
        xml.contains("<t:PercentComplete>100</t:PercentComplete>")
            && xml.contains("<t:IsComplete>true</t:IsComplete>"),
        "{xml}"
    );
    assert_eq!(s.ews.items(ALICE, "tasks")[0].kind, "Task");
}

/// Occurrences of a series ([MS-OXWSMTGS]): DeleteItem of an `OccurrenceItemId` cancels one
/// (a DeletedOccurrence at its original start, counted in the series' time zone; the master's
/// ChangeKey changes and SyncFolderItems reports it updated); UpdateItem of one moves and
/// renames it (a ModifiedOccurrence with its Start, End and OriginalStart; GetItem of its
/// ItemId shows what it has of its own); errors as Exchange answers them. Requests are
/// schema-checked.
#[tokio::test]
async fn occurrences_of_a_series() {
    let s = setup(EwsConfig {
        schema_dir: Some(serversync_testkit::ews::schema_dir()),
        ..EwsConfig::default()
    })
    .await;
    // Thursdays at 10:00 in Berlin, four times, across the start of summer time (28 March
    // 2027): 09:00Z twice, then 08:00Z.
    let zone = "<StartTimeZone Id=\"W. Europe Standard Time\"/><EndTimeZone Id=\"W. Europe Standard Time\"/>";
    let master = s.ews.create_item(
        ALICE,
        "calendar",
        &format!(
            "<CalendarItem><Subject>Standup</Subject><Location>Room 1</Location>\
             <Start>2027-03-18T09:00:00Z</Start><End>2027-03-18T09:30:00Z</End>\
             <Recurrence><WeeklyRecurrence><Interval>1</Interval><DaysOfWeek>Thursday</DaysOfWeek>\
             </WeeklyRecurrence><NumberedRecurrence><StartDate>2027-03-18</StartDate>\
             <NumberOfOccurrences>4</NumberOfOccurrences></NumberedRecurrence></Recurrence>{zone}</CalendarItem>"
        ),
    );
    let single = s.ews.create_item(
        ALICE,
        "calendar",
        "<CalendarItem><Subject>Once</Subject><Start>2027-03-18T09:00:00Z</Start><End>2027-03-18T10:00:00Z</End></CalendarItem>",
    );
    let get = |ids: &str| {
        as_alice(&format!(
            "<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"
        ))
    };
    let item_id = |id: &str| format!("<t:ItemId Id=\"{id}\"/>");
    let occ = |master: &str, n: i32| {
        format!("<t:OccurrenceItemId RecurringMasterId=\"{master}\" InstanceIndex=\"{n}\"/>")
    };
    let sync = |state: Option<&str>| {
        as_alice(&format!(
            "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>\
             <m:SyncFolderId><t:DistinguishedFolderId Id=\"calendar\"/></m:SyncFolderId>{}\
             <m:MaxChangesReturned>100</m:MaxChangesReturned></m:SyncFolderItems>",
            state
                .map(|s| format!("<m:SyncState>{s}</m:SyncState>"))
                .unwrap_or_default()
        ))
    };
    let delete = |ids: &str, attrs: &str| {
        as_alice(&format!(
            "<m:DeleteItem DeleteType=\"MoveToDeletedItems\"{attrs}><m:ItemIds>{ids}</m:ItemIds></m:DeleteItem>"
        ))
    };
    let none = " SendMeetingCancellations=\"SendToNone\"";
    let r = call(&s, &get(&item_id(&master))).await;
    let ck0 = item_ids(&r.body).remove(0).1;
    let r = call(&s, &sync(None)).await;
    let state = text_of(&r.body, "SyncState").unwrap().to_string();

    // Cancel the third (1 April, after the clocks changed: 08:00Z).
    let r = call(&s, &delete(&occ(&master, 3), "")).await;
    assert!(
        r.body.contains("ErrorSendMeetingCancellationsRequired"),
        "{}",
        r.body
    );
    let r = call(&s, &delete(&occ(&master, 3), none)).await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    let r = call(&s, &get(&item_id(&master))).await;
    assert!(
        r.body.contains(
            "<t:DeletedOccurrences><t:DeletedOccurrence><t:Start>2027-04-01T08:00:00Z</t:Start>"
        ),
        "{}",
        r.body
    );
    let ck1 = item_ids(&r.body).remove(0).1;
    assert_ne!(ck1, ck0, "the master's ChangeKey changes");
    assert_eq!(
        s.ews.items(ALICE, "deleteditems").len(),
        0,
        "an occurrence is not moved anywhere"
    );
    let r = call(&s, &sync(Some(&state))).await;
    assert_eq!(count(&r.body, "<t:Update>"), 1, "{}", r.body);
    assert!(r.body.contains(&master), "{}", r.body);

    // Errors: deleted before, past the end, below the start, not a series.
    for (ids, code) in [
        (
            occ(&master, 3),
            "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
        ),
        (
            occ(&master, 5),
            "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
        ),
        (
            occ(&master, 0),
            "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
        ),
        (
            occ(&single, 1),
            "ErrorCalendarCannotUseIdForRecurringMasterId",
        ),
    ] {
        let r = call(&s, &delete(&ids, none)).await;
        assert_eq!(text_of(&r.body, "ResponseCode"), Some(code), "{ids}");
        let r = call(&s, &get(&ids)).await;
        assert_eq!(text_of(&r.body, "ResponseCode"), Some(code), "{ids}");
    }

    // Move the second three hours later and rename it.
    let update = |id: &str, start: &str, end: &str, attrs: &str| {
        as_alice(&format!(
            "<m:UpdateItem MessageDisposition=\"SaveOnly\" ConflictResolution=\"AlwaysOverwrite\"{attrs}><m:ItemChanges><t:ItemChange>{id}<t:Updates>\
             <t:SetItemField><t:FieldURI FieldURI=\"item:Subject\"/><t:CalendarItem><t:Subject>Standup (late)</t:Subject></t:CalendarItem></t:SetItemField>\
             <t:SetItemField><t:FieldURI FieldURI=\"calendar:Start\"/><t:CalendarItem><t:Start>{start}</t:Start></t:CalendarItem></t:SetItemField>\
             <t:SetItemField><t:FieldURI FieldURI=\"calendar:End\"/><t:CalendarItem><t:End>{end}</t:End></t:CalendarItem></t:SetItemField>\
             </t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"
        ))
    };
    let send = " SendMeetingInvitationsOrCancellations=\"SendToNone\"";
    let r = call(
        &s,
        &update(
            &occ(&master, 2),
            "2027-03-25T12:00:00Z",
            "2027-03-25T12:30:00Z",
            "",
        ),
    )
    .await;
    assert!(
        r.body
            .contains("ErrorSendMeetingInvitationsOrCancellationsRequired"),
        "{}",
        r.body
    );
    let r = call(
        &s,
        &update(
            &occ(&master, 2),
            "2027-03-25T12:00:00Z",
            "2027-03-25T12:30:00Z",
            send,
        ),
    )
    .await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    let occurrence = item_ids(&r.body).remove(0).0;
    let r = call(&s, &get(&item_id(&master))).await;
    assert!(
        r.body.contains(&format!(
            "<t:ModifiedOccurrences><t:Occurrence><t:ItemId Id=\"{occurrence}\"/>\
             <t:Start>2027-03-25T12:00:00Z</t:Start><t:End>2027-03-25T12:30:00Z</t:End>\
             <t:OriginalStart>2027-03-25T09:00:00Z</t:OriginalStart></t:Occurrence></t:ModifiedOccurrences>"
        )),
        "{}",
        r.body
    );
    assert_eq!(count(&r.body, "Standup (late)"), 0, "{}", r.body);
    assert_ne!(item_ids(&r.body).remove(0).1, ck1);
    // The occurrence by its ItemId and by its index: its own subject, the series' location.
    for ids in [item_id(&occurrence), occ(&master, 2)] {
        let r = call(&s, &get(&ids)).await;
        assert_eq!(text_of(&r.body, "Subject"), Some("Standup (late)"), "{ids}");
        assert_eq!(text_of(&r.body, "Location"), Some("Room 1"));
        assert_eq!(text_of(&r.body, "CalendarItemType"), Some("Exception"));
        assert_eq!(
            text_of(&r.body, "OriginalStart"),
            Some("2027-03-25T09:00:00Z")
        );
        assert!(!r.body.contains("<t:Recurrence>"), "{}", r.body);
    }
    let r = call(&s, &get(&occ(&master, 4))).await;
    assert_eq!(text_of(&r.body, "CalendarItemType"), Some("Occurrence"));
    assert_eq!(text_of(&r.body, "Start"), Some("2027-04-08T08:00:00Z"));
    assert_eq!(text_of(&r.body, "Subject"), Some("Standup"));
    // Not onto the day of a neighbour (the first, onto the second's day).
    let r = call(
        &s,
        &update(
            &occ(&master, 1),
            "2027-03-25T07:00:00Z",
            "2027-03-25T07:30:00Z",
            send,
        ),
    )
    .await;
    assert_eq!(
        text_of(&r.body, "ResponseCode"),
        Some("ErrorOccurrenceCrossingBoundary")
    );
    // Deleting the changed occurrence by its ItemId cancels it.
    let r = call(&s, &delete(&item_id(&occurrence), none)).await;
    assert!(r.body.contains("NoError"), "{}", r.body);
    let r = call(&s, &get(&item_id(&master))).await;
    assert_eq!(count(&r.body, "<t:DeletedOccurrence>"), 2, "{}", r.body);
    assert!(!r.body.contains("ModifiedOccurrences"), "{}", r.body);
    let r = call(&s, &get(&item_id(&occurrence))).await;
    assert_eq!(text_of(&r.body, "ResponseCode"), Some("ErrorItemNotFound"));
}
