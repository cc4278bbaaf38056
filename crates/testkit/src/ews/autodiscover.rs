//! Autodiscover: POX ([MS-OXDSCLI], `/autodiscover/autodiscover.xml`) and SOAP
//! `GetUserSettings` ([MS-OXWSADISC], `/autodiscover/autodiscover.svc`).

use axum::body::Body;
use axum::http::{Response, StatusCode};

use super::xml::{Node, esc};
use super::{DoubleState, Shared, XML_UTF8, lock, respond};
use crate::tls::TLS_SERVER_NAME;

const NS_RESPONSE: &str = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";
const NS_OUTLOOK: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";
const NS_ADISC: &str = "http://schemas.microsoft.com/exchange/2010/Autodiscover";

fn base(s: &DoubleState) -> String {
    format!("https://{TLS_SERVER_NAME}:{}", s.port)
}

/// A POX `<Error>` answer (HTTP 200, as Exchange sends it).
pub(super) fn pox_error(code: u16, message: &str) -> Response<Body> {
    let now = chrono::Utc::now().format("%H:%M:%S%.6f");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"{NS_RESPONSE}\">\
         <Response><Error Time=\"{now}\" Id=\"2477272013\"><ErrorCode>{code}</ErrorCode>\
         <Message>{}</Message><DebugData /></Error></Response></Autodiscover>",
        esc(message)
    );
    respond(StatusCode::OK, XML_UTF8, body)
}

/// POX autodiscover.
pub(super) fn pox(state: &Shared, doc: &Node) -> Response<Body> {
    let s = lock(state);
    let Some(request) = doc.child("Request").filter(|_| doc.name == "Autodiscover") else {
        return pox_error(600, "Invalid Request");
    };
    let Some(email) = request.child_text("EMailAddress").filter(|e| !e.is_empty()) else {
        return pox_error(600, "Invalid Request");
    };
    let schema = request
        .child_text("AcceptableResponseSchema")
        .unwrap_or(NS_OUTLOOK);
    if schema != NS_OUTLOOK {
        return pox_error(601, "Provider is not available.");
    }
    let key = email.to_lowercase();
    let account = if let Some(to) = s.redirects.get(&key) {
        format!(
            "<Account><AccountType>email</AccountType><Action>redirectAddr</Action>\
             <RedirectAddr>{}</RedirectAddr></Account>",
            esc(to)
        )
    } else if let Some(mb) = s.mailboxes.get(&key) {
        let b = base(&s);
        let (major, minor, build, _, _) = s.cfg.version.server_version_info();
        // ServerVersion: the 32-bit version word in hex (major << 28 | minor << 22 | build).
        let server_version = (major << 28) | (minor << 22) | build;
        let protocol = |kind: &str, ews: &str| {
            format!(
                "<Protocol><Type>{kind}</Type><Server>exch01.{d}</Server><ServerDN>/o=Contoso/ou=Exchange Administrative Group/cn=Configuration/cn=Servers/cn=EXCH01</ServerDN>\
                 <ServerVersion>{server_version:08X}</ServerVersion><AuthPackage>Ntlm</AuthPackage>\
                 <ASUrl>{b}/EWS/Exchange.asmx</ASUrl><EwsUrl>{ews}</EwsUrl><EmwsUrl>{ews}</EmwsUrl>\
                 <OOFUrl>{b}/EWS/Exchange.asmx</OOFUrl><UMUrl>{b}/EWS/UM2007Legacy.asmx</UMUrl>\
                 <OABUrl>{b}/OAB/</OABUrl><ServerExclusiveConnect>off</ServerExclusiveConnect></Protocol>",
                d = s.cfg.domain
            )
        };
        let ews = format!("{b}/EWS/Exchange.asmx");
        format!(
            "<User><DisplayName>{}</DisplayName><LegacyDN>/o=Contoso/ou=Exchange Administrative Group/cn=Recipients/cn={}</LegacyDN>\
             <AutoDiscoverSMTPAddress>{}</AutoDiscoverSMTPAddress><DeploymentId>5b0e5c6e-7f3c-4f36-9a53-2f2c8f2a7d11</DeploymentId></User>\
             <Account><AccountType>email</AccountType><Action>settings</Action><MicrosoftOnline>False</MicrosoftOnline>{}{}</Account>",
            esc(&mb.display_name),
            esc(&mb.display_name),
            esc(&mb.smtp),
            protocol("EXCH", &ews),
            protocol("EXPR", &ews)
        )
    } else {
        return pox_error(500, "The email address can't be found.");
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"{NS_RESPONSE}\">\
         <Response xmlns=\"{NS_OUTLOOK}\">{account}</Response></Autodiscover>"
    );
    respond(StatusCode::OK, XML_UTF8, body)
}

fn soap_envelope(s: &DoubleState, action: &str, body: &str) -> String {
    let (major, minor, build, rev, _) = s.cfg.version.server_version_info();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:a=\"http://www.w3.org/2005/08/addressing\"><s:Header>\
         <a:Action s:mustUnderstand=\"1\">{NS_ADISC}/Autodiscover/{action}</a:Action>\
         <h:ServerVersionInfo xmlns:h=\"{NS_ADISC}\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\">\
         <h:MajorVersion>{major}</h:MajorVersion><h:MinorVersion>{minor}</h:MinorVersion>\
         <h:MajorBuildNumber>{build}</h:MajorBuildNumber><h:MinorBuildNumber>{rev}</h:MinorBuildNumber>\
         <h:Version>Exchange2013_SP1</h:Version></h:ServerVersionInfo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
}

/// SOAP autodiscover (`GetUserSettings` only).
pub(super) fn soap(state: &Shared, doc: &Node) -> Response<Body> {
    let s = lock(state);
    let Some(req) = doc
        .path(&["Body", "GetUserSettingsRequestMessage", "Request"])
        .filter(|_| doc.name == "Envelope")
    else {
        let body = "<s:Fault><faultcode xmlns:a=\"http://schemas.microsoft.com/ws/2005/05/addressing/none\">a:ActionNotSupported</faultcode>\
                    <faultstring xml:lang=\"en-US\">Only GetUserSettings is supported by this test double.</faultstring></s:Fault>";
        return respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            XML_UTF8,
            soap_envelope(&s, "GetUserSettingsResponse", body),
        );
    };
    let wanted: Vec<String> = req
        .child("RequestedSettings")
        .map(|r| {
            r.children
                .iter()
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let b = base(&s);
    let mut users = String::new();
    for user in req
        .child("Users")
        .map(|u| u.children.as_slice())
        .unwrap_or(&[])
    {
        let addr = user.child_text("Mailbox").unwrap_or("").to_string();
        let key = addr.to_lowercase();
        let (code, message, redirect, settings) = if let Some(to) = s.redirects.get(&key) {
            (
                "RedirectAddress",
                "Redirection address.".to_string(),
                Some(to.clone()),
                String::new(),
            )
        } else if let Some(mb) = s.mailboxes.get(&key) {
            let ews = format!("{b}/EWS/Exchange.asmx");
            let mut xml = String::new();
            let mut errors = String::new();
            for name in &wanted {
                let value = match name.as_str() {
                    "UserDisplayName" => Some(mb.display_name.clone()),
                    "UserDN" => Some(format!("/o=Contoso/ou=Exchange Administrative Group/cn=Recipients/cn={}", mb.display_name)),
                    "UserDeploymentId" => Some("5b0e5c6e-7f3c-4f36-9a53-2f2c8f2a7d11".into()),
                    "ExternalEwsUrl" | "InternalEwsUrl" => Some(ews.clone()),
                    "GroupingInformation" => Some("EXCH01-DAG".into()),
                    "EwsSupportedSchemas" => Some(match s.cfg.version {
                        super::ExchangeServerVersion::Exchange2010Sp3 => "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2".into(),
                        super::ExchangeServerVersion::Exchange2013Sp1 => "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, Exchange2013, Exchange2013_SP1".into(),
                        _ => "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, Exchange2013, Exchange2013_SP1, Exchange2015, Exchange2016".into(),
                    }),
                    "CasVersion" => {
                        let (major, minor, build, rev, _) = s.cfg.version.server_version_info();
                        Some(format!("{major}.{minor}.{build}.{rev}"))
                    }
                    _ => None,
                };
                match value {
                    Some(v) => xml.push_str(&format!(
                        "<UserSetting i:type=\"StringSetting\"><Name>{}</Name><Value>{}</Value></UserSetting>",
                        esc(name),
                        esc(&v)
                    )),
                    None => errors.push_str(&format!(
                        "<UserSettingError><ErrorCode>InvalidSetting</ErrorCode><ErrorMessage>The requested setting is invalid.</ErrorMessage><SettingName>{}</SettingName></UserSettingError>",
                        esc(name)
                    )),
                }
            }
            (
                "NoError",
                "No error.".to_string(),
                None,
                format!(
                    "<UserSettingErrors>{errors}</UserSettingErrors><UserSettings>{xml}</UserSettings>"
                ),
            )
        } else {
            (
                "InvalidUser",
                format!("Invalid user: '{addr}'"),
                None,
                String::new(),
            )
        };
        let redirect = match redirect {
            Some(r) => format!("<RedirectTarget>{}</RedirectTarget>", esc(&r)),
            None => "<RedirectTarget i:nil=\"true\"/>".into(),
        };
        let settings = if settings.is_empty() {
            "<UserSettingErrors/><UserSettings/>".to_string()
        } else {
            settings
        };
        users.push_str(&format!(
            "<UserResponse><ErrorCode>{code}</ErrorCode><ErrorMessage>{}</ErrorMessage>{redirect}{settings}</UserResponse>",
            esc(&message)
        ));
    }
    let body = format!(
        "<GetUserSettingsResponseMessage xmlns=\"{NS_ADISC}\"><Response xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\">\
         <ErrorCode>NoError</ErrorCode><ErrorMessage/><UserResponses>{users}</UserResponses></Response></GetUserSettingsResponseMessage>"
    );
    respond(
        StatusCode::OK,
        XML_UTF8,
        soap_envelope(&s, "GetUserSettingsResponse", &body),
    )
}
