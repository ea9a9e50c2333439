"""psycopg 3 pipeline mode through Switchyard.

Usage: psycopg_pipeline.py CONNINFO. Prints one JSON object with what each step observed; the
Rust test (tests/clients.rs) asserts on it.
"""

import json
import sys

import psycopg
from psycopg import errors


def main(conninfo: str) -> dict:
    out: dict = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        out["database"] = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute("DROP TABLE IF EXISTS pipe_t")
        conn.execute("CREATE TABLE pipe_t (id int PRIMARY KEY, v text NOT NULL)")

        # Several statements in one pipeline (autocommit: each is its own transaction), read back
        # in order after the pipeline synchronises.
        with conn.pipeline():
            conn.execute("INSERT INTO pipe_t VALUES (%s, %s)", [1, "a"])
            conn.execute("INSERT INTO pipe_t VALUES (%s, %s)", [2, "b"])
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pipe_t VALUES (%s, %s)",
                    [(i, f"many-{i}") for i in range(10, 30)],
                )
            count = conn.execute("SELECT count(*) FROM pipe_t")
            doubled = conn.execute("SELECT %s::int * 2", [21])
            text = conn.execute("SELECT v FROM pipe_t WHERE id = %s", [11])
        out["count"] = count.fetchone()[0]
        out["doubled"] = doubled.fetchone()[0]
        out["text"] = text.fetchone()[0]

        # An error in a pipeline: statements after it up to the next sync are skipped, the
        # pipeline raises, and the connection works afterwards.
        raised = None
        try:
            with conn.pipeline() as p:
                conn.execute("INSERT INTO pipe_t VALUES (100, 'before the error')")
                p.sync()
                conn.execute("INSERT INTO pipe_t VALUES (1, 'duplicate key')")
                conn.execute("INSERT INTO pipe_t VALUES (101, 'skipped')")
                p.sync()
        except errors.UniqueViolation as e:
            raised = type(e).__name__
        out["error_raised"] = raised
        rows = conn.execute("SELECT id FROM pipe_t WHERE id >= 100 ORDER BY id").fetchall()
        out["ids_after_error"] = [r[0] for r in rows]

        # Recovery: a new pipeline on the same connection works.
        with conn.pipeline():
            conn.execute("INSERT INTO pipe_t VALUES (102, 'after recovery')")
            after = conn.execute("SELECT count(*) FROM pipe_t WHERE id >= 100")
        out["count_after_recovery"] = after.fetchone()[0]

        # A pipeline inside an explicit transaction: an error aborts the whole transaction.
        try:
            with conn.transaction():
                with conn.pipeline():
                    conn.execute("INSERT INTO pipe_t VALUES (200, 'in tx')")
                    conn.execute("SELECT 1/0")
                    conn.execute("INSERT INTO pipe_t VALUES (201, 'in tx, skipped')")
        except errors.DivisionByZero as e:
            out["tx_error_raised"] = type(e).__name__
        rows = conn.execute("SELECT count(*) FROM pipe_t WHERE id >= 200").fetchone()
        out["tx_rows_after_rollback"] = rows[0]

        # And a committed one.
        with conn.transaction():
            with conn.pipeline():
                for i in range(300, 310):
                    conn.execute("INSERT INTO pipe_t VALUES (%s, 'committed')", [i])
                inside = conn.execute("SELECT count(*) FROM pipe_t WHERE id >= 300")
        out["tx_count_inside"] = inside.fetchone()[0]
        out["tx_committed"] = conn.execute(
            "SELECT count(*) FROM pipe_t WHERE v = 'committed'"
        ).fetchone()[0]
        out["status"] = conn.info.transaction_status.name
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
