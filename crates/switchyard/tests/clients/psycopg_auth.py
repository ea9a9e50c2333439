"""Password authentication through Switchyard with psycopg 3 (libpq 18).

Usage: psycopg_auth.py HOST PORT DBNAME [CASE...] (default: every case). Each case connects as one user with one password (and
optionally libpq's `require_auth`, which fails unless the proxy uses exactly that method) and
reports the user the session runs as, or the error class and message. Prints one JSON object.
"""

import json
import sys
import time

import psycopg

# name: (user, password, extra conninfo)
CASES = {
    "scram_ok": ("scram_user", "scram-pw", ""),
    "scram_required_method": ("scram_user", "scram-pw", "require_auth=scram-sha-256"),
    "scram_wrong_password": ("scram_user", "wrong-pw", ""),
    "md5_ok": ("md5_user", "md5-pw", ""),
    "md5_required_method": ("md5_user", "md5-pw", "require_auth=md5"),
    "md5_wrong_password": ("md5_user", "wrong-pw", ""),
    "md5_user_refuses_scram_only": ("md5_user", "md5-pw", "require_auth=scram-sha-256"),
    "unknown_user": ("nobody_here", "x", ""),
}


def attempt(host: str, port: str, db: str, user: str, password: str, extra: str) -> dict:
    res: dict = {}
    started = time.monotonic()
    conninfo = psycopg.conninfo.make_conninfo(
        host=host, port=port, dbname=db, user=user, password=password, connect_timeout=5
    )
    try:
        with psycopg.connect(f"{conninfo} {extra}") as conn:
            res["ok"] = True
            res["current_user"] = conn.execute("SELECT current_user").fetchone()[0]
            res["rows"] = conn.execute("SELECT count(*) FROM generate_series(1, %s)", [3]).fetchone()[0]
    except psycopg.Error as e:
        res["ok"] = False
        res["error"] = type(e).__name__
        res["sqlstate"] = e.sqlstate
        res["message"] = str(e)
    res["seconds"] = round(time.monotonic() - started, 3)
    return res


def main(host: str, port: str, db: str, names: list[str]) -> dict:
    return {name: attempt(host, port, db, *CASES[name]) for name in names or CASES}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4], sys.argv[4:])))
