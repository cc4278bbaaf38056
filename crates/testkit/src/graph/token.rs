//! The Entra ID side: `POST /{tenant}/oauth2/v2.0/token` (client credentials, with a client
//! secret or a `private_key_jwt` certificate assertion) and the OpenID configuration, with
//! Entra's error bodies (`AADSTSnnnn` codes).

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::Utc;
use serde_json::{Value, json};

use super::{App, DoubleState, IssuedToken, Reply, Shared, lock};

/// Turns an Entra reply into HTTP (no Graph innerError; `Cache-Control: no-store`).
pub(super) fn finish_entra(reply: Reply) -> Response<Body> {
    let mut r = Response::new(Body::from(reply.body));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            h.append(k, v);
        }
    }
    r
}

/// An Entra error body: `{error, error_description: "AADSTSn: text\r\nTrace ID: ..",
/// error_codes, timestamp, trace_id, correlation_id, error_uri}`.
pub(super) fn entra_error(status: u16, error: &str, code: u32, text: &str) -> Reply {
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    Reply::json(status, &body, None)
}

/// An injected fault on the token endpoint, in Entra's shape: `Fault::Http`'s code becomes
/// `error` and its message the description (an `AADSTSn: ` prefix gives the code number);
/// throttling becomes `temporarily_unavailable` with its `Retry-After`.
pub(super) fn entra_fault(graph_reply: Reply) -> Reply {
    let v: Value = serde_json::from_slice(&graph_reply.body).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("server_error");
    let message = v["error"]["message"].as_str().unwrap_or("");
    let (error, text) = match code {
        "TooManyRequests" | "ApplicationThrottled" | "ServiceUnavailable" => (
            "temporarily_unavailable",
            "The service is temporarily unavailable. Try again later.",
        ),
        c => (c, message),
    };
    let (number, text) = text
        .strip_prefix("AADSTS")
        .and_then(|r| r.split_once(": "))
        .and_then(|(n, t)| n.parse::<u32>().ok().map(|n| (n, t)))
        .unwrap_or((50000, text));
    let mut r = entra_error(graph_reply.status, error, number, text);
    r.headers = graph_reply.headers;
    r
}

fn unknown_tenant(tenant: &str) -> Reply {
    entra_error(
        400,
        "invalid_request",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
             are signing into the correct cloud. Check with your subscription administrator, this \
             may happen if there are no active subscriptions for the tenant."
        ),
    )
}

/// Resolves a tenant id or domain to the tenant id.
fn resolve_tenant(s: &DoubleState, tenant: &str) -> Option<String> {
    let t = tenant.to_lowercase();
    if s.tenants.contains_key(&t) {
        return Some(t);
    }
    s.tenants
        .iter()
        .find(|(_, d)| **d == t)
        .map(|(id, _)| id.clone())
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(super) fn openid_configuration(state: &Shared, tenant: &str) -> Reply {
    let s = lock(state);
    let Some(tid) = resolve_tenant(&s, tenant) else {
        return unknown_tenant(tenant);
    };
    let base = s.base();
    Reply::json(
        200,
        &json!({
            "token_endpoint": format!("{base}/{tid}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/{tid}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{base}/{tid}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": format!("{base}/oidc/userinfo"),
            "authorization_endpoint": format!("{base}/{tid}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/{tid}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/{tid}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid"],
            "kerberos_endpoint": format!("{base}/{tid}/kerberos"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": base.trim_start_matches("https://"),
            "rbac_url": "https://pas.windows.net",
        }),
        None,
    )
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(super) fn token(state: &Shared, tenant: &str, body: &[u8]) -> Reply {
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut s = lock(state);
    let Some(tid) = resolve_tenant(&s, tenant) else {
        return unknown_tenant(tenant);
    };
    let missing = |p: &str| {
        entra_error(
            400,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{p}'."),
        )
    };
    let Some(grant) = form.get("grant_type") else {
        return missing("grant_type");
    };
    if grant != "client_credentials" {
        return entra_error(
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    let Some(client_id) = form.get("client_id").map(|c| c.to_lowercase()) else {
        return missing("client_id");
    };
    let Some(scope) = form.get("scope") else {
        return missing("scope");
    };
    let base = s.base();
    let scope_ok = scope.split_whitespace().count() == 1
        && scope
            .strip_suffix("/.default")
            .map(|r| r.trim_end_matches('/'))
            .is_some_and(|r| {
                r.eq_ignore_ascii_case("https://graph.microsoft.com")
                    || r.eq_ignore_ascii_case(&base)
                    || r == "00000003-0000-0000-c000-000000000000"
            });
    let Some(app) = s.apps.get(&(tid.clone(), client_id.clone())).cloned() else {
        return entra_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You may \
                 have sent your authentication request to the wrong tenant."
            ),
        );
    };
    // Client authentication.
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return entra_error(
                400,
                "invalid_request",
                50027,
                "Invalid JWT token. The client_assertion_type is not supported.",
            );
        }
        let token_url = format!("{base}/{tenant}/oauth2/v2.0/token");
        let token_url_id = format!("{base}/{tid}/oauth2/v2.0/token");
        if let Err(why) =
            verify_assertion(&app, &client_id, assertion, &[&token_url, &token_url_id])
        {
            return entra_error(401, "invalid_client", 700027, &why);
        }
    } else if let Some(secret) = form.get("client_secret") {
        if app.secret.is_empty() || *secret != app.secret {
            return entra_error(
                401,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request \
                     is the client secret value, not the client secret ID, for a secret added to \
                     app '{client_id}'."
                ),
            );
        }
        if app.secret_expired {
            return entra_error(
                401,
                "invalid_client",
                7000222,
                &format!(
                    "The provided client secret keys for app '{client_id}' are expired. Visit \
                     the Azure portal to create new keys for your app: \
                     https://aka.ms/NewClientSecret, or consider using certificate credentials \
                     for added security: https://aka.ms/certCreds."
                ),
            );
        }
    } else {
        return entra_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or \
             'client_secret'.",
        );
    }
    if !scope_ok {
        return entra_error(
            400,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must \
                 have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        );
    }
    if app.mfa {
        return entra_error(
            400,
            "invalid_grant",
            53003,
            "Access has been blocked by Conditional Access policies. The access policy does not \
             allow token issuance.",
        );
    }
    let lifetime = s.cfg.token_lifetime;
    let now = Utc::now().timestamp();
    let exp = now + i64::try_from(lifetime.as_secs()).unwrap_or(3599);
    let header = B64URL.encode(br#"{"typ":"JWT","alg":"RS256","kid":"graph-double"}"#);
    let mut claims = json!({
        "aud": "https://graph.microsoft.com",
        "iss": format!("https://sts.windows.net/{tid}/"),
        "iat": now, "nbf": now, "exp": exp,
        "app_displayname": client_id,
        "appid": client_id,
        "idtyp": "app",
        "oid": uuid::Uuid::new_v4().to_string(),
        "tid": tid,
        "ver": "1.0",
        "uti": uuid::Uuid::new_v4().simple().to_string(),
    });
    if !app.roles.is_empty() {
        claims["roles"] = json!(app.roles);
    }
    let payload = B64URL.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let sig = B64URL.encode(uuid::Uuid::new_v4().as_bytes());
    let access_token = format!("{header}.{payload}.{sig}");
    s.tokens.insert(
        access_token.clone(),
        IssuedToken {
            tenant: tid,
            client_id,
            roles: app.roles.clone(),
            expires: Instant::now() + lifetime,
            revoked: false,
        },
    );
    let secs = lifetime.as_secs();
    Reply::json(
        200,
        &json!({
            "token_type": "Bearer",
            "expires_in": secs,
            "ext_expires_in": secs,
            "access_token": access_token,
        }),
        None,
    )
}

/// Checks a `private_key_jwt` client assertion: RS256, `x5t` or `x5t#S256` naming a
/// registered certificate, aud = the token URL, iss = sub = client id, exp in the future,
/// nbf not in the future, a jti, and the signature by that certificate's key.
fn verify_assertion(
    app: &App,
    client_id: &str,
    jwt: &str,
    token_urls: &[&str],
) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, p, sig] = parts.as_slice() else {
        return Err("Client assertion is not a well-formed JWT.".into());
    };
    let decode = |s: &str| -> Result<Value, String> {
        let bytes = B64URL
            .decode(s.trim_end_matches('='))
            .map_err(|_| "Client assertion contains an invalid base64url segment.".to_string())?;
        serde_json::from_slice(&bytes)
            .map_err(|_| "Client assertion contains invalid JSON.".to_string())
    };
    let header = decode(h)?;
    let claims = decode(p)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
        return Err(
            "Client assertion failed signature validation. The algorithm is not supported.".into(),
        );
    }
    let cert = app.certs.iter().find(|der| {
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        header.get("x5t").and_then(|v| v.as_str()) == Some(B64URL.encode(sha1.as_ref()).as_str())
            || header.get("x5t#S256").and_then(|v| v.as_str())
                == Some(B64URL.encode(sha256.as_ref()).as_str())
    });
    let Some(cert) = cert else {
        let thumb = header
            .get("x5t")
            .or_else(|| header.get("x5t#S256"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        return Err(format!(
            "The certificate with identifier used to sign the client assertion is not \
             registered on application. [Reason - The key was not found., Thumbprint of key used \
             by client: '{thumb}', Please visit the Azure Portal, Graph Explorer or directly use \
             MS Graph to see configured keys for app Id '{client_id}'.]"
        ));
    };
    let now = Utc::now().timestamp();
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => token_urls.iter().any(|u| u.eq_ignore_ascii_case(a)),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|a| a.as_str())
            .any(|a| token_urls.iter().any(|u| u.eq_ignore_ascii_case(a))),
        _ => false,
    };
    if !aud_ok {
        return Err(
            "The audience claim value is invalid. Client assertion audience claim \
                    does not match the token endpoint."
                .into(),
        );
    }
    let str_claim = |k: &str| {
        claims
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_lowercase)
    };
    if str_claim("iss").as_deref() != Some(client_id)
        || str_claim("sub").as_deref() != Some(client_id)
    {
        return Err(
            "The issuer and subject claims of the client assertion must be the client id.".into(),
        );
    }
    if str_claim("jti").is_none_or(|j| j.is_empty()) {
        return Err("Client assertion must contain a jti claim.".into());
    }
    match claims.get("exp").and_then(|v| v.as_i64()) {
        Some(exp) if exp > now => {}
        _ => {
            return Err("Client assertion contains an invalid or expired exp claim.".into());
        }
    }
    if claims
        .get("nbf")
        .and_then(|v| v.as_i64())
        .is_some_and(|nbf| nbf > now + 300)
    {
        return Err("Client assertion is not yet valid (nbf).".into());
    }
    let signature = B64URL
        .decode(sig.trim_end_matches('='))
        .map_err(|_| "Client assertion failed signature validation.".to_string())?;
    let cert_der = rustls_pki_types::CertificateDer::from(cert.as_slice());
    let ee = webpki::EndEntityCert::try_from(&cert_der)
        .map_err(|e| format!("Client assertion certificate could not be read: {e:?}"))?;
    let signed = format!("{h}.{p}");
    ee.verify_signature(
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        signed.as_bytes(),
        &signature,
    )
    .map_err(|_| "Client assertion failed signature validation.".to_string())
}
