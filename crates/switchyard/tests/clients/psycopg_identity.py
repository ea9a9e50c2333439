"""Backend identity with psycopg 3: the pid the client was given, its server's pid, a cancel
with that key, and a backend that terminates itself.

Usage: psycopg_identity.py CONNINFO. Prints one JSON object.
"""

import json
import sys
import threading

import psycopg


def main(conninfo: str) -> dict:
    out: dict = {}
    conn = psycopg.connect(conninfo, autocommit=True)
    out["key_pid"] = conn.info.backend_pid
    out["backend_pid"] = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    # A cancel with the key the client was given stops its query.
    timer = threading.Timer(0.5, conn.cancel_safe)
    timer.start()
    try:
        conn.execute("SELECT pg_sleep(20)")
        out["cancel"] = "not cancelled"
    except psycopg.Error as e:
        out["cancel"] = e.sqlstate
    timer.join()
    # The backend the client terminates is its own: its connection ends, as direct.
    try:
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        conn.execute("SELECT 1")
        out["terminate_own"] = "still served"
    except psycopg.Error as e:
        out["terminate_own"] = e.sqlstate or type(e).__name__
    out["closed_after"] = conn.closed
    conn.close()
    # A new connection works.
    with psycopg.connect(conninfo) as again:
        out["fresh_after"] = again.execute("SELECT true").fetchone()[0]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
