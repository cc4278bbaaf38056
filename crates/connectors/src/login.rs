//! [`Login`]: the credentials a connection authenticates with, and the SASL encodings the
//! protocols share (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serversync_model::Secret;
use serversync_model::secret::REDACTED;

/// Credentials for one mailbox. The secret redacts itself in `Debug`; messages that quote a
/// server's answer after a login attempt pass it through [`Login::redact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// User name and password (IMAP `LOGIN` / `AUTHENTICATE PLAIN`, POP3 `USER`/`PASS` or
    /// `AUTH PLAIN`, SMTP `AUTH PLAIN` / `AUTH LOGIN`).
    Password { username: String, password: Secret },
    /// An OAuth 2.0 access token, sent with SASL XOAUTH2 (Gmail, Microsoft 365), or
    /// OAUTHBEARER (RFC 7628) when the server offers only that.
    XOAuth2 {
        username: String,
        access_token: Secret,
    },
}

impl Login {
    pub fn password(username: impl Into<String>, password: Secret) -> Self {
        Login::Password {
            username: username.into(),
            password,
        }
    }

    pub fn xoauth2(username: impl Into<String>, access_token: Secret) -> Self {
        Login::XOAuth2 {
            username: username.into(),
            access_token,
        }
    }

    pub fn username(&self) -> &str {
        match self {
            Login::Password { username, .. } | Login::XOAuth2 { username, .. } => username,
        }
    }

    fn secret(&self) -> &Secret {
        match self {
            Login::Password { password, .. } => password,
            Login::XOAuth2 { access_token, .. } => access_token,
        }
    }

    /// `text` with the secret and its encodings (as sent on the wire) replaced by
    /// `********`: for quoting server answers in errors and logs.
    pub fn redact(&self, text: &str) -> String {
        let secret = self.secret().expose();
        if secret.is_empty() {
            return text.to_string();
        }
        let mut out = text.to_string();
        let encodings = [
            sasl_plain(self.username(), secret),
            sasl_xoauth2(self.username(), secret),
            sasl_oauthbearer(self.username(), secret),
            B64.encode(secret),
            secret.to_string(),
        ];
        for needle in encodings {
            if !needle.is_empty() {
                out = out.replace(&needle, REDACTED);
            }
        }
        out
    }
}

/// SASL PLAIN initial response (RFC 4616), base64: `\0user\0password`, no authorization id.
pub(crate) fn sasl_plain(username: &str, password: &str) -> String {
    B64.encode(format!("\0{username}\0{password}"))
}

/// SASL XOAUTH2 initial response, base64: `user=U^Aauth=Bearer T^A^A`.
pub(crate) fn sasl_xoauth2(username: &str, token: &str) -> String {
    B64.encode(format!("user={username}\x01auth=Bearer {token}\x01\x01"))
}

/// SASL OAUTHBEARER initial response (RFC 7628), base64: `n,a=U,^Aauth=Bearer T^A^A`, with
/// `,` and `=` in the user name escaped as `=2C` and `=3D` (RFC 5801).
pub(crate) fn sasl_oauthbearer(username: &str, token: &str) -> String {
    let user = username.replace('=', "=3D").replace(',', "=2C");
    B64.encode(format!("n,a={user},\x01auth=Bearer {token}\x01\x01"))
}

/// The bearer mechanism to use with a server offering `offered` (upper-case names):
/// XOAUTH2 when offered, else OAUTHBEARER when offered.
pub(crate) fn bearer_mechanism(offered: impl Fn(&str) -> bool) -> Option<&'static str> {
    ["XOAUTH2", "OAUTHBEARER"].into_iter().find(|m| offered(m))
}

/// The initial response of a bearer `mechanism`, and what acknowledges its error challenge
/// (XOAUTH2: an empty response; OAUTHBEARER: `%x01`, base64 `AQ==`).
pub(crate) fn bearer_initial(
    mechanism: &str,
    username: &str,
    token: &str,
) -> (String, &'static [u8]) {
    if mechanism == "OAUTHBEARER" {
        (sasl_oauthbearer(username, token), b"AQ==")
    } else {
        (sasl_xoauth2(username, token), b"")
    }
}

/// Base64 of any text (SASL LOGIN steps).
pub(crate) fn b64(text: &str) -> String {
    B64.encode(text)
}

/// A base64 server challenge decoded for showing (e.g. the JSON error of a failed
/// XOAUTH2); the raw text if it is not base64.
pub(crate) fn decode_challenge(text: &str) -> String {
    match B64.decode(text.trim()) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_encodings() {
        assert_eq!(sasl_plain("u", "p"), "AHUAcA==");
        assert_eq!(
            B64.decode(sasl_xoauth2("me@x", "tok")).unwrap(),
            b"user=me@x\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(
            decode_challenge("eyJzdGF0dXMiOiI0MDAifQ=="),
            "{\"status\":\"400\"}"
        );
        assert_eq!(decode_challenge("not base64!"), "not base64!");
        assert_eq!(
            B64.decode(sasl_oauthbearer("me,=x@y", "tok")).unwrap(),
            b"n,a=me=2C=3Dx@y,\x01auth=Bearer tok\x01\x01"
        );
        // Gmail's documented example (developers.google.com/gmail/imap/xoauth2-protocol).
        assert_eq!(
            sasl_xoauth2(
                "someuser@example.com",
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
            ),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        assert_eq!(
            bearer_mechanism(|m| m == "OAUTHBEARER"),
            Some("OAUTHBEARER")
        );
        assert_eq!(bearer_mechanism(|_| true), Some("XOAUTH2"));
        assert_eq!(bearer_mechanism(|m| m == "PLAIN"), None);
        assert_eq!(bearer_initial("OAUTHBEARER", "u", "t").1, b"AQ==");
        assert_eq!(bearer_initial("XOAUTH2", "u", "t").1, b"");
    }

    #[test]
    fn redacts_secret_and_encodings() {
        let login = Login::password("bob", Secret::new("hunter2"));
        let plain = sasl_plain("bob", "hunter2");
        let text = format!("BAD hunter2 and {plain} and {}", B64.encode("hunter2"));
        let red = login.redact(&text);
        assert!(!red.contains("hunter2"), "{red}");
        assert!(!red.contains(&plain), "{red}");
        assert!(!red.contains(&B64.encode("hunter2")), "{red}");
        assert!(!format!("{login:?}").contains("hunter2"));
    }
}
