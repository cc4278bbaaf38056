//! One module per area of the admin center; `Page` is what the layout needs.

pub mod assets;
pub mod dashboard;
pub mod forms;
pub mod mailboxes;
pub mod monitor;
pub mod orgs;
pub mod profiles;
pub mod records;
pub mod settings;
pub mod tokens;

use crate::session::Session;
use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

/// What the layout shows around every page.
pub struct Page {
    pub title: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
    pub user: String,
    pub org: String,
    pub csrf: String,
    /// A one-line confirmation after an action (from `?done=`).
    pub notice: Option<String>,
    pub signed_in: bool,
}

impl Page {
    pub fn new(s: &Session, title: &str, nav: &'static str) -> Page {
        Page {
            title: title.to_owned(),
            nav,
            user: s.caller.user.full_name.clone(),
            org: s.org.name.clone(),
            csrf: s.csrf.clone(),
            notice: None,
            signed_in: true,
        }
    }

    pub fn anonymous(title: &str) -> Page {
        Page {
            title: title.to_owned(),
            nav: "",
            user: String::new(),
            org: String::new(),
            csrf: String::new(),
            notice: None,
            signed_in: false,
        }
    }

    pub fn with_notice(mut self, notice: Option<String>) -> Page {
        self.notice = notice.filter(|n| !n.is_empty() && n.len() < 300);
        self
    }
}

/// Renders a template, or a plain 500 naming the problem.
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be rendered: {e}"),
        )
            .into_response(),
    }
}

/// A page for an error from the engine (not found, not allowed, store).
pub fn error(s: &Session, e: impl std::fmt::Display) -> Response {
    let mut r = render(&ErrorPage {
        page: Page::new(s, "Something went wrong", ""),
        message: e.to_string(),
    });
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    page: Page,
    message: String,
}

/// A page for an error of the engine with the status a browser should see: 404 for a record
/// that is not there (or is another organization's), 403 for a missing privilege, else 400.
pub fn fail(s: &Session, e: serversync_engine::AdminError) -> Response {
    use serversync_engine::AdminError;
    let status = match &e {
        AdminError::NotFound { .. } => StatusCode::NOT_FOUND,
        AdminError::Denied(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    with_status(error(s, e), status)
}

/// `r` with `status`.
pub fn with_status(mut r: Response, status: StatusCode) -> Response {
    *r.status_mut() = status;
    r
}

/// A time as the pages show it, or a dash.
pub fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".into())
}

/// A duration as a person reads it: `850 ms`, `4.2 s`, `42 s`, `3 min`, `5 h`, `2 days`,
/// `3 years` (rounded down to the unit shown; negative durations count as none).
pub fn duration(ms: i64) -> String {
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    let ms = ms.max(0);
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match ms {
        _ if ms < 1000 => format!("{ms} ms"),
        _ if ms < 10_000 => format!("{:.1} s", (ms / 100) as f64 / 10.0),
        _ if ms < MIN => format!("{} s", ms / 1000),
        _ if ms < HOUR => format!("{} min", ms / MIN),
        _ if ms < 2 * DAY => format!("{} h", ms / HOUR),
        _ if ms < 730 * DAY => plural(ms / DAY, "day"),
        _ => plural(ms / (365 * DAY), "year"),
    }
}

/// A count with thousands separated (`5005` → `5,005`).
pub fn count(n: impl std::borrow::Borrow<usize>) -> String {
    let digits = n.borrow().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The wire name of an enum value, spaces for underscores (`pending_approval` → `pending approval`).
pub fn words<T: serde::Serialize>(v: &T) -> String {
    serversync_model::wire_name(v).replace('_', " ")
}

/// A button's POST without fields (its CSRF token checked by `session::csrf_guard`): calls the
/// API (`POST api_path`), and goes to `to` with `notice`, or shows the API's refusal.
pub async fn action(
    web: &crate::Web,
    s: &Session,
    api_path: &str,
    to: &str,
    notice: &str,
) -> Response {
    match web.api(s, axum::http::Method::POST, api_path, None).await {
        Ok(_) => done(to, notice),
        Err(p) => error(s, p.detail),
    }
}

/// Redirects after a POST, with a notice for the next page.
pub fn done(to: &str, notice: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    let q = serde_urlencoded::to_string([("done", notice)]).unwrap_or_default();
    axum::response::Redirect::to(&format!("{to}{sep}{q}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::{count, duration};

    #[test]
    fn counts_have_their_thousands_separated() {
        for (n, shown) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (5_005, "5,005"),
            (123_456, "123,456"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(count(n), shown);
        }
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        let cases = [
            (-5, "0 ms"),
            (0, "0 ms"),
            (850, "850 ms"),
            (999, "999 ms"),
            (1_000, "1.0 s"),
            (4_249, "4.2 s"),
            (9_999, "9.9 s"),
            (10_000, "10 s"),
            (59_999, "59 s"),
            (60_000, "1 min"),
            (3 * 60_000 + 30_000, "3 min"),
            (59 * 60_000, "59 min"),
            (3_600_000, "1 h"),
            (47 * 3_600_000, "47 h"),
            (2 * 86_400_000, "2 days"),
            (729 * 86_400_000, "729 days"),
            (730 * 86_400_000, "2 years"),
            // What the issue saw: 1,276,056 minutes of history.
            (1_276_056 * 60_000, "2 years"),
            (1_512_607 * 60_000, "2 years"),
            (4 * 365 * 86_400_000, "4 years"),
        ];
        for (ms, shown) in cases {
            assert_eq!(duration(ms), shown, "{ms} ms");
        }
    }
}
