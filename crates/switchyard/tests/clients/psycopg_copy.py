"""COPY FROM STDIN and COPY TO STDOUT with psycopg 3's `cursor.copy()`, text and binary.

Usage: psycopg_copy.py CONNINFO. Prints one JSON object.
"""

import csv
import io
import json
import sys

import psycopg
from psycopg import errors

ROWS = 5000


def main(conninfo: str) -> dict:
    out: dict = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        out["database"] = conn.execute("SELECT current_database()").fetchone()[0]
        cur = conn.cursor()
        cur.execute("DROP TABLE IF EXISTS copy_t, copy_bin_t")
        cur.execute("CREATE TABLE copy_t (id int PRIMARY KEY, name text, score float8)")

        # Row by row (psycopg formats the rows), in autocommit.
        with cur.copy("COPY copy_t (id, name, score) FROM STDIN") as copy:
            for i in range(ROWS):
                copy.write_row((i, f"name {i}\twith tab", i / 4))
        out["copy_in_rowcount"] = cur.rowcount

        # Raw blocks inside a transaction.
        with conn.transaction():
            with cur.copy("COPY copy_t FROM STDIN WITH (FORMAT csv)") as copy:
                block = "".join(f'{i},"csv, {i}",{i}.5\n' for i in range(ROWS, ROWS + 1000))
                copy.write(block.encode())
        out["copy_in_csv_rowcount"] = cur.rowcount
        out["count"] = cur.execute("SELECT count(*) FROM copy_t").fetchone()[0]

        # COPY TO STDOUT, rows parsed by psycopg.
        with cur.copy("COPY (SELECT id, name, score FROM copy_t ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "float8"])
            rows = list(copy.rows())
        out["copy_out_rows"] = len(rows)
        out["copy_out_first"] = list(rows[0])
        out["copy_out_last"] = list(rows[-1])
        out["copy_out_in_order"] = all(r[0] == i for i, r in enumerate(rows))

        # COPY TO STDOUT as raw CSV blocks, parsed here and compared with a plain SELECT.
        chunks = []
        with cur.copy("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT WITH (FORMAT csv)") as copy:
            for data in copy:
                chunks.append(bytes(data))
        parsed = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
        selected = cur.execute("SELECT id, name, score FROM copy_t ORDER BY id").fetchall()
        out["copy_out_csv_matches"] = len(parsed) == len(selected) and all(
            (int(p[0]), p[1], float(p[2])) == s for p, s in zip(parsed, selected)
        )

        # Binary format both ways.
        with conn.transaction():
            cur.execute("CREATE TABLE copy_bin_t (id int, b bytea)")
            with cur.copy("COPY copy_bin_t FROM STDIN WITH (FORMAT binary)") as copy:
                copy.set_types(["int4", "bytea"])
                for i in range(256):
                    copy.write_row((i, bytes([i]) * i))
            with cur.copy("COPY (SELECT id, b FROM copy_bin_t ORDER BY id) TO STDOUT WITH (FORMAT binary)") as copy:
                copy.set_types(["int4", "bytea"])
                back = list(copy.rows())
        out["binary_roundtrip"] = len(back) == 256 and all(
            r[0] == i and bytes(r[1]) == bytes([i]) * i for i, r in enumerate(back)
        )

        # A COPY that fails on bad data: the error reaches the client, the connection recovers.
        try:
            with cur.copy("COPY copy_t (id, name, score) FROM STDIN") as copy:
                copy.write_row((ROWS * 10, "ok", 1.0))
                copy.write(b"not-a-number\tbad\trow\n")
        except errors.InvalidTextRepresentation as e:
            out["bad_copy_error"] = type(e).__name__
        # A COPY aborted by the client (an exception inside the block sends CopyFail).
        try:
            with cur.copy("COPY copy_t (id, name, score) FROM STDIN") as copy:
                copy.write_row((ROWS * 11, "aborted", 1.0))
                raise RuntimeError("client gives up")
        except RuntimeError as e:
            out["copy_fail_raised"] = str(e)
        out["count_after_failures"] = cur.execute("SELECT count(*) FROM copy_t").fetchone()[0]
        out["status"] = conn.info.transaction_status.name
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
