//! Small field checks shared by the configuration types.

use crate::ValidationErrors;

/// A plausible email address: one `@`, non-empty local part, a dotted or bracketed domain
/// without spaces. Deliberately simple: the mail server is the final judge.
pub fn is_email_address(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && domain.len() <= 253
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.contains('@')
}

/// A host name or IP literal usable for a TCP connection.
pub fn is_host(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// An absolute http(s) URL with a valid host.
pub fn is_http_url(s: &str) -> bool {
    let rest = match s.split_once("://") {
        Some(("https" | "http", rest)) => rest,
        _ => return false,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || port.chars().all(|c| c.is_ascii_digit()) => {
            if port.parse::<u16>().is_err() {
                return false;
            }
            h
        }
        _ => authority,
    };
    is_host(host)
}

pub(crate) fn check_range(
    errors: &mut ValidationErrors,
    field: &str,
    value: i64,
    min: i64,
    max: i64,
) {
    if value < min || value > max {
        errors.push(
            "out_of_range",
            field,
            format!("must be between {min} and {max}, got {value}"),
        );
    }
}

pub(crate) fn check_required(errors: &mut ValidationErrors, field: &str, value: &str) {
    if value.trim().is_empty() {
        errors.push("required", field, "is required: enter a value");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses() {
        for ok in ["a@b.c", "support@example.test", "x.y+z@[127.0.0.1]"] {
            assert!(is_email_address(ok), "{ok}");
        }
        for bad in ["", "a", "@b", "a@", "a b@c.d", "a@.b", "a@b..c", "a@b."] {
            assert!(!is_email_address(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_and_urls() {
        for ok in ["mail.example.com", "127.0.0.1", "::1", "[::1]", "localhost"] {
            assert!(is_host(ok), "{ok}");
        }
        for bad in ["", "a..b", "-a.b", "a b", "x/y"] {
            assert!(!is_host(bad), "{bad}");
        }
        assert!(is_http_url(
            "https://outlook.office365.com/EWS/Exchange.asmx"
        ));
        assert!(is_http_url("http://127.0.0.1:8080/x"));
        assert!(!is_http_url("ftp://x"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("https://a:99999/"));
    }
}
