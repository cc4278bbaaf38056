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
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.users.item.mail_folders.item.messages.delta.delta_request_builder import (
    DeltaRequestBuilder,
)
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
    print(json.dumps(out))


asyncio.run(main())
