//! Output for people (aligned tables, `key: value` lines) and for scripts (`--json`).

use serde_json::Value;

/// Prints a JSON document for scripts.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// An aligned table with a header row.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c)).collect());
    }

    /// Prints the table, or `no <what>` when it has no rows.
    pub fn print(&self, what: &str) {
        if self.rows.is_empty() {
            println!("no {what}");
            return;
        }
        print!("{}", self.render());
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for r in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < n {
                    line.push_str(&" ".repeat(width - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One line per cell: newlines and tabs become spaces.
fn clean(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

/// A record as `key: value` lines, nested fields as dotted keys (the same keys `--set` takes).
pub fn record(v: &Value) {
    print!("{}", render_record(v));
}

pub fn render_record(v: &Value) -> String {
    let mut pairs = Vec::new();
    flatten(v, "", &mut pairs);
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, val) in pairs {
        let pad = " ".repeat(width - k.chars().count());
        out.push_str(format!("{k}:{pad} {}", clean(&val)).trim_end());
        out.push('\n');
    }
    out
}

fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() || prefix.is_empty() => {
            for (k, x) in m {
                flatten(x, &key(k), out);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(x, &key(&i.to_string()), out);
            }
        }
        other => out.push((prefix.to_owned(), scalar(other))),
    }
}

/// A value in a cell: strings as they are, `-` for null, lists joined with commas.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        Value::Object(m) if m.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

/// The value at a dotted path as cell text.
pub fn at(v: &Value, path: &str) -> String {
    scalar(get(v, path).unwrap_or(&Value::Null))
}

pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

pub fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

/// A timestamp in a table: `2025-01-31 12:34:56` (UTC), `-` when unset.
pub fn time(v: &Value, path: &str) -> String {
    match get(v, path).and_then(Value::as_str) {
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t
                .with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
            Err(_) => s.to_owned(),
        },
        None => "-".into(),
    }
}

pub fn yes(v: &Value, path: &str) -> String {
    match get(v, path).and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        _ => "no".into(),
    }
}

/// "1 mailbox", "2 mailboxes".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["ID", "NAME", "NOTE"]);
        t.row(vec!["1".into(), "alpha".into(), "x".into()]);
        t.row(vec!["22".into(), "b\nc".into(), "".into()]);
        assert_eq!(t.render(), "ID  NAME   NOTE\n1   alpha  x\n22  b c\n");
    }

    #[test]
    fn records_flatten_to_dotted_keys() {
        let v = json!({"name": "p", "incoming": {"location": "h", "port": 993}, "tags": ["a", "b"], "x": null, "o": {}});
        assert_eq!(
            render_record(&v),
            "incoming.location: h\nincoming.port:     993\nname:              p\no:                 {}\ntags:              a, b\nx:                 -\n"
        );
    }

    #[test]
    fn times_are_shown_in_utc() {
        let v = json!({"at": "2025-01-31T12:34:56.123+01:00"});
        assert_eq!(time(&v, "at"), "2025-01-31 11:34:56");
        assert_eq!(time(&v, "none"), "-");
    }
}
