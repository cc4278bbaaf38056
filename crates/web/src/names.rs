//! Records by name instead of by id: the links the pages show for users, queues, contacts,
//! accounts, leads and email activities, and decision traces with their ids replaced by those
//! links.

use crate::Web;
use crate::session::Session;
use serversync_model::crm::{Account, Contact, Lead, RecordRef};
use serversync_model::{ActivityId, QueueId, UserId};
use std::collections::HashMap;

/// The kinds of record a trace names by id, as it writes them.
const KINDS: [&str; 7] = [
    "queue item",
    "activity",
    "user",
    "queue",
    "contact",
    "account",
    "lead",
];

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `s` starts with a UUID (8-4-4-4-12 hex digits).
fn uuid_at(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() < 36 {
        return None;
    }
    for (i, c) in b[..36].iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
    }
    Some(&s[..36])
}

/// The record kind written just before position `at` of `line` (`activity 0190…`,
/// `{"type":"contact","id":"0190…`), if any.
fn kind_before(line: &str, at: usize) -> Option<&'static str> {
    let before = &line[..at];
    let before = before
        .strip_suffix("\",\"id\":\"")
        .map(|b| b.trim_end_matches('"'))
        .unwrap_or_else(|| before.trim_end());
    KINDS.into_iter().find(|k| before.ends_with(k))
}

/// The ids a trace line names, with their kinds.
pub fn ids_in(line: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line.is_char_boundary(i)
            && let Some(id) = uuid_at(&line[i..])
        {
            if let Some(kind) = kind_before(line, i) {
                out.push((kind, id.to_owned()));
            }
            i += 36;
        } else {
            i += 1;
        }
    }
    out
}

/// The activity an item's trace says it was tracked as.
pub fn tracked_activity(trace: &[String]) -> Option<String> {
    trace.iter().rev().find_map(|l| {
        l.split("tracked as activity ")
            .nth(1)
            .and_then(uuid_at)
            .map(str::to_owned)
    })
}

/// Where a record's page is and what it is called.
#[derive(Clone)]
pub struct Named {
    pub href: String,
    pub label: String,
}

/// Names of records by id, filled from the store for what a page shows.
#[derive(Default)]
pub struct Names {
    by_id: HashMap<String, Named>,
}

impl Names {
    /// Looks up every `(kind, id)` not known yet; a record the caller may not read, or that is
    /// gone, keeps its id.
    pub async fn load(&mut self, web: &Web, s: &Session, refs: &[(&'static str, String)]) {
        for (kind, id) in refs {
            if self.by_id.contains_key(id) {
                continue;
            }
            if let Some(n) = lookup(web, s, kind, id).await {
                self.by_id.insert(id.clone(), n);
            }
        }
    }

    /// Looks up the records `refs` point to.
    pub async fn load_refs(&mut self, web: &Web, s: &Session, refs: &[RecordRef]) {
        let refs: Vec<_> = refs.iter().map(ref_kind_id).collect();
        self.load(web, s, &refs).await
    }

    pub fn get(&self, id: &str) -> Option<&Named> {
        self.by_id.get(id)
    }

    /// A link to the record `r` by its name (HTML), or its kind and id when not known.
    pub fn link(&self, r: &RecordRef) -> String {
        let (kind, id) = ref_kind_id(r);
        match self.by_id.get(&id) {
            Some(n) => format!("<a href=\"{}\">{}</a>", esc(&n.href), esc(&n.label)),
            None => esc(&format!("{kind} {id}")),
        }
    }

    /// A trace line as HTML: escaped, each id of a record it names replaced by a link to the
    /// record with its name (`regarding {"type":"contact","id":…}` reads `regarding contact
    /// Ann Lee`).
    pub fn trace_line(&self, line: &str) -> String {
        let mut out = String::new();
        let mut rest = line;
        let mut offset = 0;
        let mut i = 0;
        while i < rest.len() {
            if rest.is_char_boundary(i)
                && let Some(id) = uuid_at(&rest[i..])
            {
                let kind = kind_before(line, offset + i);
                match (kind, self.by_id.get(id)) {
                    (Some(_), Some(n)) => {
                        let mut head = &rest[..i];
                        // `{"type":"contact","id":"<id>"}` → `contact <id>`.
                        let json = head
                            .rfind("{\"type\":\"")
                            .filter(|_| head.ends_with("\"id\":\""));
                        if let Some(at) = json {
                            out.push_str(&esc(&head[..at]));
                            out.push_str(&esc(kind.unwrap_or_default()));
                            out.push(' ');
                            head = "";
                        }
                        out.push_str(&esc(head));
                        out.push_str(&format!(
                            "<a href=\"{}\">{}</a>",
                            esc(&n.href),
                            esc(&n.label)
                        ));
                        let mut after = &rest[i + 36..];
                        if json.is_some() {
                            after = after.strip_prefix("\"}").unwrap_or(after);
                        }
                        offset += rest.len() - after.len();
                        rest = after;
                        i = 0;
                        continue;
                    }
                    _ => i += 36,
                }
            } else {
                i += 1;
            }
        }
        out.push_str(&esc(rest));
        out
    }
}

fn ref_kind_id(r: &RecordRef) -> (&'static str, String) {
    match r {
        RecordRef::User(i) => ("user", i.to_string()),
        RecordRef::Queue(i) => ("queue", i.to_string()),
        RecordRef::Contact(i) => ("contact", i.to_string()),
        RecordRef::Account(i) => ("account", i.to_string()),
        RecordRef::Lead(i) => ("lead", i.to_string()),
        RecordRef::Activity(i) => ("activity", i.to_string()),
    }
}

async fn lookup(web: &Web, s: &Session, kind: &str, id: &str) -> Option<Named> {
    let (c, org) = (&s.caller, s.org.id);
    let record = |label: String| Named {
        href: format!("/records/{kind}/{id}"),
        label,
    };
    match kind {
        "activity" => {
            let a = web
                .admin
                .email_activity(c, org, id.parse::<ActivityId>().ok()?)
                .await
                .ok()?;
            Some(Named {
                href: format!("/activities/{id}"),
                label: format!("“{}”", subject_or_none(&a.subject)),
            })
        }
        "user" => {
            let u = web.admin.user(org, id.parse::<UserId>().ok()?).await.ok()?;
            Some(record(u.full_name))
        }
        "queue" => {
            let q: QueueId = id.parse().ok()?;
            let page = web.admin.list_queues(org, None, 1000).await.ok()?;
            let q = page.items.into_iter().find(|x| x.value.id == q)?;
            Some(record(q.value.name))
        }
        "contact" => Some(record(
            web.admin
                .record::<Contact>(c, org, id)
                .await
                .ok()?
                .value
                .full_name,
        )),
        "account" => Some(record(
            web.admin
                .record::<Account>(c, org, id)
                .await
                .ok()?
                .value
                .name,
        )),
        "lead" => Some(record(
            web.admin
                .record::<Lead>(c, org, id)
                .await
                .ok()?
                .value
                .full_name,
        )),
        _ => None,
    }
}

/// A subject as shown: `(no subject)` when empty.
pub fn subject_or_none(s: &str) -> &str {
    if s.trim().is_empty() {
        "(no subject)"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0190a241-dc00-7000-8000-000000000001";
    const U: &str = "0190a241-dc00-7000-8000-000000000002";
    const C: &str = "0190a241-dc00-7000-8000-000000000003";

    fn names() -> Names {
        let mut n = Names::default();
        for (id, href, label) in [
            (A, "/activities/a", "“Quote”"),
            (U, "/records/user/u", "Ann <Admin>"),
            (C, "/records/contact/c", "Carl Contact"),
        ] {
            n.by_id.insert(
                id.into(),
                Named {
                    href: href.into(),
                    label: label.into(),
                },
            );
        }
        n
    }

    #[test]
    fn a_trace_line_names_its_records_with_links() {
        let line = format!(
            "tracked as activity {A} (user {U}: the sender is a contact, regarding {{\"type\":\"contact\",\"id\":\"{C}\"}})"
        );
        assert_eq!(
            ids_in(&line),
            vec![
                ("activity", A.to_owned()),
                ("user", U.to_owned()),
                ("contact", C.to_owned())
            ]
        );
        assert_eq!(
            names().trace_line(&line),
            "tracked as activity <a href=\"/activities/a\">“Quote”</a> (user <a href=\"/records/user/u\">Ann &lt;Admin&gt;</a>: the sender is a contact, regarding contact <a href=\"/records/contact/c\">Carl Contact</a>)"
        );
        assert_eq!(tracked_activity(&[line]), Some(A.to_owned()));
    }

    #[test]
    fn unknown_ids_and_markup_stay_text() {
        let other = "0190a241-dc00-7000-8000-00000000ffff";
        let line = format!("answers activity {other} <b> & a lone id {A}");
        assert_eq!(
            names().trace_line(&line),
            format!("answers activity {other} &lt;b&gt; &amp; a lone id {A}")
        );
        assert_eq!(ids_in(&line), vec![("activity", other.to_owned())]);
        assert_eq!(names().trace_line("ünïcode ✓"), "ünïcode ✓");
    }
}
