//! One two-way synchronization round of one mailbox against its server's collections (any
//! [`ItemStore`]): the server's changes into the CRM, then the CRM's changes onto the server.
//!
//! **Server → CRM.** The changes since the collection's committed token. A linked item is
//! compared three ways (CRM, server, the link's base) field by field and merged; an unlinked
//! item becomes a CRM record only when the user tracked it (the category "Tracked to
//! <organization>") or when it is the server copy of a CRM record whose link was lost. A
//! deleted item deletes its record unless the CRM changed the record since (then the record
//! goes back to the server), the user only attends the meeting, or the meeting is over. A
//! round that would delete half or more of the linked records stops with an alert instead.
//!
//! **CRM → server.** The organization's change feed after the mailbox's committed position,
//! without the changes this syncer made itself (origin `sync:<mailbox>`), so nothing echoes:
//! records in the user's filter are created (with a UID derived from the record, so a create
//! repeated after a crash finds its first attempt), merged and updated with the version they
//! were read at, deleted (only by the organizer, never a past meeting). Values the server
//! cannot hold (the store's `unmappable_values`: an Exchange contact with a fourth email, an
//! occurrence cancelled over EWS restored in the CRM) are not written: an `item_unmappable`
//! alert names the record and why, the rest of the round goes on, and the CRM's values stay a
//! change to write.
//!
//! **Crash safety.** Every write is idempotent and the positions (server token, feed sequence)
//! are committed, fenced by the lease, only after the writes they cover: a round cut off at
//! any point is done again without losing or duplicating anything — a CRM record made from a
//! server item has an id derived from the mailbox and the item, a link is written after the
//! record and the server write it describes, and a comparison of equal values writes nothing.

use super::records::{self, CrmRecord};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use serversync_connectors::ConnectError;
use serversync_connectors::items::{ItemStore, RemoteItem, UNMAPPABLE_VALUES, Written};
use serversync_model::alert::Severity;
use serversync_model::itemvalues as iv;
use serversync_model::mailbox::Mailbox;
use serversync_model::merge::{self, ChangedAt, ConflictPolicy, Side};
use serversync_model::sync::{FolderCursor, RemoteLink, ServerTokenCursor, SyncDirection};
use serversync_model::webhook::{ChangeOrigin, RecordType};
use serversync_store::{Expected, LeaseGuard, Store, StoreError, Stored};
use std::collections::{HashMap, HashSet};

/// Where the mailbox's position in the organization's change feed is kept (a folder cursor).
pub(crate) const FEED_CURSOR: &str = "crm-feed";
/// Changes read from the feed at once.
const FEED_PAGE: u32 = 500;
/// Times a write is merged again after the other side changed under it.
const MERGE_TRIES: usize = 3;

/// What a round did, for traces, the mailbox page and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundReport {
    pub crm_created: usize,
    pub crm_updated: usize,
    pub crm_deleted: usize,
    pub server_created: usize,
    pub server_updated: usize,
    pub server_deleted: usize,
    /// Fields both sides changed, as `(record title, conflict)`.
    pub conflicts: Vec<(String, merge::FieldConflict)>,
    /// One line per decision that was not "nothing to do".
    pub decisions: Vec<String>,
}

impl RoundReport {
    /// Adds another round's counts and lines to these.
    pub fn merge(&mut self, other: RoundReport) {
        self.crm_created += other.crm_created;
        self.crm_updated += other.crm_updated;
        self.crm_deleted += other.crm_deleted;
        self.server_created += other.server_created;
        self.server_updated += other.server_updated;
        self.server_deleted += other.server_deleted;
        self.conflicts.extend(other.conflicts);
        self.decisions.extend(other.decisions);
    }
}

/// Why a round stopped.
#[derive(Debug)]
pub enum RoundError {
    Store(StoreError),
    Server(ConnectError),
    /// The mass-delete guard held the round (the message says what looked deleted).
    MassDelete(String),
}

impl From<StoreError> for RoundError {
    fn from(e: StoreError) -> Self {
        RoundError::Store(e)
    }
}
impl From<ConnectError> for RoundError {
    fn from(e: ConnectError) -> Self {
        RoundError::Server(e)
    }
}

type R<T> = Result<T, RoundError>;

/// One round's context.
pub(crate) struct Round<'a, S: ItemStore> {
    /// Writes tagged `sync:<mailbox>`.
    pub store: Store,
    pub mailbox: &'a Mailbox,
    pub org_name: String,
    pub policy: ConflictPolicy,
    pub lease: &'a LeaseGuard,
    pub server: &'a mut S,
    /// The collection of each record type.
    pub route: HashMap<RecordType, String>,
    pub now: DateTime<Utc>,
    /// The folder-cursor name of this round's position in the change feed.
    pub feed_cursor: String,
    pub report: RoundReport,
}

fn hash(values: &Map<String, Value>) -> String {
    serversync_vault::sha256_hex(merge::canonical(values).as_bytes())
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn kind_name(k: RecordType) -> &'static str {
    match k {
        RecordType::Appointment => "appointment",
        RecordType::Contact => "contact",
        RecordType::Task => "task",
        _ => "record",
    }
}

impl<S: ItemStore> Round<'_, S> {
    /// Runs the round: every collection's server changes, then the CRM's.
    pub async fn run(mut self) -> R<RoundReport> {
        let mut collections: Vec<String> = self.route.values().cloned().collect();
        collections.sort();
        collections.dedup();
        for c in &collections {
            self.server_changes(c).await?;
        }
        self.crm_changes().await?;
        Ok(self.report)
    }

    fn note(&mut self, line: String) {
        tracing::debug!(mailbox = %self.mailbox.id, "{line}");
        self.report.decisions.push(line);
    }

    fn origin(&self) -> ChangeOrigin {
        ChangeOrigin::Sync(self.mailbox.id)
    }

    fn link(
        &self,
        record: &CrmRecord,
        item_id: &str,
        version: &str,
        synced: Map<String, Value>,
        direction: SyncDirection,
    ) -> RemoteLink {
        RemoteLink {
            org_id: self.mailbox.org_id,
            mailbox_id: self.mailbox.id,
            record_type: record.kind(),
            record_id: record.id(),
            remote_id: item_id.to_owned(),
            version_tag: Some(version.to_owned()),
            synced_hash: hash(&synced),
            synced_values: synced,
            direction,
        }
    }

    async fn alert(&self, code: &str, message: String) -> Result<(), StoreError> {
        let a = crate::admin::alert(
            self.mailbox,
            Severity::Warning,
            code,
            message,
            None,
            vec![self.mailbox.owner_id],
        );
        self.store.insert(&a).await.map(|_| ())
    }

    // ---- server → CRM ----

    async fn server_changes(&mut self, collection: &str) -> R<()> {
        let folder = format!("items:{collection}");
        let since = match self.store.get_cursor(self.mailbox.id, &folder).await? {
            Some(FolderCursor::ServerToken(t)) => Some(t),
            _ => None,
        };
        let set = match self.server.changes(collection, since.as_ref()).await {
            Err(e)
                if since.is_some()
                    && e.code.as_deref()
                        == Some(serversync_connectors::dav::client::SYNC_TOKEN_INVALID) =>
            {
                self.note(format!(
                    "{collection}: the server forgot its sync token; reading the whole collection"
                ));
                let mut set = self.server.changes(collection, None).await?;
                set.deleted = self.unlisted(collection, &set.changed).await?;
                set
            }
            other => other?,
        };
        let kinds: Vec<RecordType> = self
            .route
            .iter()
            .filter(|(_, c)| c.as_str() == collection)
            .map(|(k, _)| *k)
            .collect();
        let deleting = self.deletes_of_live_records(&set.deleted).await?;
        let linked = if deleting > 0 {
            self.linked_ids(collection).await?.len()
        } else {
            0
        };
        if merge::mass_delete(linked, deleting) {
            let msg = format!(
                "{deleting} of the {linked} synchronized items of {collection} look deleted on \
                 the server of mailbox {}: nothing was deleted in the CRM. If the collection was \
                 emptied on purpose, delete the records in the CRM; if not, check the mailbox's \
                 CalDAV/CardDAV account.",
                self.mailbox.email
            );
            self.alert("mass_delete_held", msg.clone()).await?;
            return Err(RoundError::MassDelete(msg));
        }
        for item in &set.changed {
            if kinds.contains(&item.kind) {
                self.server_item(collection, item).await?;
            }
        }
        for id in &set.deleted {
            self.server_deleted(collection, id).await?;
        }
        for (id, why) in &set.unreadable {
            let line = format!("{id} on the server cannot be read and was left alone: {why}");
            self.alert("item_unreadable", line.clone()).await?;
            self.note(line);
        }
        if let Some(next) = set.next {
            self.store
                .put_cursor(
                    self.lease,
                    self.mailbox.id,
                    &folder,
                    FolderCursor::ServerToken(next),
                )
                .await?;
        }
        Ok(())
    }

    /// The server ids of the items of `collection` linked in this mailbox.
    async fn linked_ids(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_remote_links(self.mailbox.org_id, self.mailbox.id, after.as_deref(), 1000)
                .await?;
            ids.extend(
                page.iter()
                    .filter(|l| l.value.remote_id.starts_with(collection))
                    .map(|l| l.value.remote_id.clone()),
            );
            match page.last() {
                Some(l) if page.len() == 1000 => after = Some(l.value.record_id.clone()),
                _ => return Ok(ids),
            }
        }
    }

    /// How many of the deleted items are linked to records the CRM still has (records the
    /// CRM deleted too are no loss: after a held round, deleting them in the CRM lets the next
    /// round through).
    async fn deletes_of_live_records(&self, deleted: &[String]) -> Result<usize, StoreError> {
        let (org, mbx) = (self.mailbox.org_id, self.mailbox.id);
        let mut n = 0;
        for id in deleted {
            if let Some(l) = self
                .store
                .get_remote_link_by_remote_id(org, mbx, id)
                .await?
                && records::load(&self.store, l.value.record_type, &l.value.record_id)
                    .await?
                    .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// After a full listing: the linked items of `collection` that were not listed and are
    /// gone when asked one by one (a listing may not cover everything: Graph lists a
    /// calendar's events of a window of dates only).
    async fn unlisted(&mut self, collection: &str, listed: &[RemoteItem]) -> R<Vec<String>> {
        let listed: HashSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
        let mut gone = Vec::new();
        for id in self.linked_ids(collection).await? {
            if !listed.contains(id.as_str()) && self.server.get(collection, &id).await?.is_none() {
                gone.push(id);
            }
        }
        Ok(gone)
    }

    /// Whether the item carries another organization's stamp and the mailbox synchronizes
    /// only its own organization's items.
    fn foreign(&self, item: &RemoteItem) -> bool {
        let own = self.mailbox.org_id.to_string();
        self.mailbox.sync_with_this_org_only
            && item.values["stamp"]
                .as_str()
                .is_some_and(|s| !s.is_empty() && s != own)
    }

    async fn server_item(&mut self, collection: &str, item: &RemoteItem) -> R<()> {
        if self.foreign(item) {
            self.note(format!(
                "{}: stamped by another organization; left alone",
                item.id
            ));
            return Ok(());
        }
        let (org, mbx) = (self.mailbox.org_id, self.mailbox.id);
        let link = self
            .store
            .get_remote_link_by_remote_id(org, mbx, &item.id)
            .await?;
        if let Some(link) = link {
            if link.value.version_tag.as_deref() == Some(item.version.as_str()) {
                return Ok(()); // our own write, or nothing new
            }
            let server = iv::synced_fields(&item.values);
            if !merge::counts_as_changed(
                link.value.version_tag.as_deref().unwrap_or(""),
                &link.value.synced_hash,
                &item.version,
                &hash(&server),
            ) {
                // A new version tag, the same values: remember the tag, write nothing.
                let mut l = link.value.clone();
                l.version_tag = Some(item.version.clone());
                self.store
                    .put_remote_link(&l, Expected::Version(link.version))
                    .await?;
                return Ok(());
            }
            return match records::load(&self.store, link.value.record_type, &link.value.record_id)
                .await?
            {
                Some(rec) => self.merge(collection, link, rec, item.clone()).await,
                None => {
                    // Deleted in the CRM, changed on the server: the modification wins.
                    let rec =
                        CrmRecord::from_server(item.kind, self.mailbox, &item.id, &item.values)
                            .map_err(|e| self.unmappable(&item.id, e));
                    let Ok(mut rec) = rec else { return Ok(()) };
                    set_id(&mut rec, &link.value.record_id);
                    records::insert(&self.store, &rec).await?;
                    let l = self.link(
                        &rec,
                        &item.id,
                        &item.version,
                        server,
                        SyncDirection::FromServer,
                    );
                    self.store.put_remote_link(&l, Expected::Any).await?;
                    self.report.crm_created += 1;
                    self.note(format!(
                        "{} \"{}\": deleted in the CRM but changed on the server; created again in the CRM",
                        kind_name(item.kind),
                        rec.title()
                    ));
                    Ok(())
                }
            };
        }
        // Not linked: the server copy of one of our records whose link was lost?
        if let Some(rec_id) = item.values["uid"]
            .as_str()
            .and_then(|u| u.strip_suffix("@serversync"))
            && let Some(rec) = records::load(&self.store, item.kind, rec_id).await?
        {
            let l = self.link(
                &rec.value,
                &item.id,
                &item.version,
                Map::new(),
                SyncDirection::ToServer,
            );
            let stored = self.store.put_remote_link(&l, Expected::Any).await?;
            self.note(format!("{}: linked again to its CRM record", item.id));
            return self.merge(collection, stored, rec, item.clone()).await;
        }
        let tracked = iv::tracked_category(&self.org_name);
        if !iv::categories(&item.values).contains(&tracked) {
            return Ok(());
        }
        let rec = match CrmRecord::from_server(item.kind, self.mailbox, &item.id, &item.values) {
            Ok(r) => r,
            Err(e) => {
                let err = self.unmappable(&item.id, e);
                self.alert("item_unmappable", err.clone()).await?;
                self.note(err);
                return Ok(());
            }
        };
        if !records::insert(&self.store, &rec).await? {
            self.note(format!(
                "{}: its CRM record exists already (an earlier round)",
                item.id
            ));
        } else {
            self.report.crm_created += 1;
            self.note(format!(
                "{} \"{}\": tracked on the server; created in the CRM",
                kind_name(item.kind),
                rec.title()
            ));
        }
        let synced = iv::synced_fields(&item.values);
        let l = self.link(
            &rec,
            &item.id,
            &item.version,
            synced,
            SyncDirection::FromServer,
        );
        self.store.put_remote_link(&l, Expected::Any).await?;
        Ok(())
    }

    fn unmappable(&self, id: &str, why: String) -> String {
        format!("{id} on the server does not fit a CRM record and was left alone: {why}")
    }

    async fn server_deleted(&mut self, collection: &str, remote_id: &str) -> R<()> {
        let (org, mbx) = (self.mailbox.org_id, self.mailbox.id);
        let Some(link) = self
            .store
            .get_remote_link_by_remote_id(org, mbx, remote_id)
            .await?
        else {
            return Ok(());
        };
        let kind = link.value.record_type;
        let Some(rec) = records::load(&self.store, kind, &link.value.record_id).await? else {
            self.store
                .delete_remote_link(org, mbx, &link.value.record_id, None)
                .await?;
            return Ok(());
        };
        let title = rec.value.title().to_owned();
        if !rec.value.organized_by(self.mailbox) || rec.value.is_past(self.now) {
            let why = if rec.value.is_past(self.now) {
                "the meeting is over"
            } else {
                "the user only attends the meeting"
            };
            self.store
                .delete_remote_link(org, mbx, &link.value.record_id, None)
                .await?;
            self.note(format!(
                "appointment \"{title}\": deleted on the server; kept in the CRM ({why})"
            ));
            return Ok(());
        }
        let crm_changed = hash(&rec.value.values()) != link.value.synced_hash;
        match merge::delete_outcome(crm_changed) {
            merge::DeleteOutcome::Propagate => {
                records::delete(&self.store, kind, &link.value.record_id).await?;
                self.store
                    .delete_remote_link(org, mbx, &link.value.record_id, None)
                    .await?;
                self.report.crm_deleted += 1;
                self.note(format!(
                    "{} \"{title}\": deleted on the server; deleted in the CRM",
                    kind_name(kind)
                ));
            }
            merge::DeleteOutcome::Recreate => {
                self.store
                    .delete_remote_link(org, mbx, &link.value.record_id, None)
                    .await?;
                self.note(format!(
                    "{} \"{title}\": deleted on the server but changed in the CRM; created again on the server",
                    kind_name(kind)
                ));
                self.create_on_server(collection, &rec.value).await?;
            }
        }
        Ok(())
    }

    // ---- merging ----

    /// Compares the record, the item and the link's base; writes what each side lacks, and
    /// the link. Repeats with the server's current state when it changed under the write.
    async fn merge(
        &mut self,
        collection: &str,
        mut link: Stored<RemoteLink>,
        mut rec: Stored<CrmRecord>,
        mut item: RemoteItem,
    ) -> R<()> {
        for _ in 0..MERGE_TRIES {
            let crm = rec.value.values();
            let server = iv::synced_fields(&item.values);
            let changed = ChangedAt {
                crm: Some(rec.updated_at),
                server: parse_time(&item.values["modified"]),
            };
            let m = merge::three_way(
                &link.value.synced_values,
                &crm,
                &server,
                self.policy,
                changed,
            );
            let title = rec.value.title().to_owned();
            if !m.conflicts.is_empty() {
                for c in &m.conflicts {
                    let winner = match c.winner {
                        Side::Crm => "the CRM's",
                        Side::Server => "the server's",
                    };
                    self.alert(
                        "sync_conflict",
                        format!(
                            "{} \"{title}\" was changed in the CRM and on the server of {} since \
                             the last synchronization: field {}, CRM {}, server {}; {winner} value \
                             was kept ({} policy)",
                            kind_name(rec.value.kind()),
                            self.mailbox.email,
                            c.field,
                            c.crm,
                            c.server,
                            serversync_model::wire_name(&self.policy)
                        ),
                    )
                    .await?;
                    self.note(format!(
                        "{} \"{title}\": conflict on {}; {winner} value kept",
                        kind_name(rec.value.kind()),
                        c.field
                    ));
                    self.report.conflicts.push((title.clone(), c.clone()));
                }
            }
            let past = rec.value.is_past(self.now);
            // Not written: a past meeting, or values the server cannot hold.
            let mut unwritten = past;
            if !m.to_server.is_empty() && !past {
                let mut values = item.values.clone();
                if let Some(o) = values.as_object_mut() {
                    for (k, v) in &m.to_server {
                        o.insert(k.clone(), v.clone());
                    }
                }
                match self
                    .server
                    .update(collection, &item.id, &item.version, &values)
                    .await
                {
                    Err(e) if e.code.as_deref() == Some(UNMAPPABLE_VALUES) => {
                        let line = format!(
                            "{} \"{title}\": {} not written to the server of {}: {}",
                            kind_name(rec.value.kind()),
                            m.to_server.keys().cloned().collect::<Vec<_>>().join(", "),
                            self.mailbox.email,
                            e.message
                        );
                        self.alert("item_unmappable", line.clone()).await?;
                        self.note(line);
                        unwritten = true;
                    }
                    Err(e) => return Err(e.into()),
                    Ok(Written::Done { version, .. }) => {
                        item.version = version;
                        self.report.server_updated += 1;
                        self.note(format!(
                            "{} \"{title}\": {} written to the server",
                            kind_name(rec.value.kind()),
                            m.to_server.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                    Ok(Written::Conflict { current }) => {
                        item = current;
                        continue;
                    }
                    Ok(Written::Gone) => {
                        // Its delete comes with the server's next changes.
                        self.note(format!(
                            "{}: deleted on the server during the round",
                            item.id
                        ));
                        return Ok(());
                    }
                }
            }
            let mut synced = m.synced.clone();
            if unwritten && !m.to_server.is_empty() {
                // Not written (a past meeting, values the server cannot hold): the base keeps
                // the server's values, so the difference is not taken for a change on the
                // server later, and the CRM's stays a change to write.
                for k in m.to_server.keys() {
                    match server.get(k) {
                        Some(v) => synced.insert(k.clone(), v.clone()),
                        None => synced.remove(k),
                    };
                }
            }
            if !m.to_crm.is_empty() {
                if let Err(e) = rec.value.apply(&m.to_crm) {
                    let line = self.unmappable(&item.id, e);
                    self.alert("item_unmappable", line.clone()).await?;
                    self.note(line);
                    return Ok(());
                }
                match records::update(&self.store, &mut rec.value, rec.version).await {
                    Ok(()) => {}
                    Err(StoreError::VersionMismatch { .. }) => {
                        // Changed in the CRM meanwhile: compare again.
                        match records::load(&self.store, rec.value.kind(), &rec.value.id()).await? {
                            Some(r) => {
                                rec = r;
                                continue;
                            }
                            None => return Ok(()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                self.report.crm_updated += 1;
                self.note(format!(
                    "{} \"{title}\": {} taken from the server",
                    kind_name(rec.value.kind()),
                    m.to_crm.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            let direction = if m.to_server.is_empty() {
                SyncDirection::FromServer
            } else {
                SyncDirection::ToServer
            };
            let l = self.link(&rec.value, &item.id, &item.version, synced, direction);
            match self
                .store
                .put_remote_link(&l, Expected::Version(link.version))
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::VersionMismatch { .. } | StoreError::NotFound { .. }) => {
                    // Another writer of this link (a crash's leftover): read it again.
                    match self
                        .store
                        .get_remote_link(self.mailbox.org_id, self.mailbox.id, &rec.value.id())
                        .await?
                    {
                        Some(l) => link = l,
                        None => {
                            self.store.put_remote_link(&l, Expected::Any).await?;
                            return Ok(());
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.note(format!(
            "{}: kept changing during the round; compared again next round",
            item.id
        ));
        Ok(())
    }

    // ---- CRM → server ----

    async fn crm_changes(&mut self) -> R<()> {
        let (org, mbx) = (self.mailbox.org_id, self.mailbox.id);
        let position = match self.store.get_cursor(mbx, &self.feed_cursor).await? {
            Some(FolderCursor::ServerToken(t)) => t.token.parse::<i64>().ok(),
            _ => None,
        };
        let Some(mut after) = position else {
            // First round: every record in the filter, then the feed from before the listing.
            let start = self.store.latest_change_seq(org).await?;
            let mut kinds: Vec<RecordType> = self.route.keys().copied().collect();
            kinds.sort_by_key(|k| kind_name(*k));
            for kind in kinds {
                for rec in records::in_filter(&self.store, self.mailbox, kind).await? {
                    self.crm_upsert(rec).await?;
                }
            }
            self.put_feed(start).await?;
            return Ok(());
        };
        loop {
            let page = self
                .store
                .changes_after_excluding(org, after, FEED_PAGE, self.origin())
                .await?;
            let Some(last) = page.last().map(|c| c.seq) else {
                return Ok(());
            };
            // Each record once per page, as it is now.
            let mut seen = HashSet::new();
            for c in page.iter().rev() {
                if !self.route.contains_key(&c.record_type) || !seen.insert(c.record_id.clone()) {
                    continue;
                }
                match records::load(&self.store, c.record_type, &c.record_id).await? {
                    Some(rec) => self.crm_upsert(rec).await?,
                    None => self.crm_deleted(c.record_type, &c.record_id, false).await?,
                }
            }
            self.put_feed(last).await?;
            after = last;
        }
    }

    async fn put_feed(&self, seq: i64) -> Result<(), StoreError> {
        self.store
            .put_cursor(
                self.lease,
                self.mailbox.id,
                &self.feed_cursor,
                FolderCursor::ServerToken(ServerTokenCursor {
                    token: seq.to_string(),
                }),
            )
            .await
    }

    async fn crm_upsert(&mut self, rec: Stored<CrmRecord>) -> R<()> {
        let kind = rec.value.kind();
        let Some(collection) = self.route.get(&kind).cloned() else {
            return Ok(());
        };
        let link = self
            .store
            .get_remote_link(self.mailbox.org_id, self.mailbox.id, &rec.value.id())
            .await?;
        if !rec.value.in_filter(self.mailbox, link.is_some()) {
            if link.is_some() {
                // Left the user's filter (given to someone else): the server's copy goes, as
                // the reference's "logical delete" does; the record stays in the CRM.
                return self.crm_deleted(kind, &rec.value.id(), true).await;
            }
            return Ok(());
        }
        let Some(link) = link else {
            if rec.value.is_past(self.now) {
                return Ok(()); // no invitations for past meetings
            }
            return self.create_on_server(&collection, &rec.value).await;
        };
        if hash(&rec.value.values()) == link.value.synced_hash || rec.value.is_past(self.now) {
            return Ok(());
        }
        match self.server.get(&collection, &link.value.remote_id).await? {
            Some(item) => self.merge(&collection, link, rec, item).await,
            None => {
                // Gone from the server, changed in the CRM: the modification wins.
                self.store
                    .delete_remote_link(self.mailbox.org_id, self.mailbox.id, &rec.value.id(), None)
                    .await?;
                self.create_on_server(&collection, &rec.value).await
            }
        }
    }

    async fn create_on_server(&mut self, collection: &str, rec: &CrmRecord) -> R<()> {
        let crm = rec.values();
        let mut values = crm.clone();
        values.insert("uid".into(), Value::String(rec.uid()));
        values.insert(
            "stamp".into(),
            Value::String(self.mailbox.org_id.to_string()),
        );
        values.insert(
            "categories".into(),
            Value::Array(vec![Value::String(iv::tracked_category(&self.org_name))]),
        );
        let written = match self
            .server
            .create(collection, rec.kind(), &Value::Object(values))
            .await
        {
            Err(e) if e.code.as_deref() == Some(UNMAPPABLE_VALUES) => {
                let line = format!(
                    "{} \"{}\": not created on the server of {}: {}",
                    kind_name(rec.kind()),
                    rec.title(),
                    self.mailbox.email,
                    e.message
                );
                self.alert("item_unmappable", line.clone()).await?;
                self.note(line);
                return Ok(());
            }
            other => other?,
        };
        let (id, version, base) = match written {
            Written::Done { id, version } => {
                self.report.server_created += 1;
                self.note(format!(
                    "{} \"{}\": created on the server",
                    kind_name(rec.kind()),
                    rec.title()
                ));
                (id, version, crm)
            }
            Written::Conflict { current } => {
                // Made by an earlier attempt (or the UID is the server's already): link it and
                // compare from an empty base.
                self.note(format!(
                    "{} \"{}\": found on the server already; linked",
                    kind_name(rec.kind()),
                    rec.title()
                ));
                let l = self.link(rec, &current.id, "", Map::new(), SyncDirection::ToServer);
                let link = self.store.put_remote_link(&l, Expected::Any).await?;
                let Some(stored) = records::load(&self.store, rec.kind(), &rec.id()).await? else {
                    return Ok(());
                };
                return self.merge(collection, link, stored, current).await;
            }
            Written::Gone => return Ok(()),
        };
        let l = self.link(rec, &id, &version, base, SyncDirection::ToServer);
        self.store.put_remote_link(&l, Expected::Any).await?;
        Ok(())
    }

    /// The record was deleted in the CRM (`logical`: it left the user's filter and stays in
    /// the CRM): the server's copy is deleted, by the organizer only, unless the server
    /// changed it since (then the record comes back, or for a logical delete the copy is
    /// unlinked and kept).
    async fn crm_deleted(&mut self, kind: RecordType, record_id: &str, logical: bool) -> R<()> {
        let (org, mbx) = (self.mailbox.org_id, self.mailbox.id);
        let Some(link) = self.store.get_remote_link(org, mbx, record_id).await? else {
            return Ok(());
        };
        let Some(collection) = self.route.get(&kind).cloned() else {
            return Ok(());
        };
        let item = self.server.get(&collection, &link.value.remote_id).await?;
        let Some(item) = item else {
            self.store
                .delete_remote_link(org, mbx, record_id, None)
                .await?;
            return Ok(());
        };
        let organizer = item.values["organizer"]
            .as_str()
            .is_none_or(|o| o.eq_ignore_ascii_case(&self.mailbox.email));
        let past = kind == RecordType::Appointment
            && parse_time(&item.values["end"]).is_some_and(|e| e < self.now);
        if !organizer || past {
            self.store
                .delete_remote_link(org, mbx, record_id, None)
                .await?;
            self.note(format!(
                "{}: deleted in the CRM; the server's copy is kept ({})",
                item.id,
                if past {
                    "the meeting is over"
                } else {
                    "only the organizer deletes a meeting"
                }
            ));
            return Ok(());
        }
        let server = iv::synced_fields(&item.values);
        let server_changed = link.value.version_tag.as_deref() != Some(item.version.as_str())
            && hash(&server) != link.value.synced_hash;
        if server_changed && logical {
            self.store
                .delete_remote_link(org, mbx, record_id, None)
                .await?;
            self.note(format!(
                "{}: no longer the user's in the CRM but changed on the server; the server's copy is kept and unlinked",
                item.id
            ));
            return Ok(());
        }
        if merge::delete_outcome(server_changed) == merge::DeleteOutcome::Recreate {
            let mut rec = match CrmRecord::from_server(kind, self.mailbox, &item.id, &item.values) {
                Ok(r) => r,
                Err(e) => {
                    let line = self.unmappable(&item.id, e);
                    self.note(line);
                    return Ok(());
                }
            };
            set_id(&mut rec, record_id);
            records::insert(&self.store, &rec).await?;
            let l = self.link(
                &rec,
                &item.id,
                &item.version,
                server,
                SyncDirection::FromServer,
            );
            self.store.put_remote_link(&l, Expected::Any).await?;
            self.report.crm_created += 1;
            self.note(format!(
                "{} \"{}\": deleted in the CRM but changed on the server; created again in the CRM",
                kind_name(kind),
                rec.title()
            ));
            return Ok(());
        }
        match self
            .server
            .delete(&collection, &item.id, &item.version)
            .await?
        {
            Written::Done { .. } | Written::Gone => {
                self.store
                    .delete_remote_link(org, mbx, record_id, None)
                    .await?;
                self.report.server_deleted += 1;
                self.note(format!(
                    "{}: {} in the CRM; deleted on the server",
                    item.id,
                    if logical {
                        "no longer the user's"
                    } else {
                        "deleted"
                    }
                ));
            }
            Written::Conflict { .. } => {
                self.note(format!(
                    "{}: changed on the server during the delete; compared again next round",
                    item.id
                ));
            }
        }
        Ok(())
    }
}

/// Gives a record made from a server item the id of the record it replaces.
fn set_id(rec: &mut CrmRecord, id: &str) {
    match rec {
        CrmRecord::Appointment(a) => {
            if let Ok(i) = id.parse() {
                a.id = i
            }
        }
        CrmRecord::Contact(c) => {
            if let Ok(i) = id.parse() {
                c.id = i
            }
        }
        CrmRecord::Task(t) => {
            if let Ok(i) = id.parse() {
                t.id = i
            }
        }
    }
}
