//! Appointments and contacts over CalDAV/CardDAV: the first two-way synchronization of N
//! contacts and N future appointments from the CRM to a private Radicale, by serversync
//! (`serve` on SQLite, then on PostgreSQL) and, with the same items as files, by vdirsyncer.
//!
//! Every tool writes into an empty calendar and an empty address book of its own on the same
//! Radicale. The items are the same: vdirsyncer's `.vcf` and `.ics` files are copies of the
//! items serversync created on the server in its first (SQLite) run, as Radicale stored them.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Duration as Days, DurationRound, Utc};
use serversync_model::crm::{ActivityParty, ActivityState, Appointment, Contact, PartyRole};
use serversync_model::mailbox::{Mailbox, RunStatus};
use serversync_model::webhook::RecordType;
use serversync_model::{ActivityId, ContactId, OrgId, UserId};
use serversync_store::Col;
use serversync_testkit::radicale::RadicaleInfo;

use crate::procstat::{Usage, Watched, cpu_seconds, self_cpu};
use crate::setup::{Serve, World};

/// The Radicale account serversync's mailboxes sign in as.
pub const CRM_USER: &str = "crm@example.test";
/// The Radicale account vdirsyncer signs in as.
pub const VDIR_USER: &str = "vdir@example.test";

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub tool: String,
    pub how: String,
    pub contacts: usize,
    pub events: usize,
    pub usage: Usage,
    /// A remark shown under the table.
    pub note: Option<String>,
}

impl Row {
    pub fn items(&self) -> usize {
        self.contacts + self.events
    }

    pub fn rate(&self) -> f64 {
        self.items() as f64 / self.usage.wall.as_secs_f64()
    }
}

/// The benchmark's figures.
#[derive(Debug, Clone, Default)]
pub struct DavBench {
    /// Contacts, and appointments, each.
    pub items: usize,
    /// Average size in bytes of a vCard and of a calendar object as uploaded.
    pub vcard_bytes: usize,
    pub event_bytes: usize,
    pub rows: Vec<Row>,
}

/// Plain HTTP to the private Radicale.
pub struct Radicale {
    pub info: RadicaleInfo,
    pub password: String,
    http: reqwest::Client,
}

impl Radicale {
    pub fn new(info: RadicaleInfo, password: &str) -> Result<Radicale> {
        Ok(Radicale {
            info,
            password: password.into(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(600))
                .build()?,
        })
    }

    /// `http://127.0.0.1:PORT/USER/NAME/`
    pub fn url(&self, user: &str, name: &str) -> String {
        format!("{}{user}/{name}/", self.info.url)
    }

    fn req(&self, method: &str, user: &str, url: &str) -> Result<reqwest::RequestBuilder> {
        Ok(self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes())?, url)
            .basic_auth(user, Some(&self.password)))
    }

    /// Makes the calendar or address book `name` of `user` (MKCOL with its resource type).
    pub async fn make(&self, user: &str, name: &str, kind: RecordType) -> Result<String> {
        let resourcetype = if kind == RecordType::Contact {
            "<a:addressbook/>"
        } else {
            "<c:calendar/>"
        };
        let body = format!(
            r#"<?xml version="1.0"?><d:mkcol xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav" xmlns:a="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/>{resourcetype}</d:resourcetype></d:prop></d:set></d:mkcol>"#
        );
        let url = self.url(user, name);
        let r = self.req("MKCOL", user, &url)?.body(body).send().await?;
        ensure!(r.status().is_success(), "MKCOL {url}: {}", r.status());
        Ok(url)
    }

    /// The items of the collection at `url`, by PROPFIND with Depth 1.
    pub async fn count(&self, user: &str, url: &str) -> Result<usize> {
        let r = self
            .req("PROPFIND", user, url)?
            .header("Depth", "1")
            .body(r#"<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#)
            .send()
            .await?;
        ensure!(r.status().as_u16() == 207, "PROPFIND {url}: {}", r.status());
        Ok(count_items(&r.text().await?))
    }

    /// Items of `user`'s collection `name` in Radicale's storage (one file each): a cheap
    /// progress count that does not load the server.
    fn on_disk(&self, user: &str, name: &str) -> usize {
        std::fs::read_dir(self.collection_dir(user, name)).map_or(0, |d| {
            d.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
    }

    /// Where Radicale keeps `user`'s collection `name` (`multifilesystem` storage).
    fn collection_dir(&self, user: &str, name: &str) -> std::path::PathBuf {
        self.info
            .root
            .join("collections/collection-root")
            .join(user)
            .join(name)
    }

    /// CPU seconds Radicale used so far.
    fn cpu(&self) -> f64 {
        self.info
            .pid
            .and_then(|p| cpu_seconds(p as u32))
            .unwrap_or(0.0)
    }

    pub fn version() -> String {
        let out = Command::new("radicale").arg("--version").output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }
}

/// The resources (not the collection itself) in a PROPFIND answer.
fn count_items(multistatus: &str) -> usize {
    // `<href>`, `<D:href>`, `<d:href>`…: whatever prefix the server uses.
    multistatus
        .split("href>")
        .skip(1)
        .step_by(2)
        .filter(|part| !part.split('<').next().unwrap_or("").ends_with('/'))
        .count()
}

// ---- the items ----

const FIRST: [&str; 16] = [
    "Ann", "Bo", "Carla", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal",
    "Lena", "Marta", "Nils", "Olga", "Pavel",
];
const LAST: [&str; 16] = [
    "Lee", "Chen", "Rossi", "Ivanov", "Novak", "Haddad", "Okafor", "Tanaka", "García", "Berg",
    "Yilmaz", "Schmidt", "Kowalska", "Larsen", "Petrova", "Dvořák",
];
const COMPANIES: [&str; 8] = [
    "Fabrikam",
    "Contoso Ltd",
    "Northwind Traders",
    "Tailspin Toys",
    "Wide World Importers",
    "Adventure Works",
    "Litware, Inc.",
    "Proseware",
];
const TITLES: [&str; 6] = [
    "Buyer",
    "Account manager",
    "Head of procurement",
    "CFO",
    "Engineer",
    "Office manager",
];
const SUBJECTS: [&str; 8] = [
    "Quarterly review",
    "Contract renewal",
    "Product demo",
    "Site visit",
    "Pricing call",
    "Onboarding workshop",
    "Support escalation",
    "Lunch",
];
const LOCATIONS: [&str; 5] = [
    "Room 4",
    "Head office, 2nd floor",
    "Video call",
    "Customer site",
    "Café Central",
];

fn person(i: usize) -> (String, String) {
    let (f, l) = (FIRST[i % 16], LAST[(i / 16) % 16]);
    let domain = COMPANIES[i % 8]
        .split([' ', ','])
        .next()
        .unwrap_or("example")
        .to_lowercase();
    let local: String = format!("{f}.{l}{i}")
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                'x'
            }
        })
        .collect();
    (format!("{f} {l}"), format!("{local}@{domain}.example"))
}

/// Contact `i`: a name, one or two email addresses, a company, most with a job title and
/// one or two phone numbers.
pub fn contact(i: usize, org: OrgId, owner: UserId) -> Contact {
    let (name, email) = person(i);
    let mut emails = vec![email];
    if i.is_multiple_of(5) {
        emails.push(format!("{}{i}@home.example", FIRST[i % 16].to_lowercase()));
    }
    let phones = match i % 3 {
        0 => vec![],
        1 => vec![format!("+1 555 {:04}", i % 10_000)],
        _ => vec![
            format!("+1 555 {:04}", i % 10_000),
            format!("+44 20 7946 {:04}", (i * 7) % 10_000),
        ],
    };
    Contact {
        id: ContactId::new(),
        org_id: org,
        full_name: name,
        emails,
        account_id: None,
        company: Some(COMPANIES[i % 8].into()),
        job_title: (!i.is_multiple_of(4)).then(|| TITLES[i % 6].into()),
        phones,
        owner_id: owner,
        created_at: Utc::now(),
    }
}

/// Appointment `i`, organized by `organizer`: between 1 and 360 days from `now`, in working
/// hours, 30 to 90 minutes, 0 to 3 attendees, one in three with a description.
pub fn appointment(
    i: usize,
    org: OrgId,
    owner: UserId,
    organizer: &str,
    now: DateTime<Utc>,
) -> Appointment {
    let day = now.duration_trunc(Days::days(1)).unwrap_or(now) + Days::days(1);
    let starts_at = day
        + Days::days((i % 360) as i64)
        + Days::hours(8 + ((i / 360) % 9) as i64)
        + Days::minutes(30 * ((i / 3240) % 2) as i64);
    let attendees = (0..i % 4)
        .map(|k| ActivityParty {
            role: PartyRole::To,
            address: person(i * 3 + k).1,
            display_name: None,
            resolved: None,
        })
        .collect();
    Appointment {
        id: ActivityId::new(),
        org_id: org,
        subject: format!("{} with {}", SUBJECTS[i % 8], COMPANIES[(i / 8) % 8]),
        location: Some(LOCATIONS[i % 5].into()),
        description: i.is_multiple_of(3).then(|| {
            format!(
                "Agenda:\n1. Where we are ({i})\n2. Next steps\nPlease bring the latest figures."
            )
        }),
        starts_at,
        ends_at: starts_at + Days::minutes(30 * (1 + (i % 3) as i64)),
        all_day: false,
        organizer: Some(ActivityParty {
            role: PartyRole::From,
            address: organizer.into(),
            display_name: None,
            resolved: None,
        }),
        attendees,
        owner_id: owner,
        regarding: None,
        state: ActivityState::Open,
        ical_uid: None,
        time_zone: None,
        recurrence: None,
        created_at: now,
        updated_at: now,
    }
}

/// Copies the items of `user`'s collection `name` from Radicale's storage into `to` (one
/// file per item, named as on the server); returns how many and their average size.
fn copy_items(dav: &Radicale, user: &str, name: &str, to: &Path) -> Result<(usize, usize)> {
    std::fs::create_dir_all(to)?;
    let (mut n, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dav.collection_dir(user, name))? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with('.') || !e.file_type()?.is_file() {
            continue;
        }
        bytes += std::fs::copy(e.path(), to.join(e.file_name()))? as usize;
        n += 1;
    }
    Ok((n, bytes / n.max(1)))
}

// ---- serversync ----

/// The calendar of serversync's run `tag`.
fn calendar_name(tag: &str) -> String {
    format!("{tag}-calendar")
}

/// The address book of serversync's run `tag`.
fn book_name(tag: &str) -> String {
    format!("{tag}-contacts")
}

/// serversync's first synchronization of a fresh store's `items` contacts and appointments
/// into `tag`'s empty calendar and address book: `serve` (a separate process, engine
/// defaults) timed from its start until the mailbox's first two-way round is recorded as
/// successful, then every item is checked on the server.
#[allow(clippy::too_many_arguments)]
pub async fn serversync_row(
    bin: &Path,
    dir: &Path,
    url: &str,
    backend: &str,
    dav: &Radicale,
    tag: &str,
    imaps: u16,
    ca: &Path,
    items: usize,
) -> Result<Row> {
    std::fs::create_dir_all(dir)?;
    let world = World::new(url).await?;
    let (cal_name, book_name) = (calendar_name(tag), book_name(tag));
    let cal = dav
        .make(CRM_USER, &cal_name, RecordType::Appointment)
        .await?;
    let book = dav.make(CRM_USER, &book_name, RecordType::Contact).await?;
    let profile = world.dav_profile(imaps, &cal, &book).await?;
    let mailbox = world
        .item_sync_mailbox(&profile, CRM_USER, &dav.password)
        .await?;
    eprintln!("bench: {backend}: putting {items} contacts and {items} appointments into the CRM");
    let seeding = Instant::now();
    let now = Utc::now();
    for i in 0..items {
        world
            .store
            .insert(&contact(i, world.org.id, mailbox.owner_id))
            .await?;
        world
            .store
            .insert(&appointment(
                i,
                world.org.id,
                mailbox.owner_id,
                CRM_USER,
                now,
            ))
            .await?;
    }
    eprintln!("bench: {backend}: CRM filled in {:?}", seeding.elapsed());
    let (own_cpu, radicale_cpu) = (self_cpu(), dav.cpu());
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let started = serve.proc.started;
    wait_for_round(&world, &mailbox, backend, dir, started, || {
        format!(
            ", on the server: {} events, {} contacts",
            dav.on_disk(CRM_USER, &cal_name),
            dav.on_disk(CRM_USER, &book_name)
        )
    })
    .await?;
    let wall = started.elapsed();
    let own_cpu = self_cpu() - own_cpu;
    let radicale_cpu = dav.cpu() - radicale_cpu;
    let usage = serve.proc.stop(wall)?;
    let (events, contacts) = (
        dav.count(CRM_USER, &cal).await?,
        dav.count(CRM_USER, &book).await?,
    );
    ensure!(
        events == items && contacts == items,
        "serversync on {backend}: {events} events and {contacts} contacts on the server, {items} each expected"
    );
    world.store.close().await;
    let row = Row {
        tool: "serversync".into(),
        how: format!(
            "CRM records in {backend} → CalDAV and CardDAV (`serve`, one two-way round: \
             calendar, then address book)"
        ),
        contacts,
        events,
        usage,
        note: Some(format!(
            "serversync on {backend}: Radicale used {radicale_cpu:.2} CPU s during this run; \
             the benchmark process (polling the mailbox's status every 100 ms) {own_cpu:.2} CPU s."
        )),
    };
    Ok(row)
}

/// Waits (at most an hour) until `mailbox`'s first two-way round is recorded, showing the
/// time and `progress` every 15 s; fails when the round failed.
async fn wait_for_round(
    world: &World,
    mailbox: &Mailbox,
    backend: &str,
    dir: &Path,
    started: Instant,
    progress: impl Fn() -> String,
) -> Result<()> {
    let limit = Duration::from_secs(3600);
    let mut shown = Instant::now();
    loop {
        let m = world
            .store
            .fetch::<Mailbox>(&mailbox.id.to_string())
            .await?
            .value;
        match m.act.status {
            RunStatus::Success => return Ok(()),
            RunStatus::Failure => bail!(
                "serversync's two-way round on {backend} failed: {:?} (log: {})",
                m.telemetry.last_error,
                dir.join("serve.log").display()
            ),
            RunStatus::NotRun => {}
        }
        if started.elapsed() > limit {
            bail!("serversync on {backend}: the first round did not finish within {limit:?}");
        }
        if shown.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "bench: {backend}: {:.0} s{}",
                started.elapsed().as_secs_f64(),
                progress()
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- first sync from the server ----

/// Items as files: `(file name, text)`.
pub type Files = Vec<(String, String)>;

/// Items `0..n` as they would be on a user's server after years of use: calendar objects and
/// vCards of the same people and meetings as [`contact`] and [`appointment`], each marked
/// "Tracked to `org_name`" (what makes serversync take an item into the CRM), written by
/// serversync's own CalDAV/CardDAV mapping. `(file name, text)` for the calendar, then the
/// address book.
pub fn server_items(
    n: usize,
    org_name: &str,
    organizer: &str,
    now: DateTime<Utc>,
) -> Result<(Files, Files)> {
    use serversync_connectors::dav::mapping::from_values;
    use serversync_model::itemvalues::{appointment_values, contact_values, tracked_category};
    let (org, owner) = (OrgId::new(), UserId::new());
    let meta = |mut v: serde_json::Map<String, serde_json::Value>, uid: String| {
        v.insert("uid".into(), uid.into());
        v.insert(
            "categories".into(),
            serde_json::json!([tracked_category(org_name)]),
        );
        serde_json::Value::Object(v)
    };
    let (mut events, mut cards) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let a = appointment(i, org, owner, organizer, now);
        let values = meta(
            appointment_values(&a),
            format!("bench-event-{i}@example.test"),
        );
        events.push((
            format!("event-{i}.ics"),
            from_values(RecordType::Appointment, &values, None)?,
        ));
        let values = meta(
            contact_values(&contact(i, org, owner)),
            format!("bench-contact-{i}@example.test"),
        );
        cards.push((
            format!("contact-{i}.vcf"),
            from_values(RecordType::Contact, &values, None)?,
        ));
    }
    Ok((events, cards))
}

/// Puts `items` into `user`'s (empty, just made) collection `name` as files in Radicale's
/// storage, as its `multifilesystem` keeps them (Radicale reads the directory on every
/// request); returns their average size.
fn seed(dav: &Radicale, user: &str, name: &str, items: &[(String, String)]) -> Result<usize> {
    let dir = dav.collection_dir(user, name);
    let mut bytes = 0;
    for (file, text) in items {
        std::fs::write(dir.join(file), text).with_context(|| format!("seeding {file}"))?;
        bytes += text.len();
    }
    Ok(bytes / items.len().max(1))
}

/// serversync's first synchronization of `items` events and `items` contacts that are on the
/// server already (seeded into `tag`'s collections, each tracked to the store's organization)
/// into the CRM of a fresh store: `serve` timed from its start until the mailbox's first
/// two-way round is recorded as successful, then the CRM's records are counted.
#[allow(clippy::too_many_arguments)]
pub async fn serversync_down_row(
    bin: &Path,
    dir: &Path,
    url: &str,
    backend: &str,
    dav: &Radicale,
    tag: &str,
    imaps: u16,
    ca: &Path,
    items: usize,
) -> Result<(Row, Seeded)> {
    std::fs::create_dir_all(dir)?;
    let world = World::new(url).await?;
    let (cal_name, book_name) = (
        format!("{tag}-down-calendar"),
        format!("{tag}-down-contacts"),
    );
    let cal = dav
        .make(CRM_USER, &cal_name, RecordType::Appointment)
        .await?;
    let book = dav.make(CRM_USER, &book_name, RecordType::Contact).await?;
    let (events, cards) = server_items(items, &world.org.name, CRM_USER, Utc::now())?;
    let seeded = Seeded {
        event_bytes: seed(dav, CRM_USER, &cal_name, &events)?,
        vcard_bytes: seed(dav, CRM_USER, &book_name, &cards)?,
        org_name: world.org.name.clone(),
    };
    drop((events, cards));
    let profile = world.dav_profile(imaps, &cal, &book).await?;
    let mailbox = world
        .item_sync_mailbox(&profile, CRM_USER, &dav.password)
        .await?;
    let (own_cpu, radicale_cpu) = (self_cpu(), dav.cpu());
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let started = serve.proc.started;
    wait_for_round(&world, &mailbox, backend, dir, started, String::new).await?;
    let wall = started.elapsed();
    let own_cpu = self_cpu() - own_cpu;
    let radicale_cpu = dav.cpu() - radicale_cpu;
    let usage = serve.proc.stop(wall)?;
    let org = Some(world.org.id);
    let events = world
        .store
        .list_all::<Appointment>(org, &[("kind", Col::text("appointment"))])
        .await?
        .len();
    let contacts = world.store.list_all::<Contact>(org, &[]).await?.len();
    ensure!(
        events == items && contacts == items,
        "serversync on {backend}: {events} appointments and {contacts} contacts in the CRM, \
         {items} each expected"
    );
    world.store.close().await;
    Ok((
        Row {
            tool: "serversync".into(),
            how: format!(
                "CalDAV and CardDAV → CRM records in {backend} (`serve`, one two-way round: \
                 calendar, then address book)"
            ),
            contacts,
            events,
            usage,
            note: Some(format!(
                "serversync on {backend}: Radicale used {radicale_cpu:.2} CPU s during this \
                 run; the benchmark process (polling the mailbox's status every 100 ms) \
                 {own_cpu:.2} CPU s."
            )),
        },
        seeded,
    ))
}

/// What [`serversync_down_row`] put on the server.
pub struct Seeded {
    /// Average size in bytes of a vCard and of a calendar object.
    pub vcard_bytes: usize,
    pub event_bytes: usize,
    /// The organization the items are tracked to.
    pub org_name: String,
}

/// vdirsyncer's first synchronization of the same items (seeded the same way into its own
/// collections, tracked to `org_name`) into two empty `filesystem` storages: `vdirsyncer
/// discover` (not timed), then `vdirsyncer sync` timed from start to exit, then the files
/// counted.
pub async fn vdirsyncer_down_row(
    dir: &Path,
    dav: &Radicale,
    items: usize,
    org_name: &str,
) -> Result<Row> {
    for d in ["status", "contacts", "calendar"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let cal = dav
        .make(VDIR_USER, "down-calendar", RecordType::Appointment)
        .await?;
    let book = dav
        .make(VDIR_USER, "down-contacts", RecordType::Contact)
        .await?;
    let (events, cards) = server_items(items, org_name, CRM_USER, Utc::now())?;
    seed(dav, VDIR_USER, "down-calendar", &events)?;
    seed(dav, VDIR_USER, "down-contacts", &cards)?;
    drop((events, cards));
    let config = dir.join("config");
    std::fs::write(
        &config,
        vdirsyncer_config(
            &dir.display().to_string(),
            &cal,
            &book,
            VDIR_USER,
            &dav.password,
        ),
    )?;
    let radicale_cpu = dav.cpu();
    let usage = run_vdirsyncer(dir, &config)?;
    let radicale_cpu = dav.cpu() - radicale_cpu;
    let files = |sub: &str| -> Result<usize> { Ok(std::fs::read_dir(dir.join(sub))?.count()) };
    let (events, contacts) = (files("calendar")?, files("contacts")?);
    ensure!(
        events == items && contacts == items,
        "vdirsyncer: {events} events and {contacts} contacts in its storages, {items} each expected"
    );
    Ok(Row {
        tool: "vdirsyncer".into(),
        how: "CardDAV and CalDAV → `.vcf` and `.ics` files (`filesystem` storages), \
              `vdirsyncer sync` (both pairs at once)"
            .into(),
        contacts,
        events,
        usage,
        note: Some(format!(
            "vdirsyncer: Radicale used {radicale_cpu:.2} CPU s during this run."
        )),
    })
}

// ---- vdirsyncer ----

pub const VDIRSYNCER_CMD: &str = "VDIRSYNCER_CONFIG=DIR/config vdirsyncer sync";

/// vdirsyncer's configuration: a pair per collection, local `filesystem` ↔ Radicale, the
/// collection URLs given directly (`collections = null`).
pub fn vdirsyncer_config(dir: &str, cal: &str, book: &str, user: &str, password: &str) -> String {
    let mut o = format!("[general]\nstatus_path = \"{dir}/status/\"\n");
    for (name, kind, url, ext) in [
        ("contacts", "carddav", book, ".vcf"),
        ("calendar", "caldav", cal, ".ics"),
    ] {
        let _ = write!(
            o,
            "\n[pair bench_{name}]\na = \"bench_{name}_local\"\nb = \"bench_{name}_remote\"\n\
             collections = null\nconflict_resolution = \"a wins\"\n\n\
             [storage bench_{name}_local]\ntype = \"filesystem\"\npath = \"{dir}/{name}/\"\n\
             fileext = \"{ext}\"\n\n\
             [storage bench_{name}_remote]\ntype = \"{kind}\"\nurl = \"{url}\"\n\
             username = \"{user}\"\npassword = \"{password}\"\n"
        );
    }
    o
}

fn vdirsyncer(dir: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("vdirsyncer");
    cmd.args(args)
        .env("VDIRSYNCER_CONFIG", config)
        .env("HOME", dir)
        .stdin(Stdio::null());
    cmd
}

/// `vdirsyncer discover` (not timed), then `vdirsyncer sync`, timed from start to exit, with
/// `config` (logs in `dir`).
fn run_vdirsyncer(dir: &Path, config: &Path) -> Result<Usage> {
    let log = |name: &str| -> Result<std::fs::File> {
        std::fs::File::create(dir.join(name)).with_context(|| format!("creating {name}"))
    };
    let out = vdirsyncer(dir, config, &["discover"])
        .stdout(log("discover.log")?)
        .stderr(log("discover.err")?)
        .status()
        .context("running vdirsyncer (is it installed? scripts/bench.sh installs it)")?;
    ensure!(
        out.success(),
        "vdirsyncer discover failed: {out} (see {})",
        dir.join("discover.err").display()
    );
    let (status, usage) = Watched::spawn(
        vdirsyncer(dir, config, &["sync"])
            .stdout(log("sync.log")?)
            .stderr(log("sync.err")?),
    )?
    .wait(Duration::from_secs(3600))?;
    ensure!(
        status.success(),
        "vdirsyncer sync failed: {status} (see {})",
        dir.join("sync.err").display()
    );
    Ok(usage)
}

pub fn vdirsyncer_version() -> String {
    let out = Command::new("vdirsyncer").arg("--version").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// vdirsyncer's first synchronization of the same items, as files, into its own empty
/// calendar and address book: the items serversync created in `from`'s collections (see
/// [`serversync_row`]) copied into its `filesystem` storages, `vdirsyncer discover` (not
/// timed), then `vdirsyncer sync` timed from its start to its exit; then every item is
/// checked on the server. Returns the row and the average sizes of a vCard and of a
/// calendar object.
pub async fn vdirsyncer_row(
    dir: &Path,
    dav: &Radicale,
    items: usize,
    from: &str,
) -> Result<(Row, (usize, usize))> {
    std::fs::create_dir_all(dir.join("status"))?;
    let cal = dav
        .make(VDIR_USER, "calendar", RecordType::Appointment)
        .await?;
    let book = dav.make(VDIR_USER, "contacts", RecordType::Contact).await?;
    let (contacts, vcf) = copy_items(dav, CRM_USER, &book_name(from), &dir.join("contacts"))?;
    let (events, ics) = copy_items(dav, CRM_USER, &calendar_name(from), &dir.join("calendar"))?;
    ensure!(
        contacts == items && events == items,
        "{contacts} contacts and {events} events to copy from serversync's collections, \
         {items} each expected"
    );
    let config = dir.join("config");
    std::fs::write(
        &config,
        vdirsyncer_config(
            &dir.display().to_string(),
            &cal,
            &book,
            VDIR_USER,
            &dav.password,
        ),
    )?;
    let radicale_cpu = dav.cpu();
    let usage = run_vdirsyncer(dir, &config)?;
    let radicale_cpu = dav.cpu() - radicale_cpu;
    let (events, contacts) = (
        dav.count(VDIR_USER, &cal).await?,
        dav.count(VDIR_USER, &book).await?,
    );
    ensure!(
        events == items && contacts == items,
        "vdirsyncer: {events} events and {contacts} contacts on the server, {items} each expected"
    );
    Ok((
        Row {
            tool: "vdirsyncer".into(),
            how: "`.vcf` and `.ics` files (`filesystem` storages) → CardDAV and CalDAV, \
                  `vdirsyncer sync` (both pairs at once)"
                .into(),
            contacts,
            events,
            usage,
            note: Some(format!(
                "vdirsyncer: Radicale used {radicale_cpu:.2} CPU s during this run."
            )),
        },
        (vcf, ics),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multistatus_counts_its_items_not_the_collection() {
        let body = "<?xml version=\"1.0\"?><multistatus xmlns=\"DAV:\">\
            <response><href>/u/c/</href></response>\
            <response><href>/u/c/a.ics</href></response>\
            <response><D:href>/u/c/b.ics</D:href></response></multistatus>";
        assert_eq!(count_items(body), 2);
    }

    #[test]
    fn the_appointments_are_in_the_future_and_the_people_distinct() {
        let (org, owner, now) = (OrgId::new(), UserId::new(), Utc::now());
        for i in [0, 1, 359, 360, 3_240, 9_999] {
            let a = appointment(i, org, owner, "crm@example.test", now);
            assert!(a.starts_at > now && a.ends_at > a.starts_at, "{i}");
            assert!(a.attendees.len() < 4);
        }
        let emails: std::collections::HashSet<String> = (0..10_000).map(|i| person(i).1).collect();
        assert_eq!(emails.len(), 10_000);
        assert!(emails.iter().all(|e| e.is_ascii()), "plain addresses");
    }

    #[test]
    fn the_server_items_are_tracked_and_read_back_as_written() {
        use serversync_connectors::dav::mapping::to_values;
        let now = Utc::now();
        let (events, cards) = server_items(3, "Contoso", CRM_USER, now).unwrap();
        assert_eq!((events.len(), cards.len()), (3, 3));
        let v = to_values(RecordType::Appointment, &events[1].1).unwrap();
        let a = appointment(1, OrgId::new(), UserId::new(), CRM_USER, now);
        assert_eq!(v["subject"], a.subject.as_str());
        assert_eq!(v["uid"], "bench-event-1@example.test");
        assert_eq!(v["categories"], serde_json::json!(["Tracked to Contoso"]));
        let v = to_values(RecordType::Contact, &cards[2].1).unwrap();
        assert_eq!(v["full_name"], person(2).0.as_str());
        assert_eq!(v["categories"], serde_json::json!(["Tracked to Contoso"]));
        assert_ne!(events[0].0, events[1].0, "one file per item");
    }

    #[test]
    fn the_vdirsyncer_config_names_both_pairs() {
        let c = vdirsyncer_config("/d", "http://h/u/cal/", "http://h/u/book/", "u", "p");
        for needle in [
            "[pair bench_contacts]",
            "[pair bench_calendar]",
            "type = \"caldav\"\nurl = \"http://h/u/cal/\"",
            "type = \"carddav\"\nurl = \"http://h/u/book/\"",
            "collections = null",
            "status_path = \"/d/status/\"",
        ] {
            assert!(c.contains(needle), "{needle} in {c}");
        }
    }
}
