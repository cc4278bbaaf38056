//! What the administrator types: `--set KEY=VALUE` merge patches, secrets from standard input
//! or a file (never from a flag value, which would show in shell history and `ps`), JSON files.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};
use std::io::{IsTerminal, Read};
use std::path::Path;

/// Field names that hold secrets: refused in `--set`.
const SECRET_FIELDS: &[&str] = &[
    "password",
    "outgoing_password",
    "client_secret",
    "mailbox_password",
    "token",
];

/// Builds a JSON merge patch from `KEY=VALUE` pairs. Dotted keys make nested objects
/// (`incoming.port=993` → `{"incoming": {"port": 993}}`); a value that parses as JSON is
/// taken as JSON (`993`, `true`, `null`, `["a","b"]`, `"123"`), anything else as a string.
pub fn merge_patch(sets: &[String]) -> Result<Map<String, Value>> {
    let mut patch = Map::new();
    for set in sets {
        let Some((key, raw)) = set.split_once('=') else {
            bail!(
                "--set {set:?} is not KEY=VALUE: write e.g. --set incoming.port=993 or --set description=\"Main office\""
            );
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--set =…: no key before `=`: write e.g. --set incoming.port=993");
        }
        let parts: Vec<&str> = key.split('.').collect();
        if let Some(bad) = parts.iter().find(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            bail!(
                "--set {key:?}: {bad:?} is not a field name: use field names joined by dots, such as advanced.max_sends_per_minute"
            );
        }
        let last = parts[parts.len() - 1];
        if SECRET_FIELDS.contains(&last) {
            bail!(
                "--set {key}=…: secrets are not taken from flag values (they would show in shell history and ps): use --password-stdin or --password-file (see --help)"
            );
        }
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        insert(&mut patch, &parts, value).map_err(|path| {
            anyhow!("--set {key}: conflicts with another --set of {path:?}: give each field once")
        })?;
    }
    Ok(patch)
}

/// Inserts at a dotted path; on a conflict, returns the path that conflicts.
fn insert(obj: &mut Map<String, Value>, parts: &[&str], value: Value) -> Result<(), String> {
    let (first, rest) = parts.split_first().expect("a key has at least one part");
    if rest.is_empty() {
        if obj.contains_key(*first) {
            return Err((*first).to_owned());
        }
        obj.insert((*first).to_owned(), value);
        return Ok(());
    }
    let child = obj
        .entry((*first).to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    match child {
        Value::Object(m) => insert(m, rest, value).map_err(|p| format!("{first}.{p}")),
        _ => Err((*first).to_owned()),
    }
}

/// Refuses patch keys the record does not have: the API ignores unknown fields of a merge
/// patch, so a typo would otherwise "succeed" without changing anything. Below a field that is
/// null (an unset endpoint, say) nothing can be checked.
pub fn check_fields(
    current: &Value,
    patch: &Map<String, Value>,
    what: &str,
    show: &str,
) -> Result<()> {
    fn walk(cur: &Map<String, Value>, patch: &Map<String, Value>, prefix: &str) -> Option<String> {
        for (k, v) in patch {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match (cur.get(k), v) {
                (None, _) if prefix.is_empty() && k == "version" => {}
                (None, _) => return Some(path),
                (Some(Value::Object(c)), Value::Object(p)) => {
                    if let Some(bad) = walk(c, p, &path) {
                        return Some(bad);
                    }
                }
                _ => {}
            }
        }
        None
    }
    let Value::Object(cur) = current else {
        return Ok(());
    };
    match walk(cur, patch, "") {
        Some(bad) => bail!("no field {bad:?} in {what}: see the fields with `{show}`"),
        None => Ok(()),
    }
}

/// RFC 7396 merge of `patch` into `target` (null removes).
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Where a secret comes from: standard input or a file.
#[derive(Debug, Clone, Copy)]
pub struct SecretSource<'a> {
    /// What it is, for messages ("password").
    pub what: &'a str,
    pub stdin: bool,
    pub file: Option<&'a Path>,
}

impl SecretSource<'_> {
    /// Reads the secret if one was asked for. A final line break is removed.
    pub fn read(&self) -> Result<Option<String>> {
        let what = self.what;
        let text = if self.stdin {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("serversync: type the {what}, then press Enter and Ctrl-D:");
            }
            let mut s = String::new();
            stdin
                .read_to_string(&mut s)
                .with_context(|| format!("cannot read the {what} from standard input"))?;
            s
        } else if let Some(f) = self.file {
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the {what} from {}", f.display()))?
        } else {
            return Ok(None);
        };
        let secret = text.strip_suffix('\n').unwrap_or(&text);
        let secret = secret.strip_suffix('\r').unwrap_or(secret);
        if secret.is_empty() {
            let from = if self.stdin {
                "standard input".to_owned()
            } else {
                self.file
                    .map(|f| f.display().to_string())
                    .unwrap_or_default()
            };
            bail!(
                "the {what} from {from} is empty: pipe it in, e.g. printf '%s' \"$PASSWORD\" | serversync admin …"
            );
        }
        Ok(Some(secret.to_owned()))
    }
}

/// A JSON object from a file (`-` reads standard input).
pub fn json_file(path: &Path) -> Result<Map<String, Value>> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read JSON from standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => bail!("{} must hold a JSON object ({{…}})", path.display()),
        Err(e) => bail!(
            "{} is not valid JSON: {e}: fix the syntax at line {}, column {}",
            path.display(),
            e.line(),
            e.column()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sets(s: &[&str]) -> Result<Value> {
        merge_patch(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>()).map(Value::Object)
    }

    #[test]
    fn dotted_keys_build_a_merge_patch() {
        let p = sets(&[
            "incoming.port=993",
            "incoming.location=imap.example.com",
            "description=Main office",
            "advanced.tracked_folders=[\"INBOX\"]",
            "oauth=null",
            "username=\"123\"",
            "use_impersonation=true",
            "note=",
        ])
        .unwrap();
        assert_eq!(
            p,
            json!({
                "incoming": {"port": 993, "location": "imap.example.com"},
                "description": "Main office",
                "advanced": {"tracked_folders": ["INBOX"]},
                "oauth": null,
                "username": "123",
                "use_impersonation": true,
                "note": "",
            })
        );
    }

    #[test]
    fn malformed_sets_are_refused_with_the_fix() {
        let e = sets(&["incoming.port"]).unwrap_err().to_string();
        assert!(e.contains("is not KEY=VALUE"), "{e}");
        assert!(sets(&["=1"]).unwrap_err().to_string().contains("no key"));
        assert!(
            sets(&["a..b=1"])
                .unwrap_err()
                .to_string()
                .contains("not a field name")
        );
        assert!(
            sets(&["a b=1"])
                .unwrap_err()
                .to_string()
                .contains("not a field name")
        );
        let e = sets(&["incoming=1", "incoming.port=2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("conflicts"), "{e}");
        assert!(
            sets(&["a=1", "a=2"])
                .unwrap_err()
                .to_string()
                .contains("conflicts")
        );
        let e = sets(&["password=hunter2"]).unwrap_err().to_string();
        assert!(
            e.contains("--password-stdin") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(sets(&["oauth.client_secret=x"]).is_err());
    }

    #[test]
    fn unknown_fields_are_named() {
        let cur = json!({"name": "p", "incoming": null, "advanced": {"max_sends_per_minute": 30}, "version": 3});
        let ok = |p: Value| check_fields(&cur, p.as_object().unwrap(), "the profile", "show");
        assert!(ok(json!({"name": "q", "version": 3, "incoming": {"port": 993}})).is_ok());
        assert!(ok(json!({"advanced": {"max_sends_per_minute": 5}})).is_ok());
        let e = ok(json!({"advanced": {"max_send_per_minute": 5}}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no field \"advanced.max_send_per_minute\" in the profile: see the fields with `show`"
        );
        assert!(ok(json!({"nmae": "x"})).is_err());
    }

    #[test]
    fn merge_follows_rfc_7396() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }
}
