//! Forms as lists of fields whose names are JSON paths of the API's request (`incoming.port`,
//! `advanced.max_sends_per_minute`): one template renders them all, and a submitted form
//! becomes the API's JSON again, so the API's validation names the very field to mark.

use crate::api::Problem;
use serde_json::{Map, Value};

/// What kind of input a field is, and so how its value goes into the JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Number,
    Password,
    /// A multi-line write-only secret (a PEM certificate and key): a text area.
    SecretText,
    Checkbox,
    Select,
    DateTime,
}

pub struct Field {
    pub name: String,
    pub label: String,
    pub kind: Kind,
    pub value: String,
    pub hint: String,
    pub options: Vec<(String, String)>,
    pub error: Option<String>,
    pub required: bool,
    /// A write-only secret of a stored record: whether one is set (never its value).
    pub secret_set: Option<bool>,
}

impl Field {
    pub fn new(name: &str, label: &str, kind: Kind) -> Field {
        Field {
            name: name.to_owned(),
            label: label.to_owned(),
            kind,
            value: String::new(),
            hint: String::new(),
            options: Vec::new(),
            error: None,
            required: false,
            secret_set: None,
        }
    }
    pub fn hint(mut self, h: &str) -> Field {
        self.hint = h.to_owned();
        self
    }
    pub fn options(mut self, o: &[(&str, &str)]) -> Field {
        self.options = o
            .iter()
            .map(|(v, l)| ((*v).to_owned(), (*l).to_owned()))
            .collect();
        self
    }
    pub fn required(mut self) -> Field {
        self.required = true;
        self
    }
    /// "set" or "not set" for a stored record's secret; empty otherwise.
    pub fn secret_state(&self) -> &'static str {
        match self.secret_set {
            Some(true) => "set",
            Some(false) => "not set",
            None => "",
        }
    }
    /// The HTML id (JSON paths have dots).
    pub fn id(&self) -> String {
        format!("f-{}", self.name.replace('.', "-"))
    }
    pub fn is_checked(&self) -> bool {
        self.value == "true"
    }
    pub fn is_selected(&self, v: &str) -> bool {
        self.value == v
    }
    pub fn input_type(&self) -> &'static str {
        match self.kind {
            Kind::Number => "number",
            Kind::Password => "password",
            Kind::DateTime => "datetime-local",
            _ => "text",
        }
    }
    /// A write-only secret: filled only with whether one is set, never refilled.
    pub fn is_secret(&self) -> bool {
        matches!(self.kind, Kind::Password | Kind::SecretText)
    }
    pub fn is_textarea(&self) -> bool {
        self.kind == Kind::SecretText
    }
    pub fn is_checkbox(&self) -> bool {
        self.kind == Kind::Checkbox
    }
    pub fn is_select(&self) -> bool {
        self.kind == Kind::Select
    }
}

/// The last value submitted for `name` (empty when absent).
pub fn value(form: &[(String, String)], name: &str) -> String {
    form.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A group of fields under a legend.
pub struct Section {
    pub legend: String,
    pub note: String,
    pub fields: Vec<Field>,
}

impl Section {
    pub fn new(legend: &str, note: &str, fields: Vec<Field>) -> Section {
        Section {
            legend: legend.to_owned(),
            note: note.to_owned(),
            fields,
        }
    }
}

/// Fills each field from a JSON document (the current record); a secret's field stays empty
/// and only says whether the record has one (the API shows a set secret redacted).
pub fn fill(sections: &mut [Section], doc: &Value) {
    for f in sections.iter_mut().flat_map(|s| s.fields.iter_mut()) {
        let mut cur = doc;
        for part in f.name.split('.') {
            cur = &cur[part];
        }
        if f.is_secret() {
            f.secret_set = Some(!cur.is_null());
            continue;
        }
        f.value = match cur {
            Value::Null => continue,
            Value::String(s) if f.kind == Kind::DateTime => s.chars().take(16).collect(),
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            v => v.to_string(),
        };
    }
}

/// Fills the fields with what was submitted and marks the API's field problems.
pub fn refill(sections: &mut [Section], form: &[(String, String)], p: &Problem) {
    for f in sections.iter_mut().flat_map(|s| s.fields.iter_mut()) {
        if !f.is_secret()
            && let Some((_, v)) = form.iter().rev().find(|(k, _)| *k == f.name)
        {
            f.value = v.clone();
        }
        f.error = p.field(&f.name).map(str::to_owned).or_else(|| {
            // A problem about a part of the field (`incoming.port` for `incoming`).
            p.fields
                .iter()
                .find(|(k, _)| k.starts_with(&format!("{}.", f.name)))
                .map(|(_, m)| m.clone())
        });
    }
}

/// The API's JSON from a submitted form: values typed by their field's kind, empty values left
/// out (so the API keeps or defaults them) except an optional select's empty choice (`null`),
/// checkboxes `true`/`false` (a hidden `false` precedes each checkbox).
pub fn to_json(sections: &[Section], form: &[(String, String)]) -> Value {
    let mut root = Map::new();
    for f in sections.iter().flat_map(|s| s.fields.iter()) {
        let Some((_, raw)) = form.iter().rev().find(|(k, _)| *k == f.name) else {
            continue;
        };
        let raw = raw.trim();
        let v = match f.kind {
            Kind::Checkbox => Value::Bool(raw == "true"),
            // An optional select's empty choice clears the value (`null` in the merge patch).
            Kind::Select if raw.is_empty() && f.options.iter().any(|(v, _)| v.is_empty()) => {
                Value::Null
            }
            _ if raw.is_empty() => continue,
            Kind::Number => match raw.parse::<i64>() {
                Ok(n) => Value::from(n),
                // Sent as text: the API names the field and says what it wants.
                Err(_) => Value::String(raw.to_owned()),
            },
            Kind::DateTime => Value::String(if raw.len() == 16 {
                format!("{raw}:00Z")
            } else {
                raw.to_owned()
            }),
            _ if f.name.ends_with("folders") => Value::Array(
                raw.split(',')
                    .map(|s| Value::String(s.trim().to_owned()))
                    .filter(|v| v.as_str() != Some(""))
                    .collect(),
            ),
            _ => Value::String(raw.to_owned()),
        };
        let mut cur = &mut root;
        let parts: Vec<&str> = f.name.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = cur
                .entry((*p).to_owned())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object");
        }
        cur.insert(parts[parts.len() - 1].to_owned(), v);
    }
    Value::Object(root)
}
