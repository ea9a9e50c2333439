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

        # The listener notifies itself too: the sender pid is then its own.
        listener.execute("NOTIFY ch, 'self'")
        listener.execute("NOTIFY ch, 'stop'")

        got, pids = [], []
        started = time.monotonic()
        stops = 0
        for n in listener.notifies(timeout=10):
            got.append([n.channel, n.payload])
            pids.append(n.pid)
            stops += n.payload == "stop"
            if stops == 2:
                break
        out["received"] = got
        out["sender_pids"] = pids
        # The process ids each client was given (BackendKeyData) and its server's own.
        out["listener_key_pid"] = listener.info.backend_pid
        out["sender_key_pid"] = sender.info.backend_pid
        out["listener_backend_pid"] = listener.execute("SELECT pg_backend_pid()").fetchone()[0]
        out["sender_backend_pid"] = sender.execute("SELECT pg_backend_pid()").fetchone()[0]
        out["seconds"] = round(time.monotonic() - started, 3)
        # The listener still answers queries afterwards.
        out["after"] = listener.execute("SELECT 'listener ok'").fetchone()[0]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
