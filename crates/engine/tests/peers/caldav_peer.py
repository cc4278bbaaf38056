#!/usr/bin/env python3
"""The two-way sync tests' independent CalDAV client: python-caldav (installed by
scripts/install-deps.sh) reads what serversync wrote to a calendar and writes what serversync
must pick up.

    caldav_peer.py URL USER PASSWORD COLLECTION read
        prints the collection's events and tasks as JSON: [{"kind", "uid", "summary"}]
    caldav_peer.py URL USER PASSWORD COLLECTION add-event UID SUMMARY START END CATEGORY
        adds an event (times in RFC 3339) with that category
    caldav_peer.py URL USER PASSWORD COLLECTION add-todo UID SUMMARY CATEGORY
        adds an open task with that category
"""
import datetime
import json
import sys

import caldav


def main(argv):
    url, user, password, collection, action, *rest = argv
    client = caldav.DAVClient(
        url=url, username=user, password=password, require_tls=False, timeout=30
    )
    cal = client.calendar(url=url.rstrip("/") + collection)
    if action == "read":
        out = []
        for obj in list(cal.events()) + list(cal.todos(include_completed=True)):
            comp = obj.icalendar_component
            out.append(
                {
                    "kind": comp.name,
                    "uid": str(comp.get("uid")),
                    "summary": str(comp.get("summary")),
                }
            )
        print(json.dumps(out))
    elif action == "add-event":
        uid, summary, start, end, category = rest
        cal.add_event(
            uid=uid,
            summary=summary,
            dtstart=datetime.datetime.fromisoformat(start.replace("Z", "+00:00")),
            dtend=datetime.datetime.fromisoformat(end.replace("Z", "+00:00")),
            categories=[category],
        )
    elif action == "add-todo":
        uid, summary, category = rest
        cal.add_todo(uid=uid, summary=summary, categories=[category])
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
