//! Organizations: the top of the navigation. Each user belongs to one; installation
//! administrators open any of them here (the choice is a cookie, checked on every request).

use super::forms::value;
use super::{Page, done, error, render, when};
use crate::Web;
use crate::session::{Session, org_cookie};
use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::header;
use axum::response::Response;

pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub created: String,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "orgs.html")]
struct OrgsPage {
    page: Page,
    rows: Vec<OrgRow>,
}

pub async fn list(State(web): State<Web>, s: Session) -> Response {
    let orgs = match web.admin.list_orgs(&s.caller).await {
        Ok(o) => o,
        Err(e) => return error(&s, e),
    };
    let rows = orgs
        .into_iter()
        .map(|o| OrgRow {
            current: o.id == s.org.id,
            id: o.id.to_string(),
            name: o.name,
            created: when(Some(o.created_at)),
        })
        .collect();
    render(&OrgsPage {
        page: Page::new(&s, "Organizations", "orgs"),
        rows,
    })
}

pub async fn select(
    State(web): State<Web>,
    s: Session,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let org = match web.admin.org_for(&s.caller, &value(&form, "org")).await {
        Ok(o) => o,
        Err(e) => return error(&s, e),
    };
    let mut r = done("/", &format!("Opened the organization {}.", org.name));
    if let Some(c) = org_cookie(&org.id.to_string()) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}
