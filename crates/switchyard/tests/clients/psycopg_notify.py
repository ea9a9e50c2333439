"""LISTEN/NOTIFY with psycopg 3: a listener in autocommit, notifications from another connection.

Usage: psycopg_notify.py CONNINFO. Prints one JSON object.
"""

import json
import sys
import time

import psycopg


def main(conninfo: str) -> dict:
    out: dict = {}
    with psycopg.connect(conninfo, autocommit=True) as listener, psycopg.connect(
        conninfo, autocommit=True
    ) as sender:
        listener.execute("LISTEN ch")
        sender.execute("NOTIFY ch, 'one'")
        sender.execute("SELECT pg_notify('ch', 'two')")
        sender.execute("NOTIFY other_channel, 'not listened to'")
        # A notification in a rolled-back transaction is never delivered.
        with sender.transaction():
            sender.execute("NOTIFY ch, 'rolled back'")
            raise psycopg.Rollback()
        # One in a committed transaction is delivered at commit.
        with sender.transaction():
            sender.execute("NOTIFY ch, 'three'")
        sender.execute("NOTIFY ch, 'stop'")

        got = []
        started = time.monotonic()
        for n in listener.notifies(timeout=10):
            got.append([n.channel, n.payload])
            if n.payload == "stop":
                break
        out["received"] = got
        out["seconds"] = round(time.monotonic() - started, 3)
        # The listener still answers queries afterwards.
        out["after"] = listener.execute("SELECT 'listener ok'").fetchone()[0]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
