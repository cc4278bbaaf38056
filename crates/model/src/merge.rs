//! Two-way synchronization's decisions for one appointment, contact or task, as pure
//! functions (the engine's syncer applies them):
//!
//! - [`three_way`]: the CRM's values, the server's values and the values both held at the
//!   last synchronization (the link's *base*), compared field by field. A field changed on one
//!   side only goes to the other; a field changed on both sides to different values is a
//!   conflict, resolved by the organization's [`ConflictPolicy`] and reported; changes to
//!   different fields merge without a conflict.
//! - [`counts_as_changed`]: a server item counts as changed only when its version tag *and*
//!   the canonical form of its mapped values both differ from the link's (a server that bumps
//!   the ETag or change key without a real change — a read receipt, a reminder dismissed —
//!   causes no write back).
//! - [`delete_outcome`]: a delete on one side propagates unless the other side changed the
//!   record since the last synchronization (the modification wins and the record is created
//!   again where it was deleted).
//! - [`mass_delete`]: a side that suddenly looks (nearly) empty stops the round instead of
//!   deleting everything on the other side.
//!
//! Values are JSON objects of the fields both sides share; an absent field and `null` are the
//! same (no value).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a field changed on both sides since the last synchronization is resolved.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The side changed last wins (the CRM on a tie).
    #[default]
    LatestChangeWins,
    CrmWins,
    ServerWins,
}

/// One side of a two-way synchronization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Crm,
    Server,
}

/// A field both sides changed to different values since the last synchronization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldConflict {
    pub field: String,
    pub crm: Value,
    pub server: Value,
    /// Whose value was kept.
    pub winner: Side,
}

/// What [`three_way`] decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Merged {
    /// Fields to write to the CRM record (`null`: clear the field).
    pub to_crm: Map<String, Value>,
    /// Fields to write to the server item.
    pub to_server: Map<String, Value>,
    /// The values both sides hold once the writes are done: the link's next base.
    pub synced: Map<String, Value>,
    pub conflicts: Vec<FieldConflict>,
}

impl Merged {
    /// Nothing to write on either side.
    pub fn is_quiet(&self) -> bool {
        self.to_crm.is_empty() && self.to_server.is_empty()
    }
}

/// When each side last changed the record, for [`ConflictPolicy::LatestChangeWins`]
/// (`None`: unknown, which loses to a known time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangedAt {
    pub crm: Option<DateTime<Utc>>,
    pub server: Option<DateTime<Utc>>,
}

fn get<'a>(m: &'a Map<String, Value>, field: &str) -> &'a Value {
    m.get(field).unwrap_or(&Value::Null)
}

/// The three-way comparison (see the module documentation). `base` is what both sides held
/// after the last synchronization (empty for a record never synchronized: then every field
/// where the sides differ is a conflict).
pub fn three_way(
    base: &Map<String, Value>,
    crm: &Map<String, Value>,
    server: &Map<String, Value>,
    policy: ConflictPolicy,
    changed: ChangedAt,
) -> Merged {
    let mut fields: Vec<&String> = base.keys().chain(crm.keys()).chain(server.keys()).collect();
    fields.sort();
    fields.dedup();
    let mut out = Merged::default();
    for field in fields {
        let (b, c, s) = (get(base, field), get(crm, field), get(server, field));
        let value = if c == s {
            c.clone()
        } else if c == b {
            out.to_crm.insert(field.clone(), s.clone());
            s.clone()
        } else if s == b {
            out.to_server.insert(field.clone(), c.clone());
            c.clone()
        } else {
            let winner = match policy {
                ConflictPolicy::CrmWins => Side::Crm,
                ConflictPolicy::ServerWins => Side::Server,
                ConflictPolicy::LatestChangeWins => match (changed.crm, changed.server) {
                    (Some(ct), Some(st)) if st > ct => Side::Server,
                    (None, Some(_)) => Side::Server,
                    _ => Side::Crm,
                },
            };
            out.conflicts.push(FieldConflict {
                field: field.clone(),
                crm: c.clone(),
                server: s.clone(),
                winner,
            });
            match winner {
                Side::Crm => {
                    out.to_server.insert(field.clone(), c.clone());
                    c.clone()
                }
                Side::Server => {
                    out.to_crm.insert(field.clone(), s.clone());
                    s.clone()
                }
            }
        };
        if !value.is_null() {
            out.synced.insert(field.clone(), value);
        }
    }
    out
}

/// `values` as canonical JSON text: object keys sorted at every level, `null` fields left out
/// at the top, no white space. Equal values give equal text; hash it to keep on a link.
pub fn canonical(values: &Map<String, Value>) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let top: Map<String, Value> = values
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Keys are inserted in sorted order; serde_json keeps insertion order or sorts (its
    // default map), either way sorted.
    sorted(&Value::Object(top)).to_string()
}

/// Whether a server item changed since the link was written: its version tag and its
/// values' canonical hash both differ from the link's.
pub fn counts_as_changed(
    link_version: &str,
    link_hash: &str,
    version: &str,
    values_hash: &str,
) -> bool {
    link_version != version && link_hash != values_hash
}

/// What to do about a record deleted on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Delete it on the other side too.
    Propagate,
    /// The other side changed it since the last synchronization: the modification wins, and
    /// the record is created again on the side that deleted it.
    Recreate,
}

/// A delete on one side against the other side's state: whether that side changed the record
/// since the last synchronization.
pub fn delete_outcome(other_side_changed: bool) -> DeleteOutcome {
    if other_side_changed {
        DeleteOutcome::Recreate
    } else {
        DeleteOutcome::Propagate
    }
}

/// Linked records below this many are never held back by [`mass_delete`].
pub const MASS_DELETE_MIN_LINKED: usize = 10;

/// Whether deleting `deleting` of `linked` records in one round looks like a side that went
/// missing (an emptied or replaced collection, a wrong account) rather than a person deleting:
/// at least [`MASS_DELETE_MIN_LINKED`] linked and half of them or more going. The round stops
/// with an alert instead.
pub fn mass_delete(linked: usize, deleting: usize) -> bool {
    linked >= MASS_DELETE_MIN_LINKED && deleting.saturating_mul(2) >= linked
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn at(minutes: i64) -> Option<DateTime<Utc>> {
        Some(DateTime::UNIX_EPOCH + chrono::Duration::minutes(minutes))
    }

    #[test]
    fn a_change_on_one_side_goes_to_the_other() {
        let base = map(json!({"subject": "Review", "location": "Room 1"}));
        let crm = map(json!({"subject": "Review", "location": "Room 2"}));
        let server = base.clone();
        let m = three_way(
            &base,
            &crm,
            &server,
            ConflictPolicy::default(),
            ChangedAt::default(),
        );
        assert_eq!(m.to_server, map(json!({"location": "Room 2"})));
        assert!(m.to_crm.is_empty() && m.conflicts.is_empty());
        assert_eq!(m.synced, crm);

        // Cleared on the server: cleared in the CRM, gone from the base.
        let server = map(json!({"subject": "Review"}));
        let m = three_way(
            &base,
            &base,
            &server,
            ConflictPolicy::default(),
            ChangedAt::default(),
        );
        assert_eq!(m.to_crm, map(json!({"location": null})));
        assert_eq!(m.synced, server);
    }

    #[test]
    fn changes_to_different_fields_merge_without_a_conflict() {
        let base = map(json!({"subject": "Review", "location": "Room 1", "body": "a"}));
        let crm = map(json!({"subject": "Design review", "location": "Room 1", "body": "a"}));
        let server = map(json!({"subject": "Review", "location": "Room 7", "body": "a"}));
        let m = three_way(
            &base,
            &crm,
            &server,
            ConflictPolicy::CrmWins,
            ChangedAt::default(),
        );
        assert!(m.conflicts.is_empty());
        assert_eq!(m.to_server, map(json!({"subject": "Design review"})));
        assert_eq!(m.to_crm, map(json!({"location": "Room 7"})));
        assert_eq!(
            m.synced,
            map(json!({"subject": "Design review", "location": "Room 7", "body": "a"}))
        );
        // The same change on both sides is no change.
        let m = three_way(
            &base,
            &crm,
            &crm,
            ConflictPolicy::ServerWins,
            ChangedAt::default(),
        );
        assert!(m.is_quiet() && m.conflicts.is_empty());
    }

    #[test]
    fn a_conflict_is_resolved_by_each_policy_and_reported() {
        let base = map(json!({"location": "Room 1"}));
        let crm = map(json!({"location": "Room 2"}));
        let server = map(json!({"location": "Room 3"}));
        let cases = [
            (
                ConflictPolicy::CrmWins,
                ChangedAt {
                    crm: at(1),
                    server: at(2),
                },
                Side::Crm,
            ),
            (
                ConflictPolicy::ServerWins,
                ChangedAt {
                    crm: at(2),
                    server: at(1),
                },
                Side::Server,
            ),
            (
                ConflictPolicy::LatestChangeWins,
                ChangedAt {
                    crm: at(1),
                    server: at(2),
                },
                Side::Server,
            ),
            (
                ConflictPolicy::LatestChangeWins,
                ChangedAt {
                    crm: at(2),
                    server: at(1),
                },
                Side::Crm,
            ),
            (
                ConflictPolicy::LatestChangeWins,
                ChangedAt {
                    crm: at(2),
                    server: at(2),
                },
                Side::Crm,
            ),
            (
                ConflictPolicy::LatestChangeWins,
                ChangedAt {
                    crm: None,
                    server: at(0),
                },
                Side::Server,
            ),
        ];
        for (policy, changed, winner) in cases {
            let m = three_way(&base, &crm, &server, policy, changed);
            assert_eq!(
                m.conflicts,
                [FieldConflict {
                    field: "location".into(),
                    crm: json!("Room 2"),
                    server: json!("Room 3"),
                    winner,
                }],
                "{policy:?} {changed:?}"
            );
            let (won, write) = match winner {
                Side::Crm => (&crm, &m.to_server),
                Side::Server => (&server, &m.to_crm),
            };
            assert_eq!(write, won, "{policy:?}");
            assert_eq!(&m.synced, won);
        }
    }

    #[test]
    fn without_a_base_differing_fields_are_conflicts() {
        let crm = map(json!({"subject": "A", "location": "X"}));
        let server = map(json!({"subject": "A", "location": "Y"}));
        let m = three_way(
            &Map::new(),
            &crm,
            &server,
            ConflictPolicy::CrmWins,
            ChangedAt::default(),
        );
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.to_server, map(json!({"location": "X"})));
    }

    #[test]
    fn canonical_text_ignores_key_order_and_nulls() {
        let a = map(json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": null}, "c": null}));
        let b = map(json!({"a": {"x": null, "y": [1, {"p": 1, "q": 2}]}, "b": 1}));
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&b),
            r#"{"a":{"x":null,"y":[1,{"p":1,"q":2}]},"b":1}"#
        );
        assert_ne!(canonical(&a), canonical(&map(json!({"b": 2}))));
    }

    #[test]
    fn a_new_version_tag_alone_is_no_change() {
        assert!(!counts_as_changed("v1", "h1", "v2", "h1"));
        assert!(!counts_as_changed("v1", "h1", "v1", "h2"));
        assert!(counts_as_changed("v1", "h1", "v2", "h2"));
    }

    #[test]
    fn a_modification_beats_a_delete_and_mass_deletes_stop() {
        assert_eq!(delete_outcome(true), DeleteOutcome::Recreate);
        assert_eq!(delete_outcome(false), DeleteOutcome::Propagate);
        assert!(
            !mass_delete(9, 9),
            "few records: a person may delete them all"
        );
        assert!(!mass_delete(100, 49));
        assert!(mass_delete(100, 50));
        assert!(mass_delete(10, 10));
    }
}
