//! `docs/benchmarks.md`: every figure, the versions, the command, ratios and targets.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::RunArgs;
use crate::latency::{Latency, percentile};
use crate::{dav, ingest, outgoing, pages, scale, scaleout};

pub struct Report {
    pub command: String,
    pub messages: usize,
    pub versions: Vec<(String, String)>,
    pub warm_up: Option<Duration>,
    pub avg_message: Option<u64>,
    pub ingest: Vec<ingest::Row>,
    pub latency: Option<Latency>,
    /// Arrival latency over EWS (streaming notifications from the Exchange test double).
    pub ews_latency: Option<Latency>,
    /// Arrival latency over Microsoft Graph (change notifications from the Graph test double
    /// waking the delta query).
    pub graph_latency: Option<Latency>,
    pub outgoing: Vec<outgoing::Row>,
    pub scale: Option<scale::Scale>,
    /// The ingest over 20 mailboxes with 1, 2 and 4 serve processes, and a takeover.
    pub scaleout: Option<scaleout::ScaleOut>,
    /// The first two-way sync of contacts and appointments with Radicale, beside vdirsyncer.
    pub dav: Option<dav::DavBench>,
    /// The first sync of contacts and appointments already on Radicale, beside vdirsyncer.
    pub dav_down: Option<dav::DavBench>,
    /// The admin center's pages at N email activities.
    pub pages: Option<pages::PagesBench>,
    pub total: Duration,
}

impl Report {
    pub fn new(args: &RunArgs) -> Report {
        let mut command = args.command.clone();
        if !args.only.is_empty() && !command.contains("--only") {
            command.push_str(&format!(" --only {}", args.only.join(",")));
        }
        Report {
            command,
            messages: args.messages,
            versions: Vec::new(),
            warm_up: None,
            avg_message: None,
            ingest: Vec::new(),
            latency: None,
            ews_latency: None,
            graph_latency: None,
            outgoing: Vec::new(),
            scale: None,
            scaleout: None,
            dav: None,
            dav_down: None,
            pages: None,
            total: Duration::ZERO,
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# Benchmarks\n\n\
             Produced by `{}` on {} (UTC): every figure below comes from that one run, the \
             peers measured on the same data in the same run. Do not edit by hand; run the \
             command again.\n\n\
             Servers are private instances started by the benchmark with the test environment's \
             launchers (`serversync-testkit`), on 127.0.0.1, TLS everywhere (IMAPS, SMTP \
             submission with STARTTLS + AUTH); Dovecot's mail and Postfix's queue are in \
             memory (tmpfs, `/dev/shm`), the tools measured write to the disk. Each tool is a \
             separate process; CPU is user + \
             system time of that process, peak RSS its high-water mark (`VmHWM`). The whole run \
             took {:.0} s.\n",
            self.command,
            chrono::Utc::now().format("%Y-%m-%d %H:%M"),
            self.total.as_secs_f64()
        );
        if self.has_ews() {
            let _ = writeln!(
                o,
                "The Exchange (EWS) rows run against the Exchange test double \
                 (`serversync_testkit::ews`), an in-process imitation of Exchange Server 2019 \
                 over HTTPS with NTLM, started inside the benchmark process. It is not a real \
                 Exchange: it answers from memory, so those figures show serversync's own cost \
                 over EWS, not Exchange's.\n"
            );
        }
        if self.has_graph() {
            let _ = writeln!(
                o,
                "The Exchange Online (Graph) rows run against the Graph test double \
                 (`serversync_testkit::graph`), an in-process imitation of Microsoft Graph v1.0 \
                 and Entra ID's token endpoint over HTTPS, started inside the benchmark process. \
                 It is not Exchange Online: it answers from memory, so those figures show \
                 serversync's own cost over Graph, not Microsoft's.\n"
            );
        }
        let _ = writeln!(
            o,
            "## Machine and versions\n\n| what | version |\n|---|---|"
        );
        for (k, v) in &self.versions {
            let _ = writeln!(o, "| {k} | {v} |");
        }
        self.render_ingest(&mut o);
        self.render_latency(&mut o);
        self.render_outgoing(&mut o);
        self.render_scale(&mut o);
        if let Some(s) = &self.scaleout {
            s.render(&mut o);
        }
        self.render_dav(&mut o);
        self.render_dav_down(&mut o);
        self.render_pages(&mut o);
        self.render_targets(&mut o);
        self.render_commands(&mut o);
        o
    }

    fn render_commands(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n## Exact commands\n\n\
             - serversync: `serversync --config DIR/serversync.toml --data-dir DIR serve --listen \
             127.0.0.1:PORT` with `SERVERSYNC_DATABASE_URL`, `SERVERSYNC_MASTER_KEY` and \
             `SERVERSYNC_TLS_EXTRA_CA_FILES` (the test CA) and `SERVERSYNC_NETWORK_ALLOW_RANGES=127.0.0.0/8,::1` set, an empty configuration file \
             (engine defaults), and the store prepared by the benchmark (bootstrap \
             organization, profile, mailboxes: `crates/bench/src/setup.rs`).\n\
             - raw TLS fetch: `serversync-bench raw-fetch --port PORT --user USER --ca CA` \
             (`LOGIN`, `SELECT INBOX`, `UID FETCH 1:* BODY.PEEK[]`, `LOGOUT` on one connection; \
             literals read and dropped).\n\
             - raw SMTP loop: `serversync-bench raw-smtp --port PORT --user USER --to RCPT \
             --count N --ca CA` (a hand-written client: TCP_NODELAY, one command at a time).\n\
             - mbsync: `{}` with\n\n```\n{}```\n\
             - fetchmail: `{}` with\n\n```\n{}```",
            ingest::MBSYNC_CMD,
            ingest::mbsync_rc(0, "bench@example.test", "PASSWORD", "CA", "DIR/mail")
                .replace("Port 0", "Port PORT"),
            ingest::FETCHMAIL_CMD,
            ingest::fetchmail_rc(
                0,
                "bench@example.test",
                "PASSWORD",
                "CA",
                "DIR/fetchmail.bsmtp"
            )
            .replace("port 0", "port PORT"),
        );
        if self.has_ews() {
            let _ = writeln!(
                o,
                "- Exchange test double: `serversync_testkit::ews::EwsDouble` (Exchange 2019) \
                 offering only NTLM with channel binding required; the service account `{}` \
                 with the ApplicationImpersonation role; serversync's profile is an Exchange \
                 Server profile at the double's fixed EWS URL (no Autodiscover), impersonation \
                 on (`crates/bench/src/ews.rs`, `crates/bench/src/setup.rs`).",
                crate::ews::SERVICE
            );
        }
        if self.has_graph() {
            let _ = writeln!(
                o,
                "- Graph test double: `serversync_testkit::graph::GraphDouble` (default paging \
                 and throttling limits) with tenant `{}` and app `{}` granted Mail.ReadWrite \
                 and Mail.Send; serversync's profile is an Exchange Online profile with \
                 server-to-server authentication (client credentials), and `serve`'s \
                 configuration file points it at the double (`[exchange] graph_url`, \
                 `login_url`) (`crates/bench/src/graph.rs`, `crates/bench/src/setup.rs`).",
                crate::graph::TENANT,
                crate::graph::APP
            );
        }
        if self.dav.is_some() || self.dav_down.is_some() {
            let _ = writeln!(
                o,
                "- Radicale: `python3 -m radicale --config DIR/radicale.conf` \
                 (`serversync_testkit::radicale`: htpasswd (plain) authentication, \
                 `owner_only` rights, `multifilesystem` storage); serversync's profile is an \
                 IMAP profile whose `dav` settings name the calendar and the address book by \
                 URL, and its mailbox (the administrator's) has only appointments, contacts \
                 and tasks on, by server-side synchronization (`crates/bench/src/dav.rs`, \
                 `crates/bench/src/setup.rs`).\n\
                 - vdirsyncer: `VDIRSYNCER_CONFIG=DIR/config vdirsyncer discover` (not timed), \
                 then `{}` with\n\n```\n{}```",
                dav::VDIRSYNCER_CMD,
                dav::vdirsyncer_config(
                    "DIR",
                    "http://127.0.0.1:PORT/vdir@example.test/calendar/",
                    "http://127.0.0.1:PORT/vdir@example.test/contacts/",
                    dav::VDIR_USER,
                    "PASSWORD"
                ),
            );
        }
    }

    fn rate(row: &ingest::Row) -> f64 {
        row.messages as f64 / row.usage.wall.as_secs_f64()
    }

    /// The first IMAP (or peer) row of `tool` whose description contains `how`.
    fn find(&self, tool: &str, how: &str) -> Option<&ingest::Row> {
        self.ingest
            .iter()
            .find(|r| !r.ews && !r.graph && r.tool.starts_with(tool) && r.how.contains(how))
    }

    /// serversync's EWS row on the store `how`.
    fn find_ews(&self, how: &str) -> Option<&ingest::Row> {
        self.ingest.iter().find(|r| r.ews && r.how.contains(how))
    }

    /// serversync's Graph row on the store `how`.
    fn find_graph(&self, how: &str) -> Option<&ingest::Row> {
        self.ingest.iter().find(|r| r.graph && r.how.contains(how))
    }

    fn has_graph(&self) -> bool {
        self.ingest.iter().any(|r| r.graph) || self.graph_latency.is_some()
    }

    fn has_ews(&self) -> bool {
        self.ingest.iter().any(|r| r.ews) || self.ews_latency.is_some()
    }

    fn render_ingest(&self, o: &mut String) {
        if self.ingest.is_empty() {
            return;
        }
        let imap = self.ingest.iter().any(|r| !r.ews && !r.graph);
        let _ = writeln!(
            o,
            "\n## Ingest: initial synchronization of {} messages\n",
            self.messages
        );
        if imap {
            let _ = writeln!(
                o,
                "One Inbox of {} messages, {} KB on average (plain + HTML alternatives; one in \
                 ten with a 40–80 KB attachment; 300 senders), seeded into Dovecot's Maildir. A \
                 warm-up fetch first built Dovecot's index and filled the page cache ({:.1} s), \
                 so no tool pays for that. Every tool starts from empty state (no database, no \
                 UID list, no local Maildir).\n",
                self.messages,
                self.avg_message.unwrap_or(0) / 1024,
                self.warm_up.unwrap_or_default().as_secs_f64()
            );
        }
        if self.ingest.iter().any(|r| r.ews) {
            let _ = writeln!(
                o,
                "The EWS rows: the same {} messages{}, delivered unread into the Inbox of the \
                 Exchange test double (in the benchmark's memory), read by serversync over EWS \
                 (`SyncFolderItems` for the item ids page by page, then `GetItem` with the MIME \
                 content, several items a request) from a \
                 fresh store, signing in as a service account with impersonation. Timed the \
                 same way as the IMAP rows: from the start of `serve` until every message is \
                 stored and tracked.\n",
                self.messages,
                if imap {
                    String::new()
                } else {
                    format!(
                        " ({} KB on average; plain + HTML alternatives, one in ten with a \
                         40–80 KB attachment, 300 senders)",
                        self.avg_message.unwrap_or(0) / 1024
                    )
                }
            );
        }
        if self.ingest.iter().any(|r| r.graph) {
            let _ = writeln!(
                o,
                "The Graph rows: the same {} messages, delivered unread into the Inbox of the \
                 Graph test double (in the benchmark's memory), read by serversync over \
                 Microsoft Graph (the Inbox's delta query page by page, then the page's \
                 messages' MIME by `$value`, 20 to a `$batch` round trip) from a fresh store, with an app-only token (client \
                 credentials). Timed the same way as the IMAP rows: from the start of `serve` \
                 until every message is stored and tracked.\n",
                self.messages
            );
        }
        let _ = writeln!(
            o,
            "| tool | what it does | messages | MB | seconds | messages/s | MB/s | CPU s | peak RSS MB |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.ingest {
            let secs = r.usage.wall.as_secs_f64();
            let mb = r.bytes as f64 / 1e6;
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.1} | {:.2} | {:.1} |",
                r.tool,
                r.how,
                r.messages,
                mb,
                secs,
                Self::rate(r),
                mb / secs,
                r.usage.cpu,
                r.usage.peak_rss_kb as f64 / 1024.0
            );
        }
        let notes: Vec<&str> = self
            .ingest
            .iter()
            .filter_map(|r| r.note.as_deref())
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(o);
            for n in notes {
                let _ = writeln!(o, "- {n}");
            }
        }
        let mut lines = Vec::new();
        for store in ["SQLite", "PostgreSQL"] {
            let Some(ours) = self.find("serversync", store) else {
                continue;
            };
            let mut parts = Vec::new();
            for (peer, label) in [
                ("mbsync", "mbsync"),
                ("fetchmail", "fetchmail"),
                ("raw TLS", "the raw TLS fetch ceiling"),
            ] {
                if let Some(p) = self.find(peer, "") {
                    parts.push(format!("{:.2}× {label}", Self::rate(ours) / Self::rate(p)));
                }
            }
            if !parts.is_empty() {
                lines.push(format!("- serversync on {store}: {}", parts.join(", ")));
            }
        }
        for store in ["SQLite", "PostgreSQL"] {
            if let (Some(e), Some(i)) = (self.find_ews(store), self.find("serversync", store)) {
                lines.push(format!(
                    "- serversync over EWS on {store}: {:.2}× serversync over IMAP on {store}",
                    Self::rate(e) / Self::rate(i)
                ));
            }
        }
        for store in ["SQLite", "PostgreSQL"] {
            if let (Some(g), Some(i)) = (self.find_graph(store), self.find("serversync", store)) {
                lines.push(format!(
                    "- serversync over Graph on {store}: {:.2}× serversync over IMAP on {store}",
                    Self::rate(g) / Self::rate(i)
                ));
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(
                o,
                "\nRatios (messages/s of serversync ÷ the other's):\n\n{}",
                lines.join("\n")
            );
        }
    }

    fn render_latency(&self, o: &mut String) {
        if self.latency.is_none() && self.ews_latency.is_none() && self.graph_latency.is_none() {
            return;
        }
        let _ = writeln!(o, "\n## Arrival latency\n");
        if let Some(l) = &self.latency {
            let _ = writeln!(
                o,
                "IMAP: {} messages submitted over SMTP to Postfix, one every {} ms; Postfix \
                 delivers to Dovecot over LMTP; serversync holds the Inbox in IMAP IDLE (SQLite \
                 store). Timed from the start of the SMTP submission until the email activity \
                 appears in the API's change feed (`GET /api/v1/orgs/{{org}}/changes`, polled \
                 every {} ms), so the figures include Postfix's queueing and Dovecot's \
                 delivery. The floor: the same messages timed until a bare IMAP client, idling \
                 on its own connection to the same Inbox (`EXAMINE`, `IDLE`), was told of them \
                 by Dovecot (`* N EXISTS`; matched to the probes in arrival order).\n",
                l.samples.len(),
                l.interval.as_millis(),
                l.poll.as_millis(),
            );
        }
        if let Some(l) = &self.ews_latency {
            let _ = writeln!(
                o,
                "Exchange (EWS): {} messages delivered into the Inbox of the Exchange test \
                 double (in the benchmark process), one every {} ms, after the mailbox was \
                 synchronized; serversync waits on streaming notifications (`Subscribe`, \
                 `GetStreamingEvents`), then fetches the new item (`SyncFolderItems`, \
                 `GetItem`) over HTTPS with NTLM (SQLite store). Timed from just before the \
                 delivery until the email activity appears in the change feed (polled every {} \
                 ms), like the IMAP figures; there is no mail server's delivery in it.\n",
                l.samples.len(),
                l.interval.as_millis(),
                l.poll.as_millis(),
            );
        }
        if let Some(l) = &self.graph_latency {
            let _ = writeln!(
                o,
                "Exchange Online (Graph): {} messages delivered into the Inbox of the Graph test \
                 double (in the benchmark process), one every {} ms, after the mailbox was \
                 synchronized and its Inbox subscription created. For each message the double \
                 posts a change notification to `serve` (`[exchange] notification_url`, \
                 HTTP on 127.0.0.1), which wakes the mailbox's delta query; the message is then \
                 fetched (`$value` in a `$batch`) over HTTPS (SQLite store). Without notifications the delta \
                 is read every 15 s. Timed from just before the delivery until the email \
                 activity appears in the change feed (polled every {} ms).\n",
                l.samples.len(),
                l.interval.as_millis(),
                l.poll.as_millis(),
            );
        }
        let _ = writeln!(
            o,
            "| path | messages | p50 ms | p95 ms | p99 ms | max ms |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        if let Some(f) = self.latency.as_ref().and_then(|l| l.floor.as_ref()) {
            let _ = writeln!(
                o,
                "| floor: a bare IMAP IDLE client told by Dovecot (same messages, same run) | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                f.len(),
                percentile(f, 50.0),
                percentile(f, 95.0),
                percentile(f, 99.0),
                f.last().copied().unwrap_or(f64::NAN)
            );
        }
        for (path, l) in [
            ("IMAP IDLE (Postfix → Dovecot)", &self.latency),
            (
                "EWS streaming notifications (Exchange test double)",
                &self.ews_latency,
            ),
            (
                "Graph change notifications → delta query (Graph test double)",
                &self.graph_latency,
            ),
        ] {
            let Some(l) = l else { continue };
            let s = &l.samples;
            let _ = writeln!(
                o,
                "| {path} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                s.len(),
                percentile(s, 50.0),
                percentile(s, 95.0),
                percentile(s, 99.0),
                s.last().copied().unwrap_or(f64::NAN)
            );
        }
    }

    fn render_outgoing(&self, o: &mut String) {
        if self.outgoing.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\n## Outgoing\n\n\
             Emails to one recipient through Postfix's submission port (STARTTLS + AUTH \
             PLAIN); Postfix delivers them to Dovecot meanwhile, on the same two cores, both \
             keeping their files in memory (tmpfs): on this machine's file system, which has \
             no journal, ext4 passes over every inode deleted in the last minute or more \
             before it gives out a new one, so Postfix's queue files made each row slower than \
             the one before. serversync's emails are composed first, then `serve` starts; it is timed from its \
             start until every activity is Sent and, with the Sent copy, until every copy is in \
             the sender's Sent folder (counted in Dovecot's maildir). The rows ran in {} rounds, \
             one after another in each; a row shows its median round (seconds, CPU, memory) and \
             lists every round's seconds. Every row of every round sends to its own recipient, \
             so each starts with an empty Inbox, and starts once the row before it is all \
             delivered. The per-mailbox send rate limit \
             (`max_sends_per_minute`) is set out of the way in the store for this: it is the \
             administrator's policy, not the engine's speed.\n\n\
             | tool | what it does | emails | seconds | emails/s | CPU s | peak RSS MB | every round (s) |\n\
             |---|---|---:|---:|---:|---:|---:|---|",
            crate::outgoing::ROUNDS
        );
        for r in &self.outgoing {
            let secs = r.usage.wall.as_secs_f64();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.1} | {} |",
                r.tool,
                r.how,
                r.emails,
                secs,
                r.emails as f64 / secs,
                r.usage.cpu,
                r.usage.peak_rss_kb as f64 / 1024.0,
                r.rounds
                    .iter()
                    .map(|s| format!("{s:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(raw) = self.outgoing.iter().find(|r| r.tool.starts_with("raw")) {
            let _ = writeln!(
                o,
                "\nRatios (emails/s of the median round ÷ the raw loop's):\n"
            );
            for r in self.outgoing.iter().filter(|r| r.tool == "serversync") {
                let _ = writeln!(
                    o,
                    "- {}: {:.2}×",
                    r.how,
                    raw.usage.wall.as_secs_f64() / r.usage.wall.as_secs_f64()
                        * (r.emails as f64 / raw.emails as f64)
                );
            }
        }
    }

    fn render_scale(&self, o: &mut String) {
        let Some(s) = &self.scale else { return };
        let _ = writeln!(
            o,
            "\n## Scale: {} mailboxes idling\n\n\
             {} approved mailboxes (one Dovecot account each) on one IMAP profile, enabled by \
             the administrator's \"test & enable\" of the profile through the API; one `serve` \
             process on PostgreSQL then holds every Inbox in IMAP IDLE over TLS. Memory per \
             mailbox is the growth of the process's resident set from before enabling to \
             idling, divided by the mailboxes; CPU is measured over {} s of idling.\n\n\
             | figure | value |\n|---|---:|\n\
             | test & enable job for all mailboxes | {:.1} s |\n\
             | until every mailbox synchronized once and held (then in IDLE) | {:.1} s |\n\
             | RSS before enabling | {:.1} MB |\n\
             | RSS with all idling | {:.1} MB |\n\
             | RSS per idle mailbox | {:.0} KB |\n\
             | CPU at idle | {:.2} % of one core |",
            s.mailboxes,
            s.mailboxes,
            s.idle_window.as_secs(),
            s.enable_job.as_secs_f64(),
            s.all_idle.as_secs_f64(),
            s.baseline_rss_kb as f64 / 1024.0,
            s.idle_rss_kb as f64 / 1024.0,
            s.kb_per_mailbox(),
            s.idle_cpu * 100.0
        );
    }

    fn render_dav(&self, o: &mut String) {
        let Some(d) = &self.dav else { return };
        let _ = writeln!(
            o,
            "\n## Two-way sync (CalDAV/CardDAV): first sync of {n} contacts and {n} events\n\n\
             {n} contacts (name, one or two email addresses, company, most with a job title and \
             phone numbers; {vcf} bytes on average as a vCard) and {n} appointments (from 1 to \
             360 days ahead, 30 to 90 minutes, 0 to 3 attendees, one in three with a \
             description; {ics} bytes on average as a calendar object), synchronized for the \
             first time into an empty calendar and an empty address book on a private \
             Radicale (plain HTTP on 127.0.0.1, Basic authentication, one file per item). \
             Every tool has collections of its own on the same Radicale, in the same run.\n\n\
             serversync: the records are in the CRM store of a fresh database, owned by the \
             user of one mailbox whose profile names the two collections. Timed from the start \
             of `serve` until the mailbox's first two-way round is recorded as successful; \
             every item is then counted on the server (PROPFIND, Depth 1). \
             vdirsyncer: the same items (copies of the files Radicale stored for \
             serversync's SQLite run) as `.vcf` and `.ics` files in two `filesystem` \
             storages, each paired with one of its collections; `vdirsyncer discover` first (not timed), then \
             `vdirsyncer sync` timed from start to exit, and the items counted the same way.\n\n\
             | tool | what it does | contacts | events | seconds | items/s | CPU s | peak RSS MB |\n\
             |---|---|---:|---:|---:|---:|---:|---:|",
            n = d.items,
            vcf = d.vcard_bytes,
            ics = d.event_bytes,
        );
        Self::render_dav_rows(o, d);
    }

    fn render_dav_down(&self, o: &mut String) {
        let Some(d) = &self.dav_down else { return };
        let _ = writeln!(
            o,
            "\n## Two-way sync from the server (CalDAV/CardDAV): first sync of {n} contacts and {n} events already there\n\n\
             The same kinds of contacts and appointments ({vcf} bytes on average as a vCard, \
             {ics} bytes as a calendar object), this time already on the server: written by \
             serversync's CalDAV/CardDAV mapping as files into a calendar and an address book \
             of each tool's own on a private Radicale (the server's own storage format, \
             before the tool starts), each marked with the category \"Tracked to \
             <organization>\" that makes serversync take an item into the CRM. Every tool \
             synchronizes its collections for the first time, in the same run.\n\n\
             serversync: a fresh database with an empty CRM and one mailbox whose profile names \
             the two collections; timed from the start of `serve` until the mailbox's first \
             two-way round is recorded as successful, then the CRM's appointments and contacts \
             are counted. vdirsyncer: two empty `filesystem` storages, each paired with one of \
             its collections; `vdirsyncer discover` first (not timed), then `vdirsyncer sync` \
             timed from start to exit, and the files counted.\n\n\
             This direction is where 10,000 items can be measured here: uploading them is \
             bound by Radicale itself (each upload checks the new item's UID against every \
             item of the collection, so N uploads cost O(N²): the upload section's notes give \
             Radicale's CPU time), the same for every tool.\n\n\
             | tool | what it does | contacts | events | seconds | items/s | CPU s | peak RSS MB |\n\
             |---|---|---:|---:|---:|---:|---:|---:|",
            n = d.items,
            vcf = d.vcard_bytes,
            ics = d.event_bytes,
        );
        Self::render_dav_rows(o, d);
    }

    fn render_pages(&self, o: &mut String) {
        let Some(b) = &self.pages else { return };
        let _ = writeln!(
            o,
            "\n## Admin center: pages at {n} email activities\n\n\
             A fresh store per backend with 1,000 contacts and {n} email activities (received \
             mail over three years, two in three from those contacts, one in 50 sent, one in \
             500 waiting and one in 500 failed), written directly (on PostgreSQL then `ANALYZE`d, \
             as autovacuum does soon after a load); then `serve` starts and each \
             page is asked for {k} times with the administrator's session (two more before, \
             not timed), one request at a time, over HTTP on 127.0.0.1. Times are from sending \
             the request to the last byte of the answer. The target is every page within \
             300 ms.\n\n\
             | store | page | path | p50 ms | p95 ms | max ms | KB |\n|---|---|---|---:|---:|---:|---:|",
            n = b.activities,
            k = pages::SAMPLES,
        );
        for r in &b.rows {
            let _ = writeln!(
                o,
                "| {} | {} | `{}` | {:.1} | {:.1} | {:.1} | {:.0} |",
                r.backend, r.page, r.path, r.p50_ms, r.p95_ms, r.max_ms, r.kb
            );
        }
        let worst = b.worst_p95();
        let _ = writeln!(
            o,
            "\nSlowest page's p95: {worst:.0} ms — the target of 300 ms is {}.",
            if worst <= 300.0 { "met" } else { "**missed**" }
        );
    }

    /// The rows of a CalDAV/CardDAV table, their notes, and serversync's ratios to vdirsyncer.
    fn render_dav_rows(o: &mut String, d: &dav::DavBench) {
        for r in &d.rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.1} |",
                r.tool,
                r.how,
                r.contacts,
                r.events,
                r.usage.wall.as_secs_f64(),
                r.rate(),
                r.usage.cpu,
                r.usage.peak_rss_kb as f64 / 1024.0
            );
        }
        let notes: Vec<&str> = d.rows.iter().filter_map(|r| r.note.as_deref()).collect();
        if !notes.is_empty() {
            let _ = writeln!(o);
            for n in notes {
                let _ = writeln!(o, "- {n}");
            }
        }
        let Some(peer) = d.rows.iter().find(|r| r.tool == "vdirsyncer") else {
            return;
        };
        let lines: Vec<String> = d
            .rows
            .iter()
            .filter(|r| r.tool == "serversync")
            .map(|r| {
                let store = if r.how.contains("PostgreSQL") {
                    "PostgreSQL"
                } else {
                    "SQLite"
                };
                format!(
                    "- serversync on {store}: {:.2}× vdirsyncer",
                    r.rate() / peer.rate()
                )
            })
            .collect();
        if !lines.is_empty() {
            let _ = writeln!(
                o,
                "\nRatios (items/s of serversync ÷ vdirsyncer's):\n\n{}",
                lines.join("\n")
            );
        }
    }

    fn render_targets(&self, o: &mut String) {
        let mut rows: Vec<(String, String, String, bool)> = Vec::new();
        // Issue 19's targets.
        for (backend, peers) in [
            ("SQLite", &[("mbsync", 2.0), ("raw TLS", 0.3)][..]),
            ("PostgreSQL", &[("mbsync", 1.0)][..]),
        ] {
            let Some(ours) = self.find("serversync", &format!("activities in {backend}")) else {
                continue;
            };
            for (peer, want) in peers {
                if let Some(p) = self.find(peer, "") {
                    let r = Self::rate(ours) / Self::rate(p);
                    rows.push((
                        format!("ingest ({backend}) vs {}", p.tool),
                        format!("≥ {want}×"),
                        format!("{r:.2}×"),
                        r >= *want,
                    ));
                }
            }
            let mb = ours.usage.peak_rss_kb as f64 / 1024.0;
            rows.push((
                format!("peak RSS during ingest ({backend})"),
                "≤ 100 MB".into(),
                format!("{mb:.1} MB"),
                mb <= 100.0,
            ));
            if let Some(full) = self
                .ingest
                .iter()
                .find(|r| !r.ews && !r.graph && r.how.contains(&format!("{backend}, ")))
            {
                let cost = 1.0 - Self::rate(full) / Self::rate(ours);
                rows.push((
                    format!("cost of resolution at 100,000 contacts ({backend})"),
                    "≤ 10 %".into(),
                    format!("{:.1} %", cost * 100.0),
                    cost <= 0.10,
                ));
            }
        }
        if let Some(l) = &self.latency {
            let p99 = percentile(&l.samples, 99.0);
            rows.push((
                "arrival latency p99".into(),
                "< 1000 ms".into(),
                format!("{p99:.0} ms"),
                p99 < 1000.0,
            ));
            if let Some(f) = &l.floor {
                let over = percentile(&l.samples, 50.0) - percentile(f, 50.0);
                rows.push((
                    "arrival latency p50 over Dovecot's own IDLE notification (bare client)".into(),
                    "≤ 100 ms".into(),
                    format!("{over:.0} ms"),
                    over <= 100.0,
                ));
            }
        }
        if let Some(l) = &self.ews_latency {
            let p99 = percentile(&l.samples, 99.0);
            rows.push((
                "arrival latency p99 over EWS (test double)".into(),
                "< 1000 ms".into(),
                format!("{p99:.0} ms"),
                p99 < 1000.0,
            ));
        }
        if let Some(raw) = self.outgoing.iter().find(|r| r.tool.starts_with("raw")) {
            for r in self.outgoing.iter().filter(|r| r.tool == "serversync") {
                let x = raw.usage.wall.as_secs_f64() / r.usage.wall.as_secs_f64();
                let want = if r.how.contains("no Sent copy") {
                    0.9
                } else {
                    0.7
                };
                rows.push((
                    format!("outgoing vs the raw loop ({})", short(&r.how)),
                    format!("≥ {want}×"),
                    format!("{x:.2}×"),
                    x >= want,
                ));
            }
        }
        if let Some(s) = &self.scale {
            let kb = s.kb_per_mailbox();
            rows.push((
                format!("RSS per idle mailbox ({} mailboxes)", s.mailboxes),
                "≤ 50 KB".into(),
                format!("{kb:.0} KB"),
                kb <= 50.0,
            ));
            rows.push((
                format!("CPU at idle ({} mailboxes)", s.mailboxes),
                "≤ 5 % of one core".into(),
                format!("{:.2} %", s.idle_cpu * 100.0),
                s.idle_cpu <= 0.05,
            ));
        }
        if let Some(s) = &self.scaleout {
            let (took, bound) = s.takeover_against_bound();
            rows.push((
                "takeover after kill -9 (scale out)".into(),
                format!("≤ lease TTL + one tick ({:.0} s)", bound.as_secs_f64()),
                format!("{:.1} s", took.as_secs_f64()),
                took <= bound,
            ));
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\n## Targets\n\n| target | wanted | measured | |\n|---|---|---|---|"
        );
        for (what, want, got, met) in rows {
            let _ = writeln!(
                o,
                "| {what} | {want} | {got} | {} |",
                if met { "met" } else { "**missed**" }
            );
        }
        let _ = writeln!(
            o,
            "\nWhat bounds each figure, and what was done about a missed target, is in \
             [benchmarks-notes.md](benchmarks-notes.md)."
        );
    }
}

fn short(how: &str) -> &str {
    if how.contains("no Sent copy") {
        "no Sent copy"
    } else {
        "with Sent copy"
    }
}

fn first_line(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("not available ({e})"),
    }
}

/// The machine and every program measured.
pub fn versions(pg_admin_url: &str, postfix_config: &std::path::Path) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(String::new(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1048576.0)
        });
    let psql = serversync_testkit::postgres::pg_program("psql")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "psql".into());
    vec![
        ("machine".into(), format!("{cores} cores ({cpu}), {mem}")),
        (
            "kernel".into(),
            first_line(Command::new("uname").arg("-sr")),
        ),
        (
            "serversync".into(),
            format!("{} (release build)", env!("CARGO_PKG_VERSION")),
        ),
        ("rustc".into(), first_line(Command::new("rustc").arg("-V"))),
        (
            "Dovecot".into(),
            first_line(Command::new("dovecot").arg("--version")),
        ),
        (
            "Postfix".into(),
            first_line(
                Command::new("postconf")
                    .arg("-c")
                    .arg(postfix_config)
                    .args(["-h", "mail_version"]),
            ),
        ),
        (
            "PostgreSQL".into(),
            first_line(Command::new(psql).args([pg_admin_url, "-tAc", "SHOW server_version"])),
        ),
        (
            "fetchmail".into(),
            first_line(Command::new("fetchmail").arg("--version")),
        ),
        (
            "mbsync".into(),
            first_line(Command::new("mbsync").arg("--version")),
        ),
    ]
}
