"""Drives the EWS test double with exchangelib, an independent EWS client (its NTLM goes
through requests_ntlm -> pyspnego, which sends the channel binding over HTTPS).

Run by tests/ews_exchangelib.rs; settings come from environment variables, and the results
are printed as one JSON object on the last line of stdout. Every check that fails raises, so
the exit status tells the Rust test whether exchangelib got what it expected; the Rust test
then compares the double's own state with the JSON.
"""

import hashlib
import json
import logging
import os
import sys

from datetime import timedelta
from decimal import Decimal

from exchangelib import (
    IMPERSONATION,
    NTLM,
    Account,
    Attendee,
    CalendarItem,
    Configuration,
    Contact,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
    FaultTolerance,
    Mailbox,
    Message,
    Task,
)
from exchangelib.indexed_properties import EmailAddress, PhoneNumber
from exchangelib.items import ALL_OCCURRENCES, SEND_TO_NONE
from exchangelib.autodiscover.discovery import Autodiscovery
from exchangelib.autodiscover.protocol import AutodiscoverProtocol
from exchangelib.errors import ErrorImpersonateUserDenied, UnauthorizedError

env = os.environ
EWS_URL = env["EWS_URL"]
AUTODISCOVER_SVC = env["AUTODISCOVER_SVC"]
MAILBOX = env["MAILBOX"]
USER, PASSWORD = env["EWS_USER"], env["EWS_PASSWORD"]
DENIED_USER, DENIED_PASSWORD = env.get("DENIED_USER"), env.get("DENIED_PASSWORD")
EXPECT_INBOX = int(env.get("EXPECT_INBOX", "0"))
PAGE = int(env.get("PAGE", "100"))
REDIRECT_FROM = env.get("REDIRECT_FROM")
# REQUESTS_CA_BUNDLE (set by the Rust test) makes requests trust the test CA.
assert os.path.exists(env["REQUESTS_CA_BUNDLE"])

if env.get("EWS_DEBUG"):
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

out = {}


def config(user, password, version=None):
    return Configuration(
        service_endpoint=EWS_URL,
        credentials=Credentials(user, password),
        auth_type=NTLM,
        version=version,
        retry_policy=FaultTolerance(max_wait=5) if env.get("FAULT_TOLERANT") else None,
    )


# (a) No version preset: exchangelib guesses it (ConvertId) from ServerVersionInfo, stepping
# down through API versions the server refuses with ErrorInvalidServerVersion.
account = Account(
    primary_smtp_address=MAILBOX,
    config=config(USER, PASSWORD),
    autodiscover=False,
    access_type=IMPERSONATION,
)
version = account.version
out["version"] = {"build": str(version.build), "api_version": version.api_version}
if env.get("ONLY_VERSION"):
    out["inbox_total"] = account.inbox.total_count
    print(json.dumps(out))
    sys.exit(0)

# (b) sync_items across several pages (the double caps MaxChangesReturned).
inbox = account.inbox
creates = []
for change_type, item in inbox.sync_items(max_changes_returned=PAGE, only_fields=["subject", "message_id", "is_read"]):
    assert change_type == "create", (change_type, item)
    creates.append(item)
assert len(creates) == EXPECT_INBOX, (len(creates), EXPECT_INBOX)
state = inbox.item_sync_state
assert state
again = list(inbox.sync_items(sync_state=state, max_changes_returned=PAGE))
assert again == [], again
out["synced"] = [{"id": i.id, "subject": i.subject, "message_id": i.message_id, "is_read": i.is_read} for i in creates]

# SyncFolderHierarchy below the message folder root.
folders = sorted(f.name for change, f in account.msg_folder_root.sync_hierarchy() if change == "create")
assert {"Inbox", "Sent Items", "Drafts", "Deleted Items"} <= set(folders), folders
out["folders"] = folders

# (c) GetItem with MimeContent, and FindItem by InternetMessageId.
fetched = list(account.fetch(ids=[(i.id, i.changekey) for i in creates], only_fields=["mime_content", "message_id"]))
assert len(fetched) == EXPECT_INBOX
out["mime_sha256"] = {f.message_id: hashlib.sha256(f.mime_content).hexdigest() for f in fetched}
first = creates[0]
found = list(inbox.filter(message_id=first.message_id).only("subject"))
assert [f.id for f in found] == [first.id], found
one = inbox.get(id=first.id, changekey=first.changekey)
assert one.subject == first.subject

# A read flag set by UpdateItem shows up as a read flag change in the next sync.
unread = next(i for i in creates if not i.is_read)
one = inbox.get(id=unread.id, changekey=unread.changekey)
one.is_read = True
one.save(update_fields=["is_read"])
flags = list(inbox.sync_items(sync_state=state))
assert [c for c, _ in flags] == ["read_flag_change"], flags
out["marked_read"] = unread.id

# (d) Send a MIME message and keep a copy in Sent Items.
mime = (
    "From: {0}\r\nTo: bob@example.test\r\nSubject: sent by exchangelib\r\n"
    "Message-ID: <exchangelib-1@example.test>\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\nHello from exchangelib.\r\n"
).format(MAILBOX).encode()
Message(account=account, folder=account.sent, mime_content=mime).send_and_save()
sent_copies = list(account.sent.filter(message_id="<exchangelib-1@example.test>"))
assert len(sent_copies) == 1, sent_copies
out["sent_sha256"] = hashlib.sha256(mime).hexdigest()

# (e) An account without the impersonation right is refused.
try:
    denied = Account(
        primary_smtp_address=MAILBOX,
        config=config(DENIED_USER, DENIED_PASSWORD, version=version),
        autodiscover=False,
        access_type=IMPERSONATION,
    )
    denied.inbox.total_count
    raise AssertionError("impersonation without the right succeeded")
except ErrorImpersonateUserDenied as e:
    out["impersonation_denied"] = str(e)

# (f) A wrong password fails sign-in.
try:
    wrong = Account(
        primary_smtp_address=MAILBOX,
        config=config(USER, PASSWORD + "-wrong", version=version),
        autodiscover=False,
        access_type=IMPERSONATION,
    )
    wrong.inbox.total_count
    raise AssertionError("a wrong password signed in")
except UnauthorizedError as e:
    out["wrong_password"] = type(e).__name__

# (g) Autodiscover. exchangelib 5.6 speaks SOAP autodiscover (GetUserSettings) only, starting
# from the e-mail domain's DNS name; the double listens on localhost:PORT, so the discovery
# steps are entered at step 1 with that host (DNS check skipped) instead of discover().
ad_protocol = AutodiscoverProtocol(
    config=Configuration(service_endpoint=AUTODISCOVER_SVC, credentials=Credentials(USER, PASSWORD), auth_type=NTLM)
)
settings = ad_protocol.get_user_settings(user=MAILBOX)
assert settings.ews_url == EWS_URL, settings.ews_url
out["autodiscover_ews_url"] = settings.ews_url
discovery = Autodiscovery(email=MAILBOX, credentials=Credentials(USER, PASSWORD))
discovery._ensure_valid_hostname = lambda url: None
host = AUTODISCOVER_SVC.split("/")[2]
ad_response = discovery._step_1(hostname=host)
assert ad_response.ews_url == EWS_URL, ad_response
redirected = ad_protocol.get_user_settings(user=REDIRECT_FROM)
assert redirected.redirect_address == MAILBOX, redirected
out["autodiscover_redirect"] = redirected.redirect_address

# (h) Notifications on Drafts: a pull subscription (GetEvents) and a streaming one
# (GetStreamingEvents, which the double closes after a couple of seconds in this test).
def draft(n):
    return (
        "From: {0}\r\nSubject: draft {1}\r\nMessage-ID: <draft-{1}@example.test>\r\n\r\ndraft\r\n"
    ).format(MAILBOX, n).encode()


drafts = account.drafts
sub_id, watermark = drafts.subscribe_to_pull()
Message(account=account, folder=drafts, mime_content=draft(1)).save()
pulled = [type(e).__name__ for n in drafts.get_events(sub_id, watermark) for e in n.events]
assert "CreatedEvent" in pulled, pulled
drafts.unsubscribe(sub_id)
out["pull_events"] = pulled
stream_id = drafts.subscribe_to_streaming()
Message(account=account, folder=drafts, mime_content=draft(2)).save()
streamed = []
for notification in drafts.get_streaming_events(stream_id, connection_timeout=1):
    streamed += [type(e).__name__ for e in notification.events]
assert "CreatedEvent" in streamed, streamed
drafts.unsubscribe(stream_id)
out["streaming_events"] = streamed

# (i) Calendar items, contacts and tasks: created, read back, followed with sync_items
# (create, update, delete) in the calendar, contacts and tasks folders.
def drain(folder, state=None):
    changes = list(folder.sync_items(sync_state=state, max_changes_returned=PAGE))
    return changes, folder.item_sync_state


tz = EWSTimeZone("Europe/Berlin")
start = EWSDateTime.now(tz).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
states = {}
for name, folder in [("calendar", account.calendar), ("contacts", account.contacts), ("tasks", account.tasks)]:
    before, states[name] = drain(folder)
    assert before == [], (name, before)

meeting = CalendarItem(
    account=account,
    folder=account.calendar,
    subject="Planning with exchangelib",
    body="Agenda: budget",
    start=start,
    end=start + timedelta(hours=1),
    location="Room 2",
    categories=["Tracked to Contoso"],
    required_attendees=[Attendee(mailbox=Mailbox(email_address="bob@example.test"), response_type="Unknown")],
)
meeting.save(send_meeting_invitations=SEND_TO_NONE)
person = Contact(
    account=account,
    folder=account.contacts,
    given_name="Dana",
    surname="Park",
    display_name="Dana Park",
    company_name="Contoso",
    job_title="Engineer",
    email_addresses=[EmailAddress(label="EmailAddress1", email="dana@example.test")],
    phone_numbers=[PhoneNumber(label="BusinessPhone", phone_number="+1 555 0102")],
)
person.save()
todo = Task(
    account=account,
    folder=account.tasks,
    subject="Send the minutes",
    body="To everyone",
    due_date=(start + timedelta(days=1)).date(),
    percent_complete=Decimal(25),
    status="InProgress",
)
todo.save()

got = account.calendar.get(id=meeting.id)
assert got.subject == "Planning with exchangelib", got.subject
assert got.start == start and got.end == start + timedelta(hours=1), (got.start, got.end)
assert got.location == "Room 2" and got.categories == ["Tracked to Contoso"], got
assert [a.mailbox.email_address for a in got.required_attendees] == ["bob@example.test"], got.required_attendees
assert got.organizer.email_address.lower() == MAILBOX, got.organizer
assert got.uid, got
got_person = account.contacts.get(id=person.id)
assert got_person.display_name == "Dana Park" and got_person.company_name == "Contoso", got_person
assert [e.email for e in got_person.email_addresses] == ["dana@example.test"], got_person.email_addresses
assert [p.phone_number for p in got_person.phone_numbers] == ["+1 555 0102"], got_person.phone_numbers
got_todo = account.tasks.get(id=todo.id)
assert got_todo.subject == "Send the minutes" and got_todo.status == "InProgress", got_todo
assert got_todo.percent_complete == Decimal(25), got_todo.percent_complete

pim = {}
for name, folder, item in [("calendar", account.calendar, meeting), ("contacts", account.contacts, person), ("tasks", account.tasks, todo)]:
    changes, states[name] = drain(folder, states[name])
    assert [(c, i.id) for c, i in changes] == [("create", item.id)], (name, changes)
    pim[name] = item.id

# Update the contact, move the meeting, delete the task; each folder's sync shows it.
got_person.job_title = "Lead engineer"
got_person.save(update_fields=["job_title"])
got.start = start + timedelta(hours=2)
got.end = start + timedelta(hours=3)
got.save(update_fields=["start", "end"], send_meeting_invitations=SEND_TO_NONE)
got_todo.delete(affected_task_occurrences=ALL_OCCURRENCES)
changes, _ = drain(account.contacts, states["contacts"])
assert [(c, i.id) for c, i in changes] == [("update", person.id)], changes
assert changes[0][1].job_title == "Lead engineer", changes[0][1]
changes, _ = drain(account.calendar, states["calendar"])
assert [(c, i.id) for c, i in changes] == [("update", meeting.id)], changes
assert changes[0][1].start == start + timedelta(hours=2), changes[0][1].start
changes, _ = drain(account.tasks, states["tasks"])
assert [c for c, _ in changes] == ["delete"] and changes[0][1].id == todo.id, changes
out["pim"] = pim

print(json.dumps(out))
