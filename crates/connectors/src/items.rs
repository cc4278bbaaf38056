//! The *item store* role: a server's store of appointments, contacts and tasks, for two-way
//! synchronization — an Exchange mailbox's calendar, contacts and tasks folders (EWS, Microsoft
//! Graph) or a CalDAV calendar / CardDAV address book (a *collection*).
//!
//! Every such server offers the same five operations, which [`ItemStore`] names: list what
//! changed since an opaque token (EWS `SyncFolderItems` SyncState, a Graph delta link, a WebDAV
//! `sync-token`), get one item, create, update and delete with a version check (EWS ChangeKey,
//! HTTP `If-Match` with the ETag). A write made against a stale version is a
//! [`Written::Conflict`], never a silent overwrite: the syncer re-reads, merges by its rules and
//! tries again. Items travel as [`RemoteItem`]s whose `values` are the fields both sides share
//! (a JSON object: `subject`, `start`, `end`, `location`, …); each connector converts them
//! to and from its wire format (iCalendar, vCard, EWS XML, Graph JSON).
//!
//! [`MemoryItemStore`] is the reference implementation of the contract: the engine's two-way
//! syncer is tested against it before a real server, and every connector's implementation
//! must behave as it does.

use crate::{ConnectError, Result};
use serversync_model::ErrorKind;
use serversync_model::FailureStep;
use serversync_model::sync::ServerTokenCursor;
use serversync_model::webhook::RecordType;
use std::collections::BTreeMap;
use std::future::Future;

/// An item as the server holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteItem {
    /// The server's id: EWS ItemId, Graph id, DAV resource href.
    pub id: String,
    /// The server's version: EWS ChangeKey, ETag. Changes with every write.
    pub version: String,
    pub kind: RecordType,
    /// The synchronized fields (a JSON object).
    pub values: serde_json::Value,
}

/// What changed in a collection since a token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChangeSet {
    /// Created or updated items, as they are now.
    pub changed: Vec<RemoteItem>,
    /// Ids of deleted items.
    pub deleted: Vec<String>,
    /// Where to resume from once these changes are committed.
    pub next: Option<ServerTokenCursor>,
    /// More changes follow: ask again from `next`.
    pub more: bool,
    /// Items that changed but cannot be read (id, why): the syncer keeps them in its trace
    /// and alerts instead of dropping them silently.
    pub unreadable: Vec<(String, String)>,
}

/// The error code of values a server cannot hold (a fourth email on an Exchange contact, an
/// occurrence cancelled over EWS or Graph restored): refused before anything is written.
pub const UNMAPPABLE_VALUES: &str = "unmappable_values";

/// The outcome of a write with a version check.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Written; the item's new version.
    Done { id: String, version: String },
    /// The item changed on the server since `if_version`: nothing was written. Its current
    /// state, for the syncer to merge.
    Conflict { current: RemoteItem },
    /// The item no longer exists on the server.
    Gone,
}

/// A server's appointments, contacts or tasks (see the module documentation).
pub trait ItemStore {
    /// What changed in `collection` since `since` (`None`: everything, as created items).
    fn changes(
        &mut self,
        collection: &str,
        since: Option<&ServerTokenCursor>,
    ) -> impl Future<Output = Result<ChangeSet>> + Send;

    /// One item (`None` when it does not exist).
    fn get(
        &mut self,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<RemoteItem>>> + Send;

    /// Creates an item of `kind` with `values`.
    fn create(
        &mut self,
        collection: &str,
        kind: RecordType,
        values: &serde_json::Value,
    ) -> impl Future<Output = Result<Written>> + Send;

    /// Replaces the item's values, only if it is still at `if_version`.
    fn update(
        &mut self,
        collection: &str,
        id: &str,
        if_version: &str,
        values: &serde_json::Value,
    ) -> impl Future<Output = Result<Written>> + Send;

    /// Deletes the item, only if it is still at `if_version`.
    fn delete(
        &mut self,
        collection: &str,
        id: &str,
        if_version: &str,
    ) -> impl Future<Output = Result<Written>> + Send;
}

/// The reference [`ItemStore`]: collections in memory, a change log per collection, tokens
/// that are positions in it.
#[derive(Debug, Default)]
pub struct MemoryItemStore {
    collections: BTreeMap<String, Collection>,
    /// Versions are numbers from one counter, so no two writes share one.
    writes: u64,
}

#[derive(Debug, Default)]
struct Collection {
    items: BTreeMap<String, RemoteItem>,
    /// Ids in the order they were written or deleted.
    log: Vec<String>,
}

impl MemoryItemStore {
    fn token(log: &[String]) -> ServerTokenCursor {
        ServerTokenCursor {
            token: format!("memory:{}", log.len()),
        }
    }

    fn bump(&mut self) -> String {
        self.writes += 1;
        format!("v{}", self.writes)
    }

    /// A check before a write: `Some` outcome when the write must not happen.
    fn stale(&self, collection: &str, id: &str, if_version: &str) -> Option<Written> {
        match self
            .collections
            .get(collection)
            .and_then(|c| c.items.get(id))
        {
            None => Some(Written::Gone),
            Some(item) if item.version != if_version => Some(Written::Conflict {
                current: item.clone(),
            }),
            Some(_) => None,
        }
    }
}

impl ItemStore for MemoryItemStore {
    async fn changes(
        &mut self,
        collection: &str,
        since: Option<&ServerTokenCursor>,
    ) -> Result<ChangeSet> {
        let c = self.collections.entry(collection.to_owned()).or_default();
        let from = match since {
            None => 0,
            Some(t) => t
                .token
                .strip_prefix("memory:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= c.log.len())
                .ok_or_else(|| {
                    ConnectError::new(
                        FailureStep::Protocol,
                        ErrorKind::Permanent,
                        format!("the sync token {:?} is not valid for {collection}", t.token),
                    )
                })?,
        };
        let mut set = ChangeSet::default();
        let mut seen = std::collections::HashSet::new();
        // The latest state of each id written since the token, once.
        for id in c.log[from..].iter().rev() {
            if !seen.insert(id) {
                continue;
            }
            match c.items.get(id) {
                Some(item) => set.changed.push(item.clone()),
                None if since.is_some() => set.deleted.push(id.clone()),
                None => {}
            }
        }
        set.changed.reverse();
        set.deleted.reverse();
        set.next = Some(Self::token(&c.log));
        Ok(set)
    }

    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<RemoteItem>> {
        Ok(self
            .collections
            .get(collection)
            .and_then(|c| c.items.get(id))
            .cloned())
    }

    async fn create(
        &mut self,
        collection: &str,
        kind: RecordType,
        values: &serde_json::Value,
    ) -> Result<Written> {
        let version = self.bump();
        let id = format!("item-{}", self.writes);
        let c = self.collections.entry(collection.to_owned()).or_default();
        c.items.insert(
            id.clone(),
            RemoteItem {
                id: id.clone(),
                version: version.clone(),
                kind,
                values: values.clone(),
            },
        );
        c.log.push(id.clone());
        Ok(Written::Done { id, version })
    }

    async fn update(
        &mut self,
        collection: &str,
        id: &str,
        if_version: &str,
        values: &serde_json::Value,
    ) -> Result<Written> {
        if let Some(refused) = self.stale(collection, id, if_version) {
            return Ok(refused);
        }
        let version = self.bump();
        let c = self.collections.entry(collection.to_owned()).or_default();
        if let Some(item) = c.items.get_mut(id) {
            item.values = values.clone();
            item.version = version.clone();
        }
        c.log.push(id.to_owned());
        Ok(Written::Done {
            id: id.to_owned(),
            version,
        })
    }

    async fn delete(&mut self, collection: &str, id: &str, if_version: &str) -> Result<Written> {
        if let Some(refused) = self.stale(collection, id, if_version) {
            return Ok(refused);
        }
        let version = self.bump();
        let c = self.collections.entry(collection.to_owned()).or_default();
        c.items.remove(id);
        c.log.push(id.to_owned());
        Ok(Written::Done {
            id: id.to_owned(),
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn writes_check_the_version_and_changes_resume_from_the_token() {
        let mut s = MemoryItemStore::default();
        let Written::Done { id, version: v1 } = s
            .create("cal", RecordType::Appointment, &json!({"subject": "a"}))
            .await
            .unwrap()
        else {
            panic!("created")
        };
        let first = s.changes("cal", None).await.unwrap();
        assert_eq!(first.changed.len(), 1);
        assert_eq!(first.changed[0].values["subject"], "a");
        let token = first.next.unwrap();

        let Written::Done { version: v2, .. } = s
            .update("cal", &id, &v1, &json!({"subject": "b"}))
            .await
            .unwrap()
        else {
            panic!("updated")
        };
        assert_ne!(v1, v2);
        // A write against the old version changes nothing and shows the current state.
        match s
            .update("cal", &id, &v1, &json!({"subject": "stale"}))
            .await
            .unwrap()
        {
            Written::Conflict { current } => assert_eq!(current.values["subject"], "b"),
            other => panic!("a stale write must conflict: {other:?}"),
        }
        assert_eq!(
            s.get("cal", &id).await.unwrap().unwrap().values["subject"],
            "b"
        );
        let since = s.changes("cal", Some(&token)).await.unwrap();
        assert_eq!(since.changed.len(), 1, "{since:?}");
        assert_eq!(since.changed[0].version, v2);

        let token = since.next.unwrap();
        assert!(matches!(
            s.delete("cal", &id, &v1).await.unwrap(),
            Written::Conflict { .. }
        ));
        assert!(matches!(
            s.delete("cal", &id, &v2).await.unwrap(),
            Written::Done { .. }
        ));
        let gone = s.changes("cal", Some(&token)).await.unwrap();
        assert_eq!(gone.deleted, vec![id.clone()]);
        assert!(gone.changed.is_empty());
        assert_eq!(
            s.update("cal", &id, &v2, &json!({})).await.unwrap(),
            Written::Gone
        );
        let bad = ServerTokenCursor {
            token: "memory:99".into(),
        };
        let e = s.changes("cal", Some(&bad)).await.unwrap_err();
        assert_eq!(e.step, FailureStep::Protocol);
    }
}
