//! Appointments, contacts and tasks: two-way synchronization, one worker per user mailbox
//! whose third delivery method is server-side synchronization and is enabled, holding the lease
//! `items:<mailbox id>`, under the common [`crate::supervisor`].
//!
//! Each round opens the mailbox's item server — a CalDAV/CardDAV server named by the profile
//! (IMAP/POP3 profiles with `dav` settings), Exchange Online over Microsoft Graph, or Exchange
//! over EWS, signed in as the mailbox's incoming account — finds its collections, and runs
//! [`round::Round`]. Failures are recorded for the
//! `act` direction by the retry policy like the other directions'. Rounds repeat every
//! polling interval of the profile (at least [`MIN_INTERVAL`]), and within seconds of a
//! change in the CRM or a "sync now".

pub(crate) mod records;
pub mod round;

use crate::EngineConfig;
use crate::listing::Listing;
use crate::policy::{Direction, Failure};
use crate::session::{MailboxSession, Side};
use round::{Round, RoundError, RoundReport};
use serversync_connectors::ConnectError;
use serversync_connectors::dav::client::{CollectionKind, DavClient};
use serversync_connectors::ews::items::EwsItemStore;
use serversync_connectors::graph::GraphClient;
use serversync_connectors::graph::items::GraphItemStore;
use serversync_connectors::items::{ItemStore, Written};
use serversync_connectors::probe::StepLog;
use serversync_connectors::server::Server;
use serversync_model::MailboxId;
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::org::Organization;
use serversync_model::profile::{DavSettings, EmailServerProfile, IncomingProtocol};
use serversync_model::settings::ActMethod;
use serversync_model::webhook::{ChangeOrigin, RecordType};
use serversync_store::{LeaseGuard, Store, StoreError};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The shortest time between two rounds of one mailbox that only look for changes on the
/// server (a change in the CRM, or "sync now", starts a round sooner).
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// How often a waiting mailbox looks for changes in the CRM.
const CRM_POLL: Duration = Duration::from_secs(2);

pub(crate) fn resource(id: MailboxId) -> String {
    format!("items:{id}")
}

/// Which server a profile's appointments, contacts and tasks are synchronized with.
enum ItemServer {
    /// The CalDAV/CardDAV server its `dav` settings name (IMAP/POP3 profiles).
    Dav(DavSettings),
    /// The Exchange Online mailbox, over Microsoft Graph.
    Graph,
    /// The Exchange mailbox, over Exchange Web Services.
    Ews,
}

fn item_server(p: &EmailServerProfile) -> Option<ItemServer> {
    match (&p.dav, p.incoming_protocol) {
        (Some(dav), _) => Some(ItemServer::Dav(dav.clone())),
        (None, IncomingProtocol::Graph) => Some(ItemServer::Graph),
        (None, IncomingProtocol::Ews) => Some(ItemServer::Ews),
        _ => None,
    }
}

/// Whether the profile has a two-way synchronizer here.
fn has_synchronizer(p: &EmailServerProfile) -> bool {
    item_server(p).is_some()
}

/// An Exchange mailbox's item store, signed in, and the folder of each record type.
enum ExchangeStore {
    /// Exchange Online over Graph: the default calendar, contact folder and To Do list.
    Graph(GraphItemStore),
    /// Exchange over EWS: the distinguished calendar, contacts and tasks folders.
    Ews(EwsItemStore),
}

/// The Exchange item store of the session's mailbox (Graph or EWS, as the profile's incoming
/// protocol says), signed in, and the collection of each record type.
async fn exchange_store(
    store: &Store,
    session: &MailboxSession,
) -> Result<Result<(ExchangeStore, HashMap<RecordType, String>), Failure>, StoreError> {
    let (server, login) = match session.server_and_login(store, Side::Incoming).await? {
        Ok(x) => x,
        Err(f) => return Ok(Err(f)),
    };
    let found = async {
        match server {
            Server::Graph(target) => {
                let client =
                    GraphClient::connect(&target, &login, &session.opts, &mut StepLog::new())
                        .await?;
                let mut g = GraphItemStore::new(client);
                let route = HashMap::from([
                    (RecordType::Appointment, g.default_calendar().await?),
                    (RecordType::Contact, g.default_contacts().await?),
                    (RecordType::Task, g.default_task_list().await?),
                ]);
                Ok((ExchangeStore::Graph(g), route))
            }
            Server::Ews(target) => {
                let client =
                    serversync_connectors::ews::open(&target, &login, &session.opts).await?;
                let route = [
                    RecordType::Appointment,
                    RecordType::Contact,
                    RecordType::Task,
                ]
                .into_iter()
                .filter_map(|t| Some((t, EwsItemStore::collection_for(t)?.to_owned())))
                .collect();
                Ok((ExchangeStore::Ews(EwsItemStore::new(client)), route))
            }
            Server::Mail(_) => Err(ConnectError::new(
                serversync_model::FailureStep::Protocol,
                serversync_model::ErrorKind::Config,
                "the profile's mailbox is reached over IMAP/POP3, which holds no appointments, \
                 contacts or tasks",
            )
            .with_code("connector_not_available")),
        }
    };
    Ok(found.await.map_err(|e| Failure::from(&e)))
}

/// User mailboxes whose appointments, contacts and tasks this engine should synchronize now.
pub(crate) async fn due(store: &Store, listing: &Listing) -> Result<Vec<MailboxId>, StoreError> {
    let now = chrono::Utc::now();
    let listed = listing.get(store).await?;
    let profiles: std::collections::HashSet<_> = listed
        .profiles
        .iter()
        .filter(|p| has_synchronizer(&p.value))
        .map(|p| p.value.id)
        .collect();
    Ok(listed
        .mailboxes
        .iter()
        .map(|s| &s.value)
        .filter(|m| {
            m.act.enabled
                && m.act_method == ActMethod::ServerSideSync
                && matches!(m.regarding, MailboxRegarding::User(_))
                && m.profile_id.is_some_and(|p| profiles.contains(&p))
                && m.telemetry.postponed_until.is_none_or(|t| t <= now)
        })
        .map(|m| m.id)
        .collect())
}

/// The pipeline of two-way synchronization.
pub(crate) struct Items {
    pub store: Store,
    pub config: EngineConfig,
    /// Every mailbox and profile, read again only when changed.
    pub listing: std::sync::Arc<Listing>,
}

impl crate::supervisor::Pipeline for Items {
    type Id = MailboxId;
    const NAME: &'static str = "items";
    const DRAIN: Duration = Duration::from_secs(10);
    const FAIR_SHARE: bool = true;

    async fn due(&self) -> Result<Vec<MailboxId>, StoreError> {
        due(&self.store, &self.listing).await
    }
    fn resource(id: MailboxId) -> String {
        resource(id)
    }
    fn run(
        &self,
        id: MailboxId,
        lease: LeaseGuard,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        run(self.store.clone(), self.config.clone(), id, lease, stop)
    }
}

async fn run(
    store: Store,
    config: EngineConfig,
    id: MailboxId,
    lease: LeaseGuard,
    stop: CancellationToken,
) {
    let org = match store.get::<Mailbox>(&id.to_string()).await {
        Ok(Some(m)) => m.value.org_id,
        _ => {
            let _ = store.release_lease(&lease).await;
            return;
        }
    };
    loop {
        // The feed's position before the round: a change after it (someone's, or the round's
        // own, which costs one quiet round more) starts the next round early.
        let seen = store.latest_change_seq(org).await.unwrap_or(i64::MAX);
        let round_started = chrono::Utc::now();
        let interval = match sync_once(&store, &config, id, &lease).await {
            Ok((report, interval)) => {
                if let Err(e) = crate::health::record_success(&store, id, Direction::Act).await {
                    tracing::warn!(mailbox = %id, error = %e, "recording the success failed");
                }
                if let Err(e) = record_decisions(&store, id, &report.decisions).await {
                    tracing::warn!(mailbox = %id, error = %e, "recording the decisions failed");
                }
                interval
            }
            Err(RunError::LeaseLost) => {
                tracing::warn!(mailbox = %id, "appointments, contacts and tasks: the lease was lost during a round; another worker takes over");
                break;
            }
            Err(RunError::Failed(f)) => {
                tracing::warn!(mailbox = %id, code = %f.code, "appointments, contacts and tasks: {}", f.message);
                if let Err(e) =
                    crate::health::record_failure(&store, &config, id, &f, Direction::Act).await
                {
                    tracing::error!(mailbox = %id, error = %e, "recording the failure failed");
                }
                break;
            }
        };
        // Until the next round: the server is asked again after the interval, but a change
        // in the CRM (the feed moved past what the round saw) or "sync now" starts one at once.
        let until = tokio::time::Instant::now() + interval;
        let mut renewed = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = store.release_lease(&lease).await;
                    return;
                }
                _ = tokio::time::sleep((until - now).min(CRM_POLL)) => {}
            }
            if renewed.elapsed() >= config.lease_ttl / 3 {
                if store.renew_lease(&lease, config.lease_ttl).await.is_err() {
                    return;
                }
                renewed = tokio::time::Instant::now();
            }
            let crm_changed = store.latest_change_seq(org).await.is_ok_and(|n| n > seen);
            let asked = matches!(
                store.get::<Mailbox>(&id.to_string()).await,
                Ok(Some(m)) if m.value.telemetry.sync_requested_at.is_some_and(|t| t > round_started)
            );
            if crm_changed || asked {
                break;
            }
        }
        match store.get::<Mailbox>(&id.to_string()).await {
            Ok(Some(m)) if m.value.act.enabled => {}
            _ => break,
        }
    }
    let _ = store.release_lease(&lease).await;
}

/// Keeps a round's decisions on the mailbox (its page shows the latest), when it made any.
async fn record_decisions(
    store: &Store,
    id: MailboxId,
    decisions: &[String],
) -> Result<(), StoreError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    for _ in 0..3 {
        let Some(s) = store.get::<Mailbox>(&id.to_string()).await? else {
            return Ok(());
        };
        let mut m = s.value;
        m.telemetry
            .items_sync
            .get_or_insert_with(Default::default)
            .record(now, decisions);
        match store.update(&m, Some(s.version)).await {
            // An administrator's edit meanwhile: read again.
            Err(StoreError::VersionMismatch { .. }) => continue,
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}

/// Why [`sync_once`] did not finish.
#[derive(Debug)]
pub enum RunError {
    LeaseLost,
    Failed(Failure),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost { .. } => RunError::LeaseLost,
            other => RunError::Failed(Failure {
                retry_after: None,
                code: "store_failed".into(),
                kind: other.kind(),
                step: None,
                message: other.to_string(),
            }),
        }
    }
}

/// One round for mailbox `id` under `lease` (its `items:<id>` lease): what it did, and how
/// long to wait before the next. The lease is renewed while the round runs (a first round of
/// thousands of items outlasts it many times); if it is lost anyway, the round's next write of
/// a position fails with [`RunError::LeaseLost`] and nothing past it is committed.
pub async fn sync_once(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
) -> Result<(RoundReport, Duration), RunError> {
    let renewing = async {
        loop {
            tokio::time::sleep(config.lease_ttl / 3).await;
            match store.renew_lease(lease, config.lease_ttl).await {
                Ok(()) => {}
                // Lost: the fenced writes of the round notice it.
                Err(StoreError::LeaseLost { .. }) => std::future::pending::<()>().await,
                // A busy or briefly unreachable database: the next try, a third of the
                // lease later, still comes before it runs out.
                Err(e) => {
                    tracing::warn!(mailbox = %id, error = %e, "renewing the lease failed; trying again")
                }
            }
        }
    };
    tokio::select! {
        r = round_all(store, config, id, lease) => r,
        _ = renewing => unreachable!("the renewal loop never ends"),
    }
}

async fn round_all(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
) -> Result<(RoundReport, Duration), RunError> {
    let session = match MailboxSession::load(store, config, id).await? {
        Ok(s) => s,
        Err(f) => return Err(RunError::Failed(f)),
    };
    let interval =
        Duration::from_secs(u64::from(session.profile.advanced.min_polling_interval_minutes) * 60)
            .max(MIN_INTERVAL);
    let org_name = store
        .get::<Organization>(&session.mailbox.org_id.to_string())
        .await?
        .map(|o| o.value.name)
        .unwrap_or_default();
    let ctx = RoundCtx {
        store: store.with_origin(ChangeOrigin::Sync(id)),
        session: &session,
        org_name,
        lease,
        now: chrono::Utc::now(),
    };
    let dav = match item_server(&session.profile) {
        Some(ItemServer::Dav(dav)) => dav,
        Some(ItemServer::Graph | ItemServer::Ews) => {
            let (server, route) = exchange_store(store, &session)
                .await?
                .map_err(RunError::Failed)?;
            let report = match server {
                ExchangeStore::Graph(mut g) => ctx.run(&mut g, route, round::FEED_CURSOR).await?,
                ExchangeStore::Ews(mut e) => ctx.run(&mut e, route, round::FEED_CURSOR).await?,
            };
            return Ok((report, interval));
        }
        None => {
            return Err(RunError::Failed(Failure::config(
                "connector_not_available",
                "the profile names no server for appointments, contacts and tasks",
            )));
        }
    };
    let login = match session.login(store, Side::Incoming).await? {
        Ok(l) => l,
        Err(f) => return Err(RunError::Failed(f)),
    };
    let fail = |e: serversync_connectors::ConnectError| RunError::Failed(Failure::from(&e));
    let mut route: HashMap<RecordType, String> = HashMap::new();
    let mut cal = DavClient::connect(&dav.caldav_url, &login, &session.opts, &mut StepLog::new())
        .await
        .map_err(fail)?;
    let calendars = cal.discover(CollectionKind::Calendar).await.map_err(fail)?;
    for kind in [RecordType::Appointment, RecordType::Task] {
        if let Some(c) = calendars.iter().find(|c| c.holds(kind)) {
            route.insert(kind, c.href.clone());
        }
    }
    let card_url = dav.carddav_url.clone().unwrap_or(dav.caldav_url.clone());
    let mut card = DavClient::connect(&card_url, &login, &session.opts, &mut StepLog::new())
        .await
        .map_err(fail)?;
    let books = card
        .discover(CollectionKind::AddressBook)
        .await
        .map_err(fail)?;
    let mut report = RoundReport::default();
    // Calendars (appointments and tasks) and the address book (contacts) are two servers'
    // worth of connections: one round each, the CRM feed followed by the first only for its
    // own record types. The feed position is per mailbox, so the contacts round follows it
    // under its own cursor name.
    let mut book_route = HashMap::new();
    if let Some(b) = books.first() {
        book_route.insert(RecordType::Contact, b.href.clone());
    }
    report.merge(ctx.run(&mut cal, route, round::FEED_CURSOR).await?);
    let contacts_feed = format!("{}:contacts", round::FEED_CURSOR);
    report.merge(ctx.run(&mut card, book_route, &contacts_feed).await?);
    Ok((report, interval))
}

/// What every round of one pass shares, whatever the server.
struct RoundCtx<'a> {
    /// Writes with the origin `sync:<mailbox>`, so the feed never echoes them.
    store: Store,
    session: &'a MailboxSession,
    org_name: String,
    lease: &'a LeaseGuard,
    now: chrono::DateTime<chrono::Utc>,
}

impl RoundCtx<'_> {
    /// One [`Round`] against `server` for the record types of `route` (none: nothing to do),
    /// following the CRM's feed under the cursor `feed`.
    async fn run<S: ItemStore>(
        &self,
        server: &mut S,
        route: HashMap<RecordType, String>,
        feed: &str,
    ) -> Result<RoundReport, RunError> {
        if route.is_empty() {
            return Ok(RoundReport::default());
        }
        let r = Round {
            store: self.store.clone(),
            mailbox: &self.session.mailbox,
            org_name: self.org_name.clone(),
            policy: self.session.settings.conflict_policy,
            lease: self.lease,
            server,
            route,
            now: self.now,
            feed_cursor: feed.to_owned(),
            report: RoundReport::default(),
        }
        .run()
        .await;
        match r {
            Ok(r) => Ok(r),
            Err(RoundError::Store(e)) => Err(e.into()),
            Err(RoundError::Server(e)) => Err(RunError::Failed(Failure::from(&e))),
            Err(RoundError::MassDelete(msg)) => {
                Err(RunError::Failed(Failure::config("mass_delete_held", msg)))
            }
        }
    }
}

/// Test and enable for appointments, contacts and tasks: the mailbox's calendar and address
/// book are found, and in each a probe item is created, read back and deleted (nothing is
/// left behind; a probe that cannot be deleted is named in the failure).
pub(crate) async fn test(
    store: &Store,
    session: &MailboxSession,
) -> Result<Result<String, Failure>, StoreError> {
    let dav = match item_server(&session.profile) {
        Some(ItemServer::Dav(dav)) => dav,
        Some(ItemServer::Graph | ItemServer::Ews) => {
            let (server, route) = match exchange_store(store, session).await? {
                Ok(x) => x,
                Err(f) => return Ok(Err(f)),
            };
            let mut targets: Vec<(RecordType, String)> = route.into_iter().collect();
            targets.sort_by_key(|(t, _)| kind_label(*t));
            let probed = match server {
                ExchangeStore::Graph(mut g) => probe_collections(&mut g, &targets).await,
                ExchangeStore::Ews(mut e) => probe_collections(&mut e, &targets).await,
            };
            return Ok(probed
                .map(|lines| lines.join("; "))
                .map_err(|e| Failure::from(&e)));
        }
        None => {
            return Ok(Err(Failure::config(
                "connector_not_available",
                "the profile names no server for appointments, contacts and tasks: set \
                 act_method to none, or name a CalDAV/CardDAV server in the IMAP/POP3 profile",
            )));
        }
    };
    let login = match session.login(store, Side::Incoming).await? {
        Ok(l) => l,
        Err(f) => return Ok(Err(f)),
    };
    let card_url = dav.carddav_url.clone().unwrap_or(dav.caldav_url.clone());
    let mut found = Vec::new();
    for (url, kind, record_types) in [
        (
            &dav.caldav_url,
            CollectionKind::Calendar,
            &[RecordType::Appointment, RecordType::Task][..],
        ),
        (
            &card_url,
            CollectionKind::AddressBook,
            &[RecordType::Contact][..],
        ),
    ] {
        let probe = async {
            let mut client =
                DavClient::connect(url, &login, &session.opts, &mut StepLog::new()).await?;
            let collections = client.discover(kind).await?;
            let mut targets = Vec::new();
            for t in record_types {
                let Some(c) = collections.iter().find(|c| c.holds(*t)) else {
                    return Err(ConnectError::new(
                        serversync_model::FailureStep::Permission,
                        serversync_model::ErrorKind::Config,
                        format!("the server has no collection for {t:?} items of this user"),
                    )
                    .with_code("dav_not_found"));
                };
                targets.push((*t, c.href.clone()));
            }
            probe_collections(&mut client, &targets).await
        };
        match probe.await {
            Ok(lines) => found.extend(lines),
            Err(e) => return Ok(Err(Failure::from(&e))),
        }
    }
    Ok(Ok(found.join("; ")))
}

/// In each collection, a probe item of its record type is created, read back and deleted;
/// one line per collection that passed.
async fn probe_collections<S: ItemStore>(
    client: &mut S,
    collections: &[(RecordType, String)],
) -> Result<Vec<String>, ConnectError> {
    let refused = |message: String| {
        ConnectError::new(
            serversync_model::FailureStep::Permission,
            serversync_model::ErrorKind::Config,
            message,
        )
        .with_code("items_not_writable")
    };
    let mut lines = Vec::new();
    for (t, href) in collections {
        let values = probe_values(*t, chrono::Utc::now());
        let (id, version) = match client.create(href, *t, &values).await? {
            Written::Done { id, version } => (id, version),
            other => {
                return Err(refused(format!(
                    "a test item could not be written to {href}: {other:?}"
                )));
            }
        };
        let read = client.get(href, &id).await?;
        let deleted = client.delete(href, &id, &version).await?;
        if read.is_none() || !matches!(deleted, Written::Done { .. } | Written::Gone) {
            return Err(refused(format!(
                "the test item {id} could not be read back and deleted; delete it by hand"
            )));
        }
        lines.push(format!(
            "{} in {href} readable and writable",
            kind_label(*t)
        ));
    }
    Ok(lines)
}

fn kind_label(t: RecordType) -> &'static str {
    match t {
        RecordType::Appointment => "appointments",
        RecordType::Task => "tasks",
        _ => "contacts",
    }
}

/// The values of a test item (tomorrow, so it is no past meeting).
fn probe_values(t: RecordType, now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    use serversync_model::itemvalues::time;
    let uid = format!("serversync-test-{}", uuid::Uuid::new_v4());
    let start = now + chrono::Duration::days(1);
    match t {
        RecordType::Appointment => serde_json::json!({
            "uid": uid, "subject": "serversync test (deleted at once)",
            "start": time(start), "end": time(start + chrono::Duration::minutes(15)),
        }),
        RecordType::Task => serde_json::json!({
            "uid": uid, "subject": "serversync test (deleted at once)", "state": "open",
        }),
        _ => serde_json::json!({
            "uid": uid, "full_name": "serversync test (deleted at once)",
        }),
    }
}
