//! How much a server may make a [`super::SyncSession`] hold. What a mail server sends is
//! hostile input: every response, every command's untagged answers, the queue of unsolicited
//! changes and a listing are bounded, at sizes a real server does not reach in normal
//! operation. Going over a bound fails the session with a protocol error naming it, except
//! for the change queue (it only hints at what to re-read, so it is summarized instead) and
//! the listing (it keeps the lowest UIDs; the caller lists again from there).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::conn::Limits;
use super::{MailboxEvent, MessageMeta};

/// Longest line, and most text of one response together (without its literals). A SEARCH or
/// VANISHED line listing a million UIDs is well under it.
pub const MAX_LINE: usize = 8 << 20;
/// Literals in one response (a FETCH of a message body has one or two).
pub const MAX_LITERALS: usize = 32;
/// Literal bytes one response may announce beyond what the command asked for (a message
/// fetched with `BODY.PEEK[]<0.max>` comes in a literal of at most `max` bytes).
pub const LITERAL_SLACK: u64 = 1 << 20;
/// Bytes of a literal kept in answers other than message bodies (folder names, dates); also
/// what such answers may announce, plus [`LITERAL_SLACK`].
pub const KEEP_SMALL: usize = 1 << 20;
/// Untagged responses to one command, counted as their bytes plus [`RESPONSE_COST`] each:
/// about half a million short ones. (A listing is bounded by [`LIST_WINDOW`] instead.)
pub const MAX_UNTAGGED_BYTES: usize = 64 << 20;
/// What one response is counted as beyond its bytes (what holding it costs).
pub const RESPONSE_COST: usize = 64;
/// Unsolicited changes queued between two [`super::SyncSession::take_events`], and their
/// bytes; beyond either the queue is summarized ([`MailboxEvent::Overflow`]).
pub const MAX_EVENTS: usize = 10_000;
pub const MAX_EVENT_BYTES: usize = 4 << 20;
/// Messages one listing returns (the lowest UIDs), and the bytes of their metadata.
pub const LIST_WINDOW: usize = 100_000;
pub const LIST_BYTES: usize = 32 << 20;
/// Responses read for one listing: a folder of ten million messages is beyond any real one.
pub const LIST_MAX_RESPONSES: usize = 100 * LIST_WINDOW;

/// The limits of one response whose literals may announce `allow` bytes together (at least
/// [`KEEP_SMALL`], plus [`LITERAL_SLACK`]), keeping `keep` bytes of each.
pub fn response_limits(keep: usize, allow: usize) -> Limits {
    Limits {
        text: MAX_LINE,
        literals: MAX_LITERALS,
        literal_bytes: (allow.max(KEEP_SMALL) as u64).saturating_add(LITERAL_SLACK),
        keep,
    }
}

/// What the untagged answers to one command may still hold ([`MAX_UNTAGGED_BYTES`]).
#[derive(Debug)]
pub struct Budget(usize);

impl Default for Budget {
    fn default() -> Self {
        Budget(MAX_UNTAGGED_BYTES)
    }
}

impl Budget {
    /// Counts a response of `size` bytes; `false` when it does not fit any more.
    pub fn spend(&mut self, size: usize) -> bool {
        match self.0.checked_sub(size.saturating_add(RESPONSE_COST)) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

/// The queue of unsolicited changes, bounded by [`MAX_EVENTS`] and [`MAX_EVENT_BYTES`]. Past
/// either, the details are dropped: the queue becomes [`MailboxEvent::Overflow`] and the
/// latest [`MailboxEvent::Exists`], which is all an IDLE needs to decide.
#[derive(Debug, Default)]
pub struct Events {
    list: Vec<MailboxEvent>,
    bytes: usize,
    overflowed: bool,
}

impl Events {
    pub fn push(&mut self, e: MailboxEvent) {
        let size = event_size(&e);
        if !self.overflowed
            && self.list.len() < MAX_EVENTS
            && self.bytes.saturating_add(size) <= MAX_EVENT_BYTES
        {
            self.list.push(e);
            self.bytes += size;
            return;
        }
        if !self.overflowed {
            let exists = self.latest_exists();
            self.overflowed = true;
            self.list = vec![MailboxEvent::Overflow];
            self.list.extend(exists.map(MailboxEvent::Exists));
        }
        if let MailboxEvent::Exists(n) = e {
            self.list.truncate(1);
            self.list.push(MailboxEvent::Exists(n));
        }
    }

    pub fn take(&mut self) -> Vec<MailboxEvent> {
        let list = std::mem::take(&mut self.list);
        *self = Events::default();
        list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn latest_exists(&self) -> Option<u32> {
        self.list.iter().rev().find_map(|e| match e {
            MailboxEvent::Exists(n) => Some(*n),
            _ => None,
        })
    }
}

/// Roughly what holding an event costs.
fn event_size(e: &MailboxEvent) -> usize {
    RESPONSE_COST
        + match e {
            MailboxEvent::Flags { flags, .. } => flags.iter().map(|f| f.len() + 24).sum(),
            MailboxEvent::Vanished(set) => set.range_count() * 8,
            _ => 0,
        }
}

/// A listing's messages: at most [`LIST_WINDOW`] of them and [`LIST_BYTES`] of metadata, the
/// lowest UIDs kept whatever order the server answers in.
#[derive(Debug, Default)]
pub struct ListWindow {
    heap: BinaryHeap<ByUid>,
    bytes: usize,
    /// A message was left out (the caller lists again after the last one kept).
    pub cut: bool,
}

#[derive(Debug)]
struct ByUid(MessageMeta);

impl PartialEq for ByUid {
    fn eq(&self, other: &Self) -> bool {
        self.0.uid == other.0.uid
    }
}
impl Eq for ByUid {}
impl PartialOrd for ByUid {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByUid {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.uid.cmp(&other.0.uid)
    }
}

fn meta_size(m: &MessageMeta) -> usize {
    RESPONSE_COST + m.flags.iter().map(|f| f.len() + 24).sum::<usize>()
}

impl ListWindow {
    pub fn push(&mut self, m: MessageMeta) {
        self.bytes += meta_size(&m);
        self.heap.push(ByUid(m));
        // Always keeps one, so a listing makes progress however large its entries.
        while self.heap.len() > 1 && (self.heap.len() > LIST_WINDOW || self.bytes > LIST_BYTES) {
            if let Some(ByUid(dropped)) = self.heap.pop() {
                self.bytes -= meta_size(&dropped);
                self.cut = true;
            }
        }
    }

    /// The messages kept, ascending by UID, each UID once.
    pub fn into_sorted(self) -> Vec<MessageMeta> {
        let mut out: Vec<MessageMeta> = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|b| b.0)
            .collect();
        out.dedup_by_key(|m| m.uid);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::sync::UidSet;

    fn meta(uid: u32, flag_bytes: usize) -> MessageMeta {
        MessageMeta {
            uid,
            size: 1,
            internal_date: None,
            flags: vec!["x".repeat(flag_bytes)],
            modseq: None,
        }
    }

    #[test]
    fn the_listing_keeps_the_lowest_uids_within_its_window() {
        let mut w = ListWindow::default();
        // Descending, with duplicates: the lowest LIST_WINDOW distinct ones are kept.
        for uid in (1..=(LIST_WINDOW as u32 + 500)).rev() {
            w.push(meta(uid, 1));
        }
        w.push(meta(7, 1));
        assert!(w.cut);
        let kept = w.into_sorted();
        assert_eq!(
            kept.len(),
            LIST_WINDOW - 1,
            "one slot went to the duplicate"
        );
        assert_eq!(kept[0].uid, 1);
        assert!(kept.windows(2).all(|p| p[0].uid < p[1].uid));

        // Huge metadata (hostile flags): bounded by bytes, and still at least one message.
        let mut w = ListWindow::default();
        for uid in 1..=20 {
            w.push(meta(uid, 4 << 20));
        }
        assert!(w.cut && w.bytes <= LIST_BYTES);
        let kept = w.into_sorted();
        assert_eq!(kept.first().map(|m| m.uid), Some(1));
        assert!(kept.len() < 20);

        let mut w = ListWindow::default();
        w.push(meta(3, 1));
        w.push(meta(2, 1));
        assert!(!w.cut);
        assert_eq!(w.into_sorted().len(), 2);
    }

    #[test]
    fn the_event_queue_is_summarized_past_its_bounds() {
        let mut q = Events::default();
        q.push(MailboxEvent::Exists(3));
        q.push(MailboxEvent::Expunged { seq: 1 });
        assert_eq!(
            q.take(),
            vec![MailboxEvent::Exists(3), MailboxEvent::Expunged { seq: 1 }]
        );
        for i in 0..(3 * MAX_EVENTS as u32) {
            q.push(MailboxEvent::Flags {
                seq: i,
                uid: Some(i),
                flags: vec!["\\Seen".into()],
                modseq: None,
            });
            if i == 5 {
                q.push(MailboxEvent::Exists(9));
            }
        }
        q.push(MailboxEvent::Vanished(UidSet::parse("1:4").unwrap()));
        assert_eq!(q.list.len(), 2);
        q.push(MailboxEvent::Exists(12));
        assert_eq!(
            q.take(),
            vec![MailboxEvent::Overflow, MailboxEvent::Exists(12)]
        );
        assert!(q.is_empty());
        // By bytes: a few events with enormous flag lists.
        for i in 0..10 {
            q.push(MailboxEvent::Flags {
                seq: i,
                uid: None,
                flags: vec!["k".repeat(1 << 20)],
                modseq: None,
            });
        }
        assert_eq!(q.take(), vec![MailboxEvent::Overflow]);
    }

    #[test]
    fn a_budget_runs_out() {
        let mut b = Budget::default();
        assert!(b.spend(MAX_UNTAGGED_BYTES - 2 * RESPONSE_COST));
        assert!(!b.spend(RESPONSE_COST));
        assert!(b.spend(0));
        assert!(!b.spend(0));
        assert!(!Budget::default().spend(usize::MAX));
    }
}
