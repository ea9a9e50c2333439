"""Cancelling a running query with psycopg 3: `conn.cancel()` and `conn.cancel_safe()`.

Usage: psycopg_cancel.py CONNINFO. For each method, a thread waits until a second connection sees
the victim's `pg_sleep(30)` running in pg_stat_activity, then cancels it; the victim must get
QueryCanceled within seconds and keep working. Prints one JSON object.
"""

import json
import sys
import threading
import time

import psycopg
from psycopg import errors

SLEEP = "SELECT pg_sleep(30) /* cancel me: %s */"


def wait_until_running(observer: psycopg.Connection, tag: str, deadline: float) -> bool:
    """Polls pg_stat_activity until the tagged query is active (bounded by `deadline`)."""
    while time.monotonic() < deadline:
        row = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s",
            [SLEEP % tag],
        ).fetchone()
        if row[0] > 0:
            return True
        time.sleep(0.05)
    return False


def attempt(conninfo: str, method: str) -> dict:
    res: dict = {"method": method}
    with psycopg.connect(conninfo, autocommit=True) as victim, psycopg.connect(
        conninfo, autocommit=True
    ) as observer:
        seen = {}

        def canceller() -> None:
            seen["running"] = wait_until_running(observer, method, time.monotonic() + 10)
            if method == "cancel":
                victim.cancel()
            else:
                victim.cancel_safe(timeout=10)

        t = threading.Thread(target=canceller)
        started = time.monotonic()
        t.start()
        try:
            victim.execute(SLEEP % method)
            res["error"] = None
        except errors.QueryCanceled as e:
            res["error"] = type(e).__name__
            res["sqlstate"] = e.sqlstate
        except Exception as e:  # reported, asserted on by the Rust test
            res["error"] = f"{type(e).__name__}: {e}"
        res["seconds"] = round(time.monotonic() - started, 3)
        t.join(15)
        res["saw_running"] = seen.get("running", False)
        res["after"] = victim.execute("SELECT 'still usable'").fetchone()[0]
    return res


def main(conninfo: str) -> dict:
    return {m: attempt(conninfo, m) for m in ("cancel", "cancel_safe")}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
