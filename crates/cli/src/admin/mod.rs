//! `serversync admin …`: the command-line mirror of the REST API. Every subcommand except
//! `token create` talks to a running server (URL and token from flags or the environment);
//! `token create` works on the database directly, to bootstrap access.
//!
//! Output is for people by default (aligned tables, `key: value` lines) and JSON with `--json`.
//! Errors come back as one line (`serversync: error: …`, exit status 1).

mod client;
mod input;
mod mailboxes;
mod monitor;
mod orgs;
mod output;
mod profiles;
mod records;
mod token;

use crate::config::Config;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

pub use client::Token;

const EXAMPLES: &str = "\
Connection: --url (or SERVERSYNC_URL; default http://<server.listen of the configuration>),
the API token from SERVERSYNC_TOKEN or --token-file, --org (or SERVERSYNC_ORG; default
\"default\"). Tables are for people; add --json for scripts.

Examples:
  export SERVERSYNC_TOKEN=ss_…            # printed on the first start of `serversync serve`
  serversync admin token create --user admin@localhost   # a new token, from the database
  serversync admin users create --name Alice --email alice@example.com \
      --mailbox-password-file alice.pw
  serversync admin profiles create --name Mail --type imap_smtp --incoming-host imap.example.com \\
      --outgoing-host smtp.example.com --default
  serversync admin mailboxes apply-defaults --all --wait
  serversync admin mailboxes approve alice@example.com
  serversync admin mailboxes test-enable alice@example.com --wait
  serversync admin mailboxes sync-now alice@example.com
  serversync admin mailboxes items alice@example.com --decision skipped
  serversync admin alerts list --mailbox alice@example.com";

/// Administer serversync through the API of a running server.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES, after_help = "Connection and examples: serversync admin --help")]
pub struct AdminArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Boxed: `Command::Admin` of main.rs stays small.
    #[command(subcommand)]
    pub command: Box<AdminCommand>,
}

/// How to reach the API; given before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection (any admin command)")]
pub struct Connection {
    /// URL of the serversync server. Default: http://<server.listen> from the configuration
    /// (127.0.0.1:8080 unless configured).
    #[arg(long, env = "SERVERSYNC_URL", global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token [env: SERVERSYNC_TOKEN]. Prefer the environment variable or --token-file: a
    /// flag value is visible to other local users in `ps` and stays in shell history.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<Token>,
    /// File holding the API token [env: SERVERSYNC_TOKEN_FILE]. Order: --token, --token-file,
    /// SERVERSYNC_TOKEN, SERVERSYNC_TOKEN_FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Organization: its name or id.
    #[arg(
        long,
        env = "SERVERSYNC_ORG",
        global = true,
        value_name = "ORG",
        default_value = "default"
    )]
    pub org: String,
    /// Print JSON (the API's documents; lists as one array with every page) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// API tokens: create one directly in the database (no running server or token needed);
    /// list and revoke them through the API.
    #[command(alias = "tokens")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Organizations (listing all and creating them needs an installation administrator).
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Mail domains of the organization: the Email Router delivers an address only to the
    /// organization holding its domain, and no other organization may use addresses in it
    /// (assigning and removing needs an installation administrator).
    Domains {
        #[command(subcommand)]
        command: DomainsCommand,
    },
    /// Users of the organization; each user gets a mailbox.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Queues of the organization; each queue gets a mailbox.
    Queues {
        #[command(subcommand)]
        command: QueuesCommand,
    },
    /// Security roles and their privileges.
    Roles {
        #[command(subcommand)]
        command: RolesCommand,
    },
    /// Email server profiles: how mailboxes reach their mail servers.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// The organization's email settings (default profile, delivery methods, approval…).
    Settings {
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Mailboxes: list, inspect, edit, apply the defaults, approve, test and enable, sync
    /// now, and the messages seen (items).
    #[command(alias = "mailbox")]
    Mailboxes {
        #[command(subcommand)]
        command: MailboxesCommand,
    },
    /// Alerts about mailboxes and profiles.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Background jobs such as test and enable.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// The audit log of the organization, oldest first (or --newest-first).
    Audit(AuditArgs),
    /// Email activities: list with filters, show (parties, attachments, thread), download an
    /// attachment.
    Activities {
        #[command(subcommand)]
        command: ActivitiesCommand,
    },
    /// Queue items (`list [--queue ID]`).
    QueueItems {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// Contacts of the organization: list, get, create, update, delete.
    Contacts {
        #[command(subcommand)]
        command: ContactsCommand,
    },
    /// Appointments of the organization: list with filters, get, create, update, delete.
    Appointments {
        #[command(subcommand)]
        command: AppointmentsCommand,
    },
    /// Tasks of the organization: list with filters, get, create, update, delete.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Accounts of the organization.
    Accounts {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// Leads of the organization.
    Leads {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// The change feed of CRM records (one event a line).
    Changes(ChangesArgs),
    /// Webhook endpoints that receive the change feed: list, create, show, resume, deliveries,
    /// delete.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Every endpoint with its state and cursor.
    List,
    /// A new endpoint; it gets the changes made from now on.
    Create {
        /// http:// or https:// URL events are POSTed to.
        #[arg(value_name = "URL")]
        endpoint: String,
        /// File holding the signing secret (at least 16 characters), so it stays out of the
        /// shell history; `-` reads it from standard input.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        #[arg(long)]
        description: Option<String>,
        /// Only these record types (e.g. contact, email_activity); repeat the flag.
        #[arg(long = "record-type", value_name = "TYPE")]
        record_types: Vec<String>,
    },
    /// One endpoint.
    Show { id: String },
    /// Resume a paused endpoint: delivery continues from its cursor.
    Resume { id: String },
    /// The endpoint's delivery log, newest last.
    Deliveries { id: String },
    /// Delete an endpoint (and its signing secret).
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ActivitiesCommand {
    /// Email activities, in creation order (one page unless --all).
    List(ActivityListArgs),
    /// One activity: parties with their resolution, attachments, regarding record, thread.
    Show { id: String },
    /// Save an attachment's bytes to a file.
    Attachment {
        id: String,
        /// The attachment's SHA-256 (see `activities show`).
        sha256: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Compose an email from a mailbox (yours, another user's with their consent, or a
    /// queue's): sent by the engine, or kept as a draft with --draft.
    Compose(ComposeArgs),
    /// Send a draft, or try again an email that failed or whose outcome is unknown.
    Send { id: String },
}

#[derive(Debug, Args)]
pub struct ComposeArgs {
    /// The mailbox it is sent from (id or email address).
    #[arg(long, value_name = "MAILBOX")]
    pub from: String,
    /// A recipient: an email address, or a record as TYPE:ID (contact:…, account:…, lead:…,
    /// user:…, queue:…). Repeat for more.
    #[arg(long, value_name = "ADDRESS|TYPE:ID")]
    pub to: Vec<String>,
    #[arg(long, value_name = "ADDRESS|TYPE:ID")]
    pub cc: Vec<String>,
    #[arg(long, value_name = "ADDRESS|TYPE:ID")]
    pub bcc: Vec<String>,
    #[arg(long, default_value = "")]
    pub subject: String,
    /// The plain-text body.
    #[arg(long, value_name = "TEXT", conflicts_with = "text_file")]
    pub text: Option<String>,
    #[arg(long, value_name = "FILE")]
    pub text_file: Option<PathBuf>,
    /// An HTML body (sent with the text as its alternative).
    #[arg(long, value_name = "FILE")]
    pub html_file: Option<PathBuf>,
    /// Attach a file. Repeat for more.
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// The record it is regarding, as TYPE:ID.
    #[arg(long, value_name = "TYPE:ID")]
    pub regarding: Option<String>,
    /// The email activity this one answers.
    #[arg(long, value_name = "ACTIVITY")]
    pub in_reply_to: Option<String>,
    /// Send later (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub send_at: Option<String>,
    /// Keep it as a draft.
    #[arg(long)]
    pub draft: bool,
}

#[derive(Debug, Args)]
pub struct ActivityListArgs {
    /// Seen through this mailbox (id or email address).
    #[arg(long, value_name = "MAILBOX")]
    pub mailbox: Option<String>,
    /// Regarding this record, as TYPE:ID (contact:…, account:…, lead:…).
    #[arg(long, value_name = "TYPE:ID")]
    pub regarding: Option<String>,
    /// Of this conversation.
    #[arg(long, value_name = "ID")]
    pub conversation: Option<String>,
    /// Received (else sent) at or after (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Received (else sent) before (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub limit: u32,
    /// The cursor printed for the next page.
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub after: Option<String>,
    /// Every page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Every record (every page).
    List {
        /// Queue items only: of this queue (id).
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
    },
}

/// One record to change: `--set KEY=VALUE` per field.
#[derive(Debug, Args)]
pub struct RecordUpdateArgs {
    /// The record's id.
    pub id: String,
    /// A field to change: KEY=VALUE (repeat); values are JSON when they parse (true, 50,
    /// null, ["a@example.com"]), text otherwise; `KEY=null` clears an optional field. Add
    /// version=N to refuse the change if someone else changed the record since version N.
    #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
    pub sets: Vec<String>,
}

/// Paging of a list.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Records per page (1-1000).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub limit: u32,
    /// The cursor printed for the next page.
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub after: Option<String>,
    /// Every page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    #[value(name = "open")]
    Open,
    #[value(name = "completed")]
    Completed,
    #[value(name = "canceled", alias = "cancelled")]
    Canceled,
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Every contact (every page).
    List,
    /// One contact (every field).
    Get { id: String },
    /// Create a contact.
    Create(ContactCreateArgs),
    /// Change a contact's fields: full_name, emails, company, job_title, phones, account_id.
    /// Example: --set job_title=Buyer --set 'phones=["+1 555 0100"]'
    Update(RecordUpdateArgs),
    /// Delete a contact.
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct ContactCreateArgs {
    /// Full name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// An email address; repeat for more.
    #[arg(long = "email", value_name = "EMAIL")]
    pub emails: Vec<String>,
    #[arg(long, value_name = "COMPANY")]
    pub company: Option<String>,
    #[arg(long, value_name = "TITLE")]
    pub job_title: Option<String>,
    /// A telephone number; repeat for more.
    #[arg(long = "phone", value_name = "NUMBER")]
    pub phones: Vec<String>,
    /// The account the contact belongs to (id).
    #[arg(long, value_name = "ACCOUNT")]
    pub account: Option<String>,
    /// Owner (user id or email address). Default: you.
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AppointmentsCommand {
    /// Appointments in creation order, optionally filtered (one page unless --all).
    List(AppointmentListArgs),
    /// One appointment (every field).
    Get { id: String },
    /// Create an appointment.
    Create(AppointmentCreateArgs),
    /// Change an appointment's fields: subject, location, description, starts_at, ends_at,
    /// all_day, time_zone, organizer, attendees, state, recurrence.
    /// Example: --set location="Room 2" --set 'attendees=["ann@example.com"]'
    Update(RecordUpdateArgs),
    /// Delete an appointment.
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct AppointmentListArgs {
    /// Owned by this user (id or email address).
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// Starting at or after (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Starting before (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateArg>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Args)]
pub struct AppointmentCreateArgs {
    #[arg(long, value_name = "TEXT")]
    pub subject: String,
    /// Start (RFC 3339, e.g. 2026-03-02T09:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub start: String,
    /// End (RFC 3339), not before the start.
    #[arg(long, value_name = "TIME")]
    pub end: String,
    #[arg(long, value_name = "TEXT")]
    pub location: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    #[arg(long)]
    pub all_day: bool,
    /// The IANA time zone it is planned in (e.g. Europe/Paris).
    #[arg(long, value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// The organizer's email address.
    #[arg(long, value_name = "EMAIL")]
    pub organizer: Option<String>,
    /// An attendee's email address; repeat for more.
    #[arg(long = "attendee", value_name = "EMAIL")]
    pub attendees: Vec<String>,
    /// Make it a recurring series: an iCalendar RRULE such as FREQ=WEEKLY;COUNT=10.
    #[arg(long, value_name = "RRULE")]
    pub rrule: Option<String>,
    /// Default: open.
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateArg>,
    /// Owner (user id or email address). Default: you.
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// The record it is regarding, as TYPE:ID (contact:…, account:…, lead:…).
    #[arg(long, value_name = "TYPE:ID")]
    pub regarding: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Tasks in creation order, optionally filtered (one page unless --all).
    List(TaskListArgs),
    /// One task (every field).
    Get { id: String },
    /// Create a task.
    Create(TaskCreateArgs),
    /// Change a task's fields: subject, description, due_at, percent_complete, state.
    /// Example: --set percent_complete=100 --set state=completed
    Update(RecordUpdateArgs),
    /// Delete a task.
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct TaskListArgs {
    /// Owned by this user (id or email address).
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateArg>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Args)]
pub struct TaskCreateArgs {
    #[arg(long, value_name = "TEXT")]
    pub subject: String,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Due (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub due: Option<String>,
    /// 0-100.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub percent_complete: Option<u8>,
    /// Default: open.
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateArg>,
    /// Owner (user id or email address). Default: you.
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// The record it is regarding, as TYPE:ID (contact:…, account:…, lead:…).
    #[arg(long, value_name = "TYPE:ID")]
    pub regarding: Option<String>,
}

#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// Print the changes after this sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: i64,
    /// Keep polling for new changes.
    #[arg(long)]
    pub follow: bool,
    /// Seconds between polls with --follow.
    #[arg(long, value_name = "SECONDS", default_value_t = 2, requires = "follow")]
    pub interval: u64,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a user, directly in the database (like `serversync migrate`;
    /// uses --config / --data-dir / --database-url and the master key). The token is printed
    /// once on standard output (with --json: with its user and organization); only its hash is
    /// stored.
    Create(TokenCreateArgs),
    /// Tokens and admin center sessions still live (yours; the organization's with
    /// manage_users): id, name, user, kind, expiry.
    List {
        /// Only this user's (id or email address).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Also revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token (yours, or of a user holding no more privileges than you).
    Revoke {
        /// Token id (see `token list`).
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Email address of the user the token acts as (the first administrator is
    /// admin@localhost).
    #[arg(long, value_name = "EMAIL")]
    pub user: String,
    /// A name to recognize the token by.
    #[arg(long, value_name = "NAME", default_value = "cli")]
    pub name: String,
    /// Days until the token expires (default: auth.token_lifetime_days of the configuration).
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// List the organizations you can reach.
    List,
    /// Create an organization, with its built-in roles and default email settings.
    Create {
        /// Short name: 1-64 lowercase letters, digits and dashes (used as --org).
        name: String,
        /// Name shown to people.
        display_name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List the users with their roles.
    List,
    /// Show one user (every field).
    Show {
        /// User id or email address.
        user: String,
    },
    /// Create a user and its mailbox (with the organization's default profile and methods).
    Create(UserCreateArgs),
    /// Disable a user: its API tokens and sessions are revoked, and it can no longer sign in.
    Disable {
        /// User id or email address.
        user: String,
    },
    /// Enable a disabled user again (its old tokens stay revoked).
    Enable {
        /// User id or email address.
        user: String,
    },
    /// Set a user's password for signing in to the admin center (at least 12 characters);
    /// the user's admin center sessions end.
    SetPassword {
        /// User id or email address.
        user: String,
        /// Read the password from standard input.
        #[arg(long, conflicts_with = "password_file")]
        password_stdin: bool,
        /// Read the password from a file.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct UserCreateArgs {
    /// Full name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Email address (also the mailbox's address and sign-in name).
    #[arg(long, value_name = "EMAIL")]
    pub email: String,
    /// Built-in role; repeat for several. Default: basic_user.
    #[arg(long = "role", value_enum, value_name = "ROLE")]
    pub roles: Vec<RoleArg>,
    /// The user is a global or Exchange administrator of the Microsoft 365 tenant.
    #[arg(long)]
    pub tenant_exchange_admin: bool,
    /// Read the mailbox password from standard input (for profiles whose credentials are
    /// specified by the user or queue).
    #[arg(long, conflicts_with = "mailbox_password_file")]
    pub mailbox_password_stdin: bool,
    /// Read the mailbox password from a file.
    #[arg(long, value_name = "FILE")]
    pub mailbox_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    #[value(name = "system_administrator")]
    SystemAdministrator,
    #[value(name = "mailbox_approver")]
    MailboxApprover,
    #[value(name = "basic_user")]
    BasicUser,
}

#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// The domains assigned to the organization.
    List,
    /// Assign a domain to the organization (refused when another organization holds it).
    Assign {
        #[arg(value_name = "DOMAIN")]
        domain: String,
    },
    /// Take a domain from the organization: the Email Router refuses its addresses until it
    /// is assigned again.
    Remove {
        #[arg(value_name = "DOMAIN")]
        domain: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// List the queues and their owners.
    List,
    /// Create a queue and its mailbox.
    Create(QueueCreateArgs),
}

#[derive(Debug, Args)]
pub struct QueueCreateArgs {
    /// Queue name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Email address of the queue's mailbox.
    #[arg(long, value_name = "EMAIL")]
    pub email: String,
    /// Owner (user id or email address). Default: you.
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// Read the mailbox password from standard input.
    #[arg(long, conflicts_with = "mailbox_password_file")]
    pub mailbox_password_stdin: bool,
    /// Read the mailbox password from a file.
    #[arg(long, value_name = "FILE")]
    pub mailbox_password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List the roles and their privileges.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// List the email server profiles.
    List,
    /// Show a profile (every field, as the dotted keys `edit --set` takes).
    Show {
        /// Profile id or name.
        profile: String,
    },
    /// Create a profile from flags, from a JSON file, or both (flags win over the file,
    /// --set wins over both). Unset fields take the reference defaults of the server type.
    Create(Box<ProfileCreateArgs>),
    /// Change a profile: --set KEY=VALUE per field (a JSON merge patch; `KEY=null` clears).
    Edit(ProfileEditArgs),
    /// Delete a profile that no mailbox uses.
    Delete {
        /// Profile id or name.
        profile: String,
    },
    /// Make a profile the organization's default (for new mailboxes and apply-defaults).
    Default {
        /// Profile id or name.
        profile: String,
    },
    /// Test and enable every mailbox that uses the profile.
    TestEnable {
        /// Profile id or name.
        profile: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Args)]
pub struct ProfileCreateArgs {
    /// JSON file with profile fields (`-` reads standard input); see the OpenAPI document at
    /// /api/v1/openapi.json for every field.
    #[arg(long, value_name = "FILE.json")]
    pub file: Option<PathBuf>,
    /// Profile name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Server type.
    #[arg(
        long = "type",
        value_enum,
        value_name = "TYPE",
        conflicts_with = "preset"
    )]
    pub server_type: Option<ServerTypeArg>,
    /// Start from a preset instead of a server type.
    #[arg(long, value_enum, value_name = "PRESET")]
    pub preset: Option<PresetArg>,
    /// Description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Incoming (IMAP/POP3/EWS) server host name or URL.
    #[arg(long, value_name = "HOST")]
    pub incoming_host: Option<String>,
    /// Incoming port. Default with --incoming-host: 993 (IMAP, implicit TLS), 143 (IMAP),
    /// 995 (POP3, implicit TLS), 110 (POP3).
    #[arg(long, value_name = "PORT")]
    pub incoming_port: Option<u16>,
    /// Incoming TLS. Default with --incoming-host: implicit.
    #[arg(long, value_enum, value_name = "TLS")]
    pub incoming_tls: Option<TlsArg>,
    /// Outgoing (SMTP) server host name.
    #[arg(long, value_name = "HOST")]
    pub outgoing_host: Option<String>,
    /// Outgoing port. Default with --outgoing-host: 587 (STARTTLS), 465 (implicit TLS), 25.
    #[arg(long, value_name = "PORT")]
    pub outgoing_port: Option<u16>,
    /// Outgoing TLS. Default with --outgoing-host: start_tls.
    #[arg(long, value_enum, value_name = "TLS")]
    pub outgoing_tls: Option<TlsArg>,
    /// Authentication type. Default: credentials_specified_by_user_or_queue for IMAP/POP3.
    #[arg(long, value_enum, value_name = "AUTH")]
    pub auth: Option<AuthArg>,
    /// User name for credentials specified in the profile.
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,
    /// Make it the organization's default profile.
    #[arg(long)]
    pub default: bool,
    /// Any other field: KEY=VALUE, dotted for nested fields (repeat).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub secrets: ProfileSecretArgs,
}

#[derive(Debug, Args)]
pub struct ProfileEditArgs {
    /// Profile id or name.
    pub profile: String,
    /// A field to change: KEY=VALUE (repeat). Dotted keys reach nested fields
    /// (incoming.port=993); values are JSON when they parse (993, true, null, ["INBOX"],
    /// "123"), text otherwise. Add version=N to refuse the change if someone else changed the
    /// profile since you read version N.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub secrets: ProfileSecretArgs,
}

/// Write-only secrets of a profile: from standard input or files, never from flag values.
/// At most one of them can come from standard input.
#[derive(Debug, Args)]
pub struct ProfileSecretArgs {
    /// Read the profile password (credentials specified in the profile) from standard input.
    #[arg(long, conflicts_with_all = ["outgoing_password_stdin", "client_secret_stdin"])]
    pub password_stdin: bool,
    /// Read the profile password from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
    pub password_file: Option<PathBuf>,
    /// Read the outgoing password (when outgoing uses other credentials) from standard input.
    #[arg(long, conflicts_with = "client_secret_stdin")]
    pub outgoing_password_stdin: bool,
    /// Read the outgoing password from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "outgoing_password_stdin")]
    pub outgoing_password_file: Option<PathBuf>,
    /// Read the OAuth client secret from standard input.
    #[arg(long)]
    pub client_secret_stdin: bool,
    /// Read the OAuth client secret from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "client_secret_stdin")]
    pub client_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServerTypeArg {
    #[value(name = "imap_smtp", alias = "imap")]
    ImapSmtp,
    #[value(name = "pop3_smtp", alias = "pop3")]
    Pop3Smtp,
    #[value(name = "exchange_server")]
    ExchangeServer,
    #[value(name = "exchange_server_hybrid")]
    ExchangeServerHybrid,
    #[value(name = "exchange_online")]
    ExchangeOnline,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PresetArg {
    #[value(name = "gmail")]
    Gmail,
    #[value(name = "yahoo")]
    Yahoo,
    #[value(name = "outlook_com")]
    OutlookCom,
    #[value(name = "exchange_online")]
    ExchangeOnline,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TlsArg {
    #[value(name = "implicit")]
    Implicit,
    #[value(name = "start_tls", alias = "starttls")]
    StartTls,
    #[value(name = "none")]
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuthArg {
    /// Each mailbox signs in with its own user name and password.
    #[value(
        name = "credentials_specified_by_user_or_queue",
        alias = "user_or_queue"
    )]
    UserOrQueue,
    /// One user name and password in the profile for every mailbox.
    #[value(name = "credentials_specified_in_profile", alias = "in_profile")]
    InProfile,
    #[value(name = "impersonation")]
    Impersonation,
    #[value(name = "server_to_server")]
    ServerToServer,
    #[value(name = "hybrid_modern_auth")]
    HybridModernAuth,
    #[value(name = "gmail_oauth", alias = "gmail_o_auth")]
    GmailOAuth,
}

/// The API's name of a value (`imap_smtp`, `start_tls`…): the value's name on the command line.
pub fn api_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Show the organization's email settings.
    Show,
    /// Change settings: KEY=VALUE per field (dotted for nested fields; values are JSON when
    /// they parse). Example: serversync admin settings set require_approved_users=false
    Set {
        /// Fields to change; add version=N to refuse the change if someone else changed the
        /// settings since you read version N.
        #[arg(required = true, value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MailboxesCommand {
    /// List mailboxes (every page), optionally filtered.
    List(MailboxListArgs),
    /// Show a mailbox (every field, as the dotted keys `edit --set` takes).
    Show {
        /// Mailbox id or email address.
        mailbox: String,
    },
    /// Change a mailbox: --set KEY=VALUE (profile_id, incoming_method, outgoing_method,
    /// act_method, username…), a new password from standard input or a file. A changed
    /// configuration disables the mailbox until it is tested and enabled again.
    Edit(MailboxEditArgs),
    /// Apply the organization's default profile and delivery methods to mailboxes, then
    /// (unless --no-test) test and enable them.
    ApplyDefaults {
        #[command(flatten)]
        select: Selection,
        /// Only apply the defaults; do not test and enable.
        #[arg(long, conflicts_with = "wait")]
        no_test: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Approve the email addresses of mailboxes (needed before email is processed when the
    /// settings require approval).
    Approve {
        #[command(flatten)]
        select: Selection,
    },
    /// Reject the email addresses of mailboxes (disables them).
    Reject {
        #[command(flatten)]
        select: Selection,
    },
    /// Test the connection of mailboxes to their servers and enable those that pass.
    TestEnable {
        #[command(flatten)]
        select: Selection,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Synchronize a mailbox's incoming email now, whatever its polling interval; a mailbox
    /// waiting to retry after a transient failure is retried at once. The mailbox must be
    /// tested and enabled.
    SyncNow {
        /// Mailbox id or email address.
        mailbox: String,
    },
    /// The messages seen in a mailbox, oldest first, with the decision taken about each
    /// (stored, skipped, failed) and its last reason.
    Items(MailboxItemsArgs),
}

#[derive(Debug, Args)]
pub struct MailboxItemsArgs {
    /// Mailbox id or email address.
    pub mailbox: String,
    /// Items per page (1-1000).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub limit: u32,
    /// Only items with this decision.
    #[arg(long, value_enum, value_name = "DECISION")]
    pub decision: Option<DecisionArg>,
    /// Start after this cursor (printed when more items follow).
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub after: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DecisionArg {
    #[value(name = "stored")]
    Stored,
    #[value(name = "skipped")]
    Skipped,
    #[value(name = "failed")]
    Failed,
}

#[derive(Debug, Args)]
pub struct MailboxListArgs {
    /// Only mailboxes whose overall status is this.
    #[arg(long, value_enum, value_name = "STATUS")]
    pub status: Option<StatusArg>,
    /// Only mailboxes of this profile (id or name).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Only mailboxes with this approval status.
    #[arg(long, value_enum, value_name = "APPROVAL")]
    pub approval: Option<ApprovalArg>,
    /// Only mailboxes owned by this user (id or email address).
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    #[value(name = "not_run")]
    NotRun,
    #[value(name = "success")]
    Success,
    #[value(name = "failure")]
    Failure,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ApprovalArg {
    #[value(name = "empty")]
    Empty,
    #[value(name = "pending_approval", alias = "pending")]
    PendingApproval,
    #[value(name = "approved")]
    Approved,
    #[value(name = "rejected")]
    Rejected,
}

#[derive(Debug, Args)]
pub struct MailboxEditArgs {
    /// Mailbox id or email address.
    pub mailbox: String,
    /// A field to change: KEY=VALUE (repeat); values are JSON when they parse, text otherwise.
    /// Add version=N to refuse the change if someone else changed the mailbox since version N.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Read a new mailbox password from standard input.
    #[arg(long, conflicts_with = "password_file")]
    pub password_stdin: bool,
    /// Read a new mailbox password from a file.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// Which mailboxes a bulk action applies to.
#[derive(Debug, Args)]
pub struct Selection {
    /// Mailbox ids or email addresses.
    #[arg(value_name = "MAILBOX", required_unless_present = "all")]
    pub mailboxes: Vec<String>,
    /// Every mailbox of the organization.
    #[arg(long, conflicts_with = "mailboxes")]
    pub all: bool,
}

/// Following a job to its end.
#[derive(Debug, Args, Clone, Copy)]
pub struct WaitArgs {
    /// Wait for the job to finish, showing progress, then print each mailbox's result; exit
    /// status 1 if any mailbox failed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds (the job goes on).
    #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "wait")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List the active alerts (oldest first); --all includes dismissed ones.
    List {
        /// Only alerts about this mailbox (id or email address).
        #[arg(long, value_name = "MAILBOX")]
        mailbox: Option<String>,
        /// Include dismissed alerts.
        #[arg(long)]
        all: bool,
    },
    /// Dismiss an alert (it stays listed by `alerts list --all`).
    Dismiss {
        /// Alert id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List the jobs (oldest first) with their status and progress.
    List,
    /// Show a job and its per-mailbox results; --wait follows it to the end.
    Show {
        /// Job id.
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries after this sequence number (the SEQ column), oldest first.
    #[arg(long, value_name = "SEQ", conflicts_with_all = ["before", "newest_first"])]
    pub after: Option<i64>,
    /// Newest first, from the newest entry.
    #[arg(long)]
    pub newest_first: bool,
    /// Newest first, the entries before this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub before: Option<i64>,
    /// At most this many entries (1-1000).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub limit: u32,
}

/// Whether a reference on the command line is an id (a UUID) rather than a name or address.
pub fn is_id(s: &str) -> bool {
    s.trim().parse::<serversync_model::MailboxId>().is_ok()
}

/// What every command gets: the API client and the output mode.
pub struct Ctx {
    pub api: client::Client,
    pub json: bool,
}

pub async fn run(cfg: Config, args: AdminArgs) -> anyhow::Result<()> {
    let AdminArgs { conn, command } = args;
    let command = *command;
    if let AdminCommand::Token {
        command: TokenCommand::Create(a),
    } = command
    {
        return token::create(&cfg, &conn.org, conn.json, a).await;
    }
    let ctx = Ctx {
        api: client::Client::new(&cfg, &conn)?,
        json: conn.json,
    };
    match command {
        AdminCommand::Token { command } => token::manage(&ctx, command).await,
        AdminCommand::Orgs { command } => orgs::orgs(&ctx, command).await,
        AdminCommand::Domains { command } => orgs::domains(&ctx, command).await,
        AdminCommand::Users { command } => orgs::users(&ctx, command).await,
        AdminCommand::Queues { command } => orgs::queues(&ctx, command).await,
        AdminCommand::Roles { command } => orgs::roles(&ctx, command).await,
        AdminCommand::Profiles { command } => profiles::profiles(&ctx, command).await,
        AdminCommand::Settings { command } => profiles::settings(&ctx, command).await,
        AdminCommand::Mailboxes { command } => mailboxes::run(&ctx, command).await,
        AdminCommand::Alerts { command } => monitor::alerts(&ctx, command).await,
        AdminCommand::Jobs { command } => monitor::jobs(&ctx, command).await,
        AdminCommand::Audit(a) => monitor::audit(&ctx, a).await,
        AdminCommand::Activities { command } => records::activities(&ctx, command).await,
        AdminCommand::QueueItems { command } => {
            records::records(&ctx, "queue-items", command).await
        }
        AdminCommand::Contacts { command } => records::contacts(&ctx, command).await,
        AdminCommand::Appointments { command } => records::appointments(&ctx, command).await,
        AdminCommand::Tasks { command } => records::tasks(&ctx, command).await,
        AdminCommand::Accounts { command } => records::records(&ctx, "accounts", command).await,
        AdminCommand::Leads { command } => records::records(&ctx, "leads", command).await,
        AdminCommand::Changes(a) => records::changes(&ctx, a).await,
        AdminCommand::Webhooks { command } => records::webhooks(&ctx, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        admin: AdminArgs,
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Wrapper::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let w = Wrapper::try_parse_from([
            "admin",
            "mailboxes",
            "list",
            "--org",
            "acme",
            "--json",
            "--url",
            "http://h:1",
        ])
        .unwrap();
        assert_eq!(w.admin.conn.org, "acme");
        assert!(w.admin.conn.json);
        let w = Wrapper::try_parse_from(["admin", "--org", "x", "audit"]).unwrap();
        assert_eq!(w.admin.conn.org, "x");
    }

    #[test]
    fn value_names_are_the_apis() {
        assert_eq!(api_name(&TlsArg::StartTls), "start_tls");
        assert_eq!(
            api_name(&AuthArg::UserOrQueue),
            "credentials_specified_by_user_or_queue"
        );
        let w = Wrapper::try_parse_from([
            "admin",
            "profiles",
            "create",
            "--name",
            "p",
            "--type",
            "imap",
            "--incoming-tls",
            "starttls",
        ])
        .unwrap();
        let AdminCommand::Profiles {
            command: ProfilesCommand::Create(c),
        } = *w.admin.command
        else {
            panic!("parsed as {:?}", w.admin.command)
        };
        assert!(matches!(c.server_type, Some(ServerTypeArg::ImapSmtp)));
        assert!(matches!(c.incoming_tls, Some(TlsArg::StartTls)));
    }

    #[test]
    fn selections_need_mailboxes_or_all() {
        assert!(Wrapper::try_parse_from(["admin", "mailboxes", "approve"]).is_err());
        assert!(Wrapper::try_parse_from(["admin", "mailboxes", "approve", "--all"]).is_ok());
        assert!(
            Wrapper::try_parse_from(["admin", "mailboxes", "approve", "a@b.c", "--all"]).is_err()
        );
        assert!(Wrapper::try_parse_from(["admin", "jobs", "show", "x", "--timeout", "5"]).is_err());
    }
}
