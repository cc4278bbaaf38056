//! API tokens and admin center sessions: who holds which, until when; revoke one. Users see
//! their own; holders of `manage_users` see the organization's. Revoking goes through the API
//! (`POST …/tokens/{id}/revoke`), which decides who may revoke whose.

use super::forms::value;
use super::{Page, action, error, render, when};
use crate::Web;
use crate::session::Session;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serversync_model::auth::TokenKind;
use std::collections::HashMap;

pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub user: String,
    pub kind: &'static str,
    pub prefix: String,
    pub created: String,
    pub expires: String,
    /// `live`, `revoked` or `expired`.
    pub state: &'static str,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    page: Page,
    rows: Vec<TokenRow>,
    /// Revoked and expired tokens are shown too.
    all: bool,
    /// The query of the next page, if any.
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct TokensQuery {
    done: Option<String>,
    #[serde(default)]
    all: bool,
    after: Option<String>,
}

pub async fn list(State(web): State<Web>, s: Session, Query(q): Query<TokensQuery>) -> Response {
    let found = match web
        .admin
        .list_tokens(&s.caller, s.org.id, None, !q.all, q.after.as_deref(), 200)
        .await
    {
        Ok(p) => p,
        Err(e) => return error(&s, e),
    };
    let emails: HashMap<_, _> = match web.admin.list_users(&s.caller, s.org.id, None, 1000).await {
        Ok(p) => p
            .items
            .into_iter()
            .map(|u| (u.value.id, u.value.email))
            .collect(),
        Err(e) => return error(&s, e),
    };
    let now = chrono::Utc::now();
    let mut rows: Vec<TokenRow> = found
        .items
        .into_iter()
        .map(|t| {
            let t = t.value;
            TokenRow {
                id: t.id.to_string(),
                user: emails
                    .get(&t.user_id)
                    .cloned()
                    .unwrap_or_else(|| t.user_id.to_string()),
                kind: match t.kind {
                    TokenKind::Api => "API token",
                    TokenKind::Session => "admin center session",
                },
                prefix: t.prefix.clone(),
                created: when(Some(t.created_at)),
                expires: t
                    .expires_at
                    .map_or_else(|| "never".into(), |e| when(Some(e))),
                state: if t.revoked {
                    "revoked"
                } else if t.is_live(now) {
                    "live"
                } else {
                    "expired"
                },
                name: t.name,
            }
        })
        .collect();
    rows.reverse();
    let next = found.next.map(|n| {
        serde_urlencoded::to_string([
            ("after", n.as_str()),
            ("all", if q.all { "true" } else { "false" }),
        ])
        .unwrap_or_default()
    });
    render(&TokensPage {
        page: Page::new(&s, "API tokens and sessions", "tokens").with_notice(q.done),
        rows,
        all: q.all,
        next,
    })
}

pub async fn revoke(
    State(web): State<Web>,
    s: Session,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let Ok(id) = id.parse::<serversync_model::TokenId>() else {
        return error(&s, format!("{id:?} is not a token id"));
    };
    let to = if value(&form, "all") == "true" {
        "/tokens?all=true"
    } else {
        "/tokens"
    };
    action(
        &web,
        &s,
        &format!("/tokens/{id}/revoke"),
        to,
        "Revoked the token.",
    )
    .await
}
