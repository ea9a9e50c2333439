"""The driver matrix with psycopg 3, synchronous, with psycopg_pool (see README.md here)."""

import threading
import time

import psycopg
from psycopg_pool import ConnectionPool

from pyscenarios import (ENV, SESSION, TRANSACTION_NOTIFY, conninfo, expect, main,
                         run_failover)

TABLE = ENV["SY_TABLE"]


def connect(**kw):
    return psycopg.connect(conninfo(), **kw)


def connect_scram():
    with connect() as c:
        user = c.execute("SELECT current_user").fetchone()[0]
        expect(user == ENV["SY_USER"], f"current_user {user}")
        return f"as {user}"


def simple_query():
    with connect(autocommit=True) as c:
        # Without parameters psycopg sends a simple Query message.
        c.execute("SELECT 1; SELECT 2")
        v = c.execute("SELECT 'simple'").fetchone()[0]
        expect(v == "simple", v)


def extended_query():
    with connect() as c:
        v = c.execute("SELECT %s::int + 1", [41]).fetchone()[0]
        expect(v == 42, v)


def prepared_reuse():
    with connect() as c:
        for i in range(3):
            with c.transaction():
                v = c.execute("SELECT %s::int * 2", [i], prepare=True).fetchone()[0]
                expect(v == i * 2, v)
        return "prepare=True, 3 transactions"


def pipeline():
    with connect() as c:
        with c.pipeline():
            curs = [c.execute("SELECT %s::int", [i]) for i in range(10)]
        got = [cur.fetchone()[0] for cur in curs]
        expect(got == list(range(10)), got)
        return "10 queries in one pipeline"


def copy():
    with connect(autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        c.execute(f"CREATE TABLE {TABLE} (id int, name text)")
        try:
            with c.cursor().copy(f"COPY {TABLE} FROM STDIN") as cp:
                for i in range(1000):
                    cp.write_row((i, f"row {i}"))
            rows = []
            with c.cursor().copy(f"COPY {TABLE} TO STDOUT") as cp:
                for row in cp.rows():
                    rows.append(row)
            expect(len(rows) == 1000, len(rows))
            expect(rows[999] == ("999", "row 999"), rows[999])
        finally:
            c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        return "1000 rows in and out"


def cancel():
    with connect(autocommit=True) as c:
        t = threading.Timer(0.5, c.cancel_safe)
        t.start()
        started = time.monotonic()
        try:
            c.execute("SELECT pg_sleep(20)")
            raise AssertionError("not cancelled")
        except psycopg.errors.QueryCanceled:
            pass
        took = time.monotonic() - started
        t.join()
        expect(took < 10, f"took {took:.1f}s")
        expect(c.execute("SELECT 'after'").fetchone()[0] == "after", "usable after")
        return f"cancelled after {took:.2f}s"


def listen_notify():
    with connect(autocommit=True) as listener, connect(autocommit=True) as sender:
        listener.execute("LISTEN matrix")
        sender.execute("NOTIFY matrix, 'hello'")
        for n in listener.notifies(timeout=10):
            expect(n.payload == "hello", n.payload)
            if not SESSION:
                return TRANSACTION_NOTIFY
            expect(n.pid == sender.info.backend_pid,
                   f"sender pid {n.pid}, its key says {sender.info.backend_pid}")
            return "delivered; sender pid matches its key"
        raise AssertionError("no notification within 10 s")


def admin():
    return psycopg.connect(conninfo(user=ENV["SY_ADMIN_USER"], password=""), autocommit=True)


def terminated_backend():
    with connect(autocommit=True) as c, admin() as a:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        ended = a.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]
        # (Transaction mode: another client may have ended that server process already.)
        expect(ended or not SESSION, "terminated")
        if SESSION:
            try:
                c.execute("SELECT 1")
                raise AssertionError("the next query still ran")
            except psycopg.OperationalError as e:
                state = e.sqlstate or "connection closed"
            with connect() as again:
                expect(again.execute("SELECT 1").fetchone()[0] == 1, "new connection")
            return f"next query: {state}; a new connection works"
        # Transaction mode: the next transaction takes another server connection.
        expect(c.execute("SELECT 1").fetchone()[0] == 1, "next query")
        return "next query works"


def client_encoding():
    with connect(autocommit=True) as c:
        c.execute("SET client_encoding = 'utf-8'")
        shown = c.execute("SHOW client_encoding").fetchone()[0]
        reported = c.info.parameter_status("client_encoding")
        expect(shown == "UTF8" and reported == "UTF8", f"SHOW {shown}, reported {reported}")
        return "SHOW and ParameterStatus: UTF8"


def pool_health():
    with ConnectionPool(conninfo(), min_size=1, max_size=1, open=True,
                        check=ConnectionPool.check_connection, timeout=10) as pool:
        with pool.connection() as c:
            try:
                c.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            except psycopg.OperationalError:
                pass
        with pool.connection() as c:
            v = c.execute("SELECT 'healthy'").fetchone()[0]
            expect(v == "healthy", v)
        return "psycopg_pool check_connection replaced it"


def failover():
    def close(c):
        if c is not None:
            c.close()
    write = lambda c: c.execute(f"INSERT INTO {TABLE} (driver) VALUES ('psycopg')")
    return run_failover(lambda: connect(autocommit=True), write, close)


if __name__ == "__main__":
    main(globals())
