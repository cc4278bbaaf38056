"""Scriptable SMTP submission peer for serversync's fault tests (see smtp_peer.rs).

Usage: python3 smtp_peer.py SCRIPT_JSON STATE_JSON PORT

Listens on 127.0.0.1:PORT with aiosmtpd and answers as SCRIPT_JSON says:

  username, password   AUTH PLAIN / LOGIN succeed only with these
  reject_auth          every AUTH fails with 535 5.7.8
  data_replies         [[code, text], ...] answered to DATA in order (across all
                       sessions); once used up, DATA gets 250 2.0.0 OK
  rcpt_replies         [[address, code, text], ...] answered at RCPT TO every time
                       (address compared case-insensitively); others get 250
  drop_after_data      the first N DATA transactions get no reply: the connection
                       is closed right after the message data arrived
  pipelining           announce PIPELINING at EHLO (commands are read in order
                       either way)

MAIL FROM without a successful AUTH is answered 530 (auth_required).

Records, next to STATE_JSON (one JSON object a line, flushed after each write):

  received.jsonl  every message data seen: mail_from, rcpt_tos, data (UTF-8 with
                  replacement characters), reply (code, or null when dropped)
  auth.jsonl      every AUTH decision: mechanism, login, success

STATE_JSON holds how far the script has got (DATA transactions seen); it is
read at start, so a peer restarted on the same directory carries on where the
previous one stopped. Runs until killed.
"""

import asyncio
import json
import logging
import os
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


def load_json(path, default):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


class Recorder:
    """Appends JSON lines to a file, flushing after each one."""

    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


class Peer:
    """The scripted behaviour; aiosmtpd calls everything on one event loop thread."""

    def __init__(self, script, state_path):
        self.username = script.get("username", "")
        self.password = script.get("password", "")
        self.reject_auth = bool(script.get("reject_auth", False))
        self.data_replies = [(int(c), str(t)) for c, t in script.get("data_replies", [])]
        self.rcpt_replies = {
            str(a).lower(): (int(c), str(t)) for a, c, t in script.get("rcpt_replies", [])
        }
        self.drop_after_data = int(script.get("drop_after_data", 0))
        self.pipelining = bool(script.get("pipelining", False))
        self.state_path = state_path
        state = load_json(state_path, {})
        # DATA transactions seen so far (dropped ones included).
        self.data_seen = int(state.get("data_seen", 0))
        directory = os.path.dirname(os.path.abspath(state_path))
        self.received = Recorder(os.path.join(directory, "received.jsonl"))
        self.auth = Recorder(os.path.join(directory, "auth.jsonl"))
        self.save_state()

    def save_state(self):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"data_seen": self.data_seen, "pid": os.getpid()}, f)
        os.replace(tmp, self.state_path)

    # aiosmtpd `authenticator`: (server, session, envelope, mechanism, auth_data),
    # auth_data being a LoginPassword of bytes for the built-in PLAIN and LOGIN.
    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = (
            not self.reject_auth
            and login == self.username
            and password == self.password
        )
        self.auth.write({"mechanism": mechanism, "login": login, "success": ok})
        # handled=False: smtp_AUTH answers "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            # Every line but the last is "250-...": insert before the last one.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        scripted = self.rcpt_replies.get(address.lower())
        if scripted is not None:
            return f"{scripted[0]} {scripted[1]}"
        # Defining handle_RCPT means accepting the recipient is up to us.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        index = self.data_seen
        self.data_seen += 1
        self.save_state()
        drop = index < self.drop_after_data
        if drop:
            code, text = None, None
        else:
            # Dropped transactions do not use up data_replies.
            answered = index - self.drop_after_data
            if answered < len(self.data_replies):
                code, text = self.data_replies[answered]
            else:
                code, text = 250, "2.0.0 OK"
        self.received.write(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "data": envelope.original_content.decode("utf-8", "replace"),
                "reply": code,
            }
        )
        if drop:
            # Close without replying. Returning anything would have it written (into a
            # closed transport, silently), so instead wait to be cancelled: closing the
            # transport makes aiosmtpd cancel this session's handler task.
            server.transport.close()
            await asyncio.Event().wait()
        return f"{code} {text}"


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: smtp_peer.py SCRIPT_JSON STATE_JSON PORT")
    script_path, state_path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # aiosmtpd warns on every connection that AUTH without TLS is insecure (intended
    # here) and on every AUTH that Session.login_data is deprecated (its own doing).
    # Keep errors (handler exceptions) in the log, drop that noise.
    warnings.filterwarnings("ignore", module="aiosmtpd")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    peer = Peer(load_json(script_path, {}), state_path)
    controller = Controller(
        peer,
        hostname="127.0.0.1",
        port=port,
        # Greeting name; without it aiosmtpd calls socket.getfqdn() (DNS).
        server_hostname="scripted-smtp.test",
        ident="serversync scripted SMTP peer",
        authenticator=peer.authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    print(f"scripted SMTP peer listening on 127.0.0.1:{port}", flush=True)
    # The controller serves from its own thread; this one just waits to be killed.
    threading.Event().wait()


if __name__ == "__main__":
    main()
