//! Every mailbox and every profile of the installation, as the engine's looks for due work
//! (incoming email, two-way sync) see them on every tick: read again only when one of the two
//! tables changed — told by a fingerprint, one aggregate query each
//! ([`Store::fingerprint`]) — or [`REFRESH`] passed. With 10,000 idle mailboxes, reading and
//! decoding every document on every tick, twice, was most of an idle engine's work.

use serversync_model::mailbox::Mailbox;
use serversync_model::profile::EmailServerProfile;
use serversync_store::{Store, StoreError, Stored};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Read again at least this often, whatever the fingerprints say.
const REFRESH: Duration = Duration::from_secs(60);

/// One listing of both tables.
#[derive(Clone)]
pub(crate) struct Listed {
    pub mailboxes: Arc<Vec<Stored<Mailbox>>>,
    pub profiles: Arc<Vec<Stored<EmailServerProfile>>>,
}

struct Kept {
    listed: Listed,
    prints: [[i64; 4]; 2],
    at: Instant,
}

/// The listing shared by the engine's pipelines.
#[derive(Default)]
pub(crate) struct Listing {
    kept: Mutex<Option<Kept>>,
}

impl Listing {
    /// Every mailbox and profile as committed now (as of the fingerprints' reading).
    pub async fn get(&self, store: &Store) -> Result<Listed, StoreError> {
        let prints = [
            store.fingerprint::<Mailbox>().await?,
            store.fingerprint::<EmailServerProfile>().await?,
        ];
        if let Some(k) = self.kept.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && k.prints == prints
            && k.at.elapsed() < REFRESH
        {
            return Ok(k.listed.clone());
        }
        // Listed after the fingerprints were read: a change meanwhile is in the listing and
        // changes the next fingerprint, so it is read again then (never missed).
        let listed = Listed {
            profiles: Arc::new(store.list_all::<EmailServerProfile>(None, &[]).await?),
            mailboxes: Arc::new(store.list_all::<Mailbox>(None, &[]).await?),
        };
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(Kept {
            listed: listed.clone(),
            prints,
            at: Instant::now(),
        });
        Ok(listed)
    }
}
