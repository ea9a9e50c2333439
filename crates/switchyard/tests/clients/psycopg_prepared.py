"""Server-side prepared statements (psycopg 3, prepare_threshold=0) from several connections.

Usage: psycopg_prepared.py CONNINFO [CONNECTIONS] [TRANSACTIONS]. Each connection runs TRANSACTIONS
transactions in its own thread; every statement is prepared (named, `_pg3_N`) on first use and
then executed by name. Every 10th transaction is rolled back on purpose, which makes psycopg send
`DEALLOCATE ALL` and prepare again under new names; a small `prepared_max` makes psycopg close old
statements (protocol-level Close with libpq >= 17). Prints one JSON object.
"""

import json
import sys
import threading

import psycopg


class Rollback(Exception):
    pass


def worker(conninfo: str, n: int, transactions: int, res: dict) -> None:
    ok = wrong = rolled_back = 0
    pids = set()
    errors = []
    max_prepared = 0
    try:
        with psycopg.connect(conninfo) as conn:
            conn.prepare_threshold = 0
            conn.prepared_max = 4
            for t in range(transactions):
                try:
                    with conn.transaction():
                        cur = conn.cursor()
                        pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
                        pids.add(pid)
                        s = cur.execute("SELECT %s::int + %s::int", (n, t)).fetchone()[0]
                        cur.execute(
                            "INSERT INTO prep_t (conn, tx, v) VALUES (%s, %s, %s)",
                            (n, t, f"c{n}-t{t}"),
                        )
                        v = cur.execute(
                            "SELECT v FROM prep_t WHERE conn = %s AND tx = %s", (n, t)
                        ).fetchone()[0]
                        # One of several query texts, to make the cache rotate.
                        k = t % 6
                        m = cur.execute(f"SELECT %s::int * {k + 2}", (t,)).fetchone()[0]
                        same_pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
                        good = (
                            s == n + t
                            and v == f"c{n}-t{t}"
                            and m == t * (k + 2)
                            and same_pid == pid
                        )
                        if good:
                            ok += 1
                        else:
                            wrong += 1
                            errors.append(f"tx {t}: wrong result {(s, v, m, pid, same_pid)}")
                        max_prepared = max(max_prepared, len(conn._prepared._names))
                        if t % 10 == 9:
                            raise Rollback()
                except Rollback:
                    rolled_back += 1
    except Exception as e:  # reported, asserted on by the Rust test
        errors.append(f"{type(e).__name__}: {e}")
    res[n] = {
        "ok": ok,
        "wrong": wrong,
        "rolled_back": rolled_back,
        "pids": sorted(pids),
        "errors": errors[:5],
        "max_prepared": max_prepared,
    }


def main(conninfo: str, connections: int, transactions: int) -> dict:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS prep_t")
        conn.execute("CREATE TABLE prep_t (conn int, tx int, v text, PRIMARY KEY (conn, tx))")
    res: dict = {}
    threads = [
        threading.Thread(target=worker, args=(conninfo, n, transactions, res))
        for n in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        committed = conn.execute("SELECT count(*) FROM prep_t").fetchone()[0]
    workers = [res[n] for n in range(connections)]
    return {
        "ok": sum(w["ok"] for w in workers),
        "wrong": sum(w["wrong"] for w in workers),
        "rolled_back": sum(w["rolled_back"] for w in workers),
        "committed_rows": committed,
        "errors": [e for w in workers for e in w["errors"]],
        "server_pids": sorted({p for w in workers for p in w["pids"]}),
        "max_prepared": max(w["max_prepared"] for w in workers),
    }


if __name__ == "__main__":
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    txs = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    print(json.dumps(main(sys.argv[1], conns, txs)))
