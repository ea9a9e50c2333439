"""TLS from a real libpq (18, bundled with psycopg 3) to Switchyard.

Usage: psycopg_tls.py CASES_JSON. CASES_JSON maps a case name to a libpq connection string.
Each case connects, and reports whether TLS is in use and the session's user,
or the error class, SQLSTATE and message. Prints one JSON object: {case: result}.
"""

import json
import sys

import psycopg


def attempt(conninfo: str) -> dict:
    res: dict = {}
    try:
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            res["ok"] = True
            res["tls"] = bool(conn.pgconn.ssl_in_use)
            res["current_user"] = conn.execute("SELECT current_user").fetchone()[0]
    except psycopg.Error as e:
        res["ok"] = False
        res["error"] = type(e).__name__
        res["sqlstate"] = getattr(e, "sqlstate", None)
        res["message"] = str(e).strip()
    return res


def main() -> None:
    cases = json.loads(sys.argv[1])
    print(json.dumps({name: attempt(conninfo) for name, conninfo in cases.items()}))


if __name__ == "__main__":
    main()
