"""Drives the Microsoft Graph test double with Microsoft's own Python SDK (msgraph-sdk, on
kiota and httpx) and azure-identity (MSAL) for the client-credentials token, as an
independent Graph client.

Run by tests/graph_msgraph.rs; settings come from environment variables, and the results are
printed as one JSON object on the last line of stdout. Every check that fails raises, so the
exit status tells the Rust test whether the SDK got what it expected; the Rust test then
compares the double's own state with the JSON.
"""

import asyncio
import datetime
import hashlib
import http.server
import json
import os
import threading

from azure.identity import ClientSecretCredential
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.headers_collection import HeadersCollection
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.contact import Contact
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.linked_resource import LinkedResource
from msgraph.generated.models.task_status import TaskStatus
from msgraph.generated.models.todo_task import TodoTask
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.users.item.mail_folders.item.messages.delta.delta_request_builder import (
    DeltaRequestBuilder,
)
from msgraph.generated.users.item.calendar_view.delta.delta_request_builder import (
    DeltaRequestBuilder as CalendarViewDelta,
)
from msgraph.generated.users.item.todo.lists.lists_request_builder import ListsRequestBuilder
from msgraph.generated.users.item.messages.item.move.move_post_request_body import (
    MovePostRequestBody,
)
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import (
    SendMailPostRequestBody,
)

env = os.environ
GRAPH_URL = env["GRAPH_URL"]  # https://localhost:PORT
TENANT, CLIENT, SECRET = env["TENANT"], env["CLIENT_ID"], env["CLIENT_SECRET"]
MAILBOX = env["MAILBOX"]
PAGE = int(env.get("PAGE", "3"))
EXPECT_INBOX = int(env["EXPECT_INBOX"])
TO_MOVE = env["TO_MOVE"]  # a message the Rust side delivered into Archive
# SSL_CERT_FILE (httpx) and REQUESTS_CA_BUNDLE (MSAL's requests) trust the test CA.
assert os.path.exists(env["SSL_CERT_FILE"]) and os.path.exists(env["REQUESTS_CA_BUNDLE"])

notifications = []
got_notification = threading.Event()


class Receiver(http.server.BaseHTTPRequestHandler):
    """The subscription's notificationUrl: echoes validation tokens, records notifications."""

    def do_POST(self):
        from urllib.parse import parse_qs, urlparse

        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = parse_qs(urlparse(self.path).query)
        if "validationToken" in query:
            token = query["validationToken"][0].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(token)))
            self.end_headers()
            self.wfile.write(token)
            return
        notifications.append(json.loads(body))
        got_notification.set()
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


async def main():
    host = GRAPH_URL.removeprefix("https://")
    credential = ClientSecretCredential(
        TENANT, CLIENT, SECRET, authority=GRAPH_URL, disable_instance_discovery=True
    )
    auth = AzureIdentityAuthenticationProvider(
        credential,
        scopes=["https://graph.microsoft.com/.default"],
        allowed_hosts=[host.split(":")[0]],
    )
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = GRAPH_URL + "/v1.0"
    client = GraphServiceClient(request_adapter=adapter)
    out = {}

    # The user, by address.
    user = await client.users.by_user_id(MAILBOX).get()
    out["user"] = {"id": user.id, "mail": user.mail, "upn": user.user_principal_name}
    assert user.mail == MAILBOX
    me = client.users.by_user_id(user.id)

    # An unknown user: the SDK raises ODataError with Graph's code.
    try:
        await client.users.by_user_id("nobody@" + MAILBOX.split("@")[1]).get()
        raise AssertionError("an unknown user was found")
    except ODataError as e:
        out["unknown_user"] = {"status": e.response_status_code, "code": e.error.code}

    # Inbox delta, page by page (Prefer: odata.maxpagesize), to the deltaLink.
    headers = HeadersCollection()
    headers.add("Prefer", f"odata.maxpagesize={PAGE}")
    config = RequestConfiguration(
        headers=headers,
        query_parameters=DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
            select=["subject", "isRead", "internetMessageId", "from"]
        ),
    )
    builder = me.mail_folders.by_mail_folder_id("inbox").messages.delta
    page = await builder.get(request_configuration=config)
    pages, ids, subjects = 1, [], []
    while True:
        for m in page.value:
            ids.append(m.id)
            subjects.append(m.subject)
        if page.odata_next_link:
            page = await builder.with_url(page.odata_next_link).get(
                request_configuration=RequestConfiguration(headers=headers)
            )
            pages += 1
        else:
            break
    assert page.odata_delta_link, "the last page carries a deltaLink"
    assert len(ids) == EXPECT_INBOX, (len(ids), EXPECT_INBOX)
    out["delta"] = {"pages": pages, "ids": ids, "subjects": subjects}
    # Nothing changed since: the deltaLink gives an empty page.
    again = await builder.with_url(page.odata_delta_link).get()
    out["delta"]["after"] = len(again.value)

    # $value (MIME).
    mime = await me.messages.by_message_id(ids[0]).content.get()
    out["value_sha256"] = hashlib.sha256(mime).hexdigest()

    # sendMail (JSON form).
    body = SendMailPostRequestBody(
        message=Message(
            subject="msgraph-sdk says hello",
            body=ItemBody(content_type=BodyType.Text, content="Sent by msgraph-sdk."),
            to_recipients=[
                Recipient(email_address=EmailAddress(address="bob@example.org", name="Bob"))
            ],
        ),
        save_to_sent_items=True,
    )
    await me.send_mail.post(body)

    # A subscription to the inbox, validated against a receiver run here; then a message
    # moved into the inbox is notified.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/notify"
    sub = await client.subscriptions.post(
        Subscription(
            change_type="created",
            notification_url=url,
            resource=f"users/{user.id}/mailFolders('inbox')/messages",
            expiration_date_time=datetime.datetime.now(datetime.timezone.utc)
            + datetime.timedelta(hours=1),
            client_state="msgraph-state",
        )
    )
    moved = await me.messages.by_message_id(TO_MOVE).move.post(
        MovePostRequestBody(destination_id="inbox")
    )
    got = await asyncio.get_running_loop().run_in_executor(
        None, got_notification.wait, 15
    )
    assert got, "no notification arrived"
    n = notifications[0]["value"][0]
    assert n["clientState"] == "msgraph-state"
    assert n["resourceData"]["id"] == moved.id
    out["subscription"] = {"id": sub.id, "expiration": sub.expiration_date_time.isoformat()}
    out["moved"] = moved.id
    out["notification"] = n
    server.shutdown()

    out["items"] = await items(me)
    print(json.dumps(out))


async def follow(builder, config=None):
    """Reads a delta query to its deltaLink: (entries, pages, deltaLink)."""
    page = await builder.get(request_configuration=config)
    entries, pages = list(page.value), 1
    while page.odata_next_link:
        page = await builder.with_url(page.odata_next_link).get()
        entries += page.value
        pages += 1
    assert page.odata_delta_link, "the last delta page carries a deltaLink"
    return entries, pages, page.odata_delta_link


async def items(me):
    """Appointments, contacts and To Do tasks: create, read back, delta, a stale If-Match."""
    out = {}
    # An event, created twice with one transactionId: Graph returns the first.
    event = Event(
        subject="Planning (msgraph-sdk)",
        body=ItemBody(content_type=BodyType.Text, content="Agenda"),
        start=DateTimeTimeZone(date_time="2026-12-10T09:00:00", time_zone="Europe/Berlin"),
        end=DateTimeTimeZone(date_time="2026-12-10T10:00:00", time_zone="Europe/Berlin"),
        transaction_id="msgraph-sdk-tx-1",
    )
    created = await me.events.post(event)
    repeated = await me.events.post(event)
    assert repeated.id == created.id, (repeated.id, created.id)
    read = await me.events.by_event_id(created.id).get()
    assert read.subject == "Planning (msgraph-sdk)", read.subject
    assert read.start.time_zone == "Europe/Berlin", read.start.time_zone
    assert read.body.content == "Agenda"
    out["event"] = {"id": created.id, "type": read.type.value if read.type else None}

    # A contact.
    contact = await me.contacts.post(
        Contact(
            given_name="Ann",
            surname="Lee",
            display_name="Ann Lee",
            email_addresses=[EmailAddress(address="ann@example.org", name="Ann Lee")],
            business_phones=["+1 555 0100"],
            company_name="Fabrikam",
        )
    )
    c = await me.contacts.by_contact_id(contact.id).get()
    assert c.display_name == "Ann Lee" and c.email_addresses[0].address == "ann@example.org"
    assert c.business_phones == ["+1 555 0100"], c.business_phones
    out["contact"] = {"id": contact.id}

    # A task in the default To Do list.
    lists = await me.todo.lists.get(
        request_configuration=RequestConfiguration(
            query_parameters=ListsRequestBuilder.ListsRequestBuilderGetQueryParameters(
                filter="wellknownListName eq 'defaultList'"
            )
        )
    )
    assert len(lists.value) == 1, len(lists.value)
    tasks = me.todo.lists.by_todo_task_list_id(lists.value[0].id).tasks
    task = await tasks.post(
        TodoTask(
            title="Send the offer (msgraph-sdk)",
            status=TaskStatus.NotStarted,
            due_date_time=DateTimeTimeZone(date_time="2026-12-11T17:00:00", time_zone="UTC"),
            linked_resources=[
                LinkedResource(
                    application_name="msgraph-sdk", external_id="sdk-task-1", display_name="SDK"
                )
            ],
        )
    )
    t = await tasks.by_todo_task_id(task.id).get()
    assert t.title == "Send the offer (msgraph-sdk)" and t.status == TaskStatus.NotStarted
    out["task"] = {"id": task.id, "list": lists.value[0].id}

    # Delta of each: everything, then only what changed since.
    window = RequestConfiguration(
        query_parameters=CalendarViewDelta.DeltaRequestBuilderGetQueryParameters(
            start_date_time="2026-11-01T00:00:00Z", end_date_time="2027-12-31T00:00:00Z"
        )
    )
    ev_entries, _, ev_link = await follow(me.calendar_view.delta, window)
    assert [e.id for e in ev_entries] == [created.id], [e.id for e in ev_entries]
    c_entries, _, c_link = await follow(me.contacts.delta)
    assert [e.id for e in c_entries] == [contact.id]
    t_entries, _, t_link = await follow(tasks.delta)
    assert [e.id for e in t_entries] == [task.id]

    await me.contacts.by_contact_id(contact.id).patch(Contact(job_title="Buyer"))
    since = await me.contacts.delta.with_url(c_link).get()
    assert [(e.id, e.job_title) for e in since.value] == [(contact.id, "Buyer")]
    await tasks.by_todo_task_id(task.id).delete()
    since = await tasks.delta.with_url(t_link).get()
    assert [e.id for e in since.value] == [task.id]
    assert "@removed" in since.value[0].additional_data, since.value[0].additional_data
    since = await me.calendar_view.delta.with_url(ev_link).get()
    assert since.value == [], since.value
    out["delta"] = {"events": len(ev_entries), "contacts": len(c_entries), "tasks": len(t_entries)}

    # A write against a stale version is refused with Graph's error.
    headers = HeadersCollection()
    headers.add("If-Match", 'W/"c3RhbGU="')
    try:
        await me.contacts.by_contact_id(contact.id).patch(
            Contact(job_title="Stale"), request_configuration=RequestConfiguration(headers=headers)
        )
        raise AssertionError("a stale If-Match was accepted")
    except ODataError as e:
        out["stale"] = {"status": e.response_status_code, "code": e.error.code}
    return out


asyncio.run(main())
