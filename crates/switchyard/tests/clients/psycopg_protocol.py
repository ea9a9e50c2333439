"""libpq 18 protocol and TLS negotiation against Switchyard (which speaks protocol 3.0, no TLS).

Usage: psycopg_protocol.py CONNINFO [CASE...] (default: every case). Each case connects with extra conninfo options and reports
whether it worked, the negotiated protocol version, or the error class and message, and how long
it took. Prints one JSON object.
"""

import json
import sys
import time

import psycopg

CASES = {
    # libpq asks for the newest protocol (3.2); the proxy negotiates down to 3.0.
    "latest": "max_protocol_version=latest",
    "explicit_3_2": "max_protocol_version=3.2",
    # A client that insists on 3.2 must be refused by libpq itself, cleanly.
    "min_3_2": "min_protocol_version=3.2",
    # SSLRequest is answered 'N': prefer falls back to plain text, require fails.
    "ssl_prefer": "sslmode=prefer",
    "ssl_require": "sslmode=require",
    # A direct TLS ClientHello (no SSLRequest) is refused, not left hanging.
    "ssl_direct": "sslmode=require sslnegotiation=direct",
    "gss_prefer": "gssencmode=prefer",
}


def attempt(conninfo: str, extra: str) -> dict:
    res: dict = {}
    started = time.monotonic()
    try:
        with psycopg.connect(f"{conninfo} connect_timeout=5 {extra}") as conn:
            res["ok"] = conn.execute("SELECT %s::int + 2", [40]).fetchone()[0] == 42
            res["protocol"] = conn.info.full_protocol_version
            res["ssl"] = conn.pgconn.ssl_in_use
    except psycopg.Error as e:
        res["ok"] = False
        res["error"] = type(e).__name__
        res["message"] = str(e)
    res["seconds"] = round(time.monotonic() - started, 3)
    return res


def main(conninfo: str, names: list[str]) -> dict:
    return {name: attempt(conninfo, CASES[name]) for name in names or CASES}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
