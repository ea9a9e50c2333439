"""Session mode across a failover with psycopg 3: a session builds state (a setting, an SQL
prepared statement, a statement psycopg prepares itself, LISTEN), prints READY, waits for a
line on stdin (the failover is over), then uses all of it. No error may reach it.

Usage: psycopg_session_rebuild.py CONNINFO. Prints READY, then one JSON object.
"""

import json
import sys

import psycopg


def main(conninfo: str) -> dict:
    out: dict = {}
    # prepare_threshold=0: psycopg prepares every query as a named protocol statement.
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as c:
        c.execute("SET work_mem = '7MB'")
        c.execute("PREPARE twice(int) AS SELECT $1 * 2")
        c.execute("LISTEN jobs")
        c.execute("SELECT %s::int + 1", [1])
        out["pid_before"] = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        print("READY", flush=True)
        sys.stdin.readline()
        out["work_mem"] = c.execute("SHOW work_mem").fetchone()[0]
        out["twice"] = c.execute("EXECUTE twice(21)").fetchone()[0]
        out["plus_one"] = c.execute("SELECT %s::int + 1", [41]).fetchone()[0]
        out["in_recovery"] = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        out["pid_after"] = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        # A notification it sends itself arrives only if LISTEN was rebuilt.
        c.execute("NOTIFY jobs, 'after'")
        out["notified"] = [n.payload for n in c.notifies(timeout=10, stop_after=1)]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
