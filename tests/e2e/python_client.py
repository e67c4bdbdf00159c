"""Segment's official Python client (segment-analytics-python) against `stipple serve`.

Run by `cargo xtask e2e`: python_client.py HOST WRITE_KEY PREFIX

Sends identify, track, page, screen, group and alias, each with its own messageId
(PREFIX-...), once with a plain client and once with gzip=True, flushes, and prints one
JSON report on stdout: every call with the message the library built and whether it
was queued, and every error the library reported while sending.
"""

import json
import sys

from segment.analytics import Client


def main():
    host, write_key, prefix = sys.argv[1:4]
    report = {"client": "analytics-python", "calls": [], "errors": []}

    def on_error(error, items):
        report["errors"].append(
            {"error": repr(error), "messageIds": [i.get("messageId") for i in items]}
        )

    for round_name, gzip in (("plain", False), ("gzip", True)):
        client = Client(
            write_key,
            host=host,
            gzip=gzip,
            on_error=on_error,
            max_retries=3,
            upload_interval=0.2,
            timeout=10,
        )
        user = f"{prefix}-{round_name}-user"
        anon = f"{prefix}-{round_name}-anon"
        mid = lambda kind: f"{prefix}-{round_name}-{kind}"
        calls = [
            client.identify(
                user_id=user,
                anonymous_id=anon,
                traits={"email": "py@example.com", "plan": "pro", "logins": 3, "beta": True},
                message_id=mid("identify"),
            ),
            client.track(
                user_id=user,
                event="Python Order",
                properties={"revenue": 12.5, "currency": "EUR", "sku": ["a", "b"]},
                context={"campaign": {"name": "py-campaign"}},
                message_id=mid("track"),
            ),
            client.page(
                user_id=user,
                category="Docs",
                name="Python Page",
                properties={"path": "/py"},
                message_id=mid("page"),
            ),
            client.screen(
                user_id=user,
                name="Python Screen",
                properties={"variant": "py"},
                message_id=mid("screen"),
            ),
            client.group(
                user_id=user,
                group_id=f"{prefix}-{round_name}-group",
                traits={"name": "PyCo", "seats": 7},
                message_id=mid("group"),
            ),
            client.alias(previous_id=anon, user_id=user, message_id=mid("alias")),
        ]
        client.flush()
        client.shutdown()
        for ok, message in calls:
            report["calls"].append({"ok": bool(ok), "message": message})

    print(json.dumps(report, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o)))


if __name__ == "__main__":
    main()
