"""The driver matrix with psycopg 3's asyncio API and psycopg_pool's AsyncConnectionPool (see
README.md here)."""

import asyncio
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from pyscenarios import (ENV, SESSION, TRANSACTION_NOTIFY, conninfo, expect, main,
                         run_failover_async)

TABLE = ENV["SY_TABLE"]


async def connect(**kw):
    return await psycopg.AsyncConnection.connect(conninfo(), **kw)


async def one(c, sql, params=None, **kw):
    cur = await c.execute(sql, params, **kw)
    return (await cur.fetchone())[0]


async def connect_scram():
    async with await connect() as c:
        user = await one(c, "SELECT current_user")
        expect(user == ENV["SY_USER"], user)
        return f"as {user}"


async def simple_query():
    async with await connect(autocommit=True) as c:
        await c.execute("SELECT 1; SELECT 2")
        expect(await one(c, "SELECT 'simple'") == "simple", "value")


async def extended_query():
    async with await connect() as c:
        expect(await one(c, "SELECT %s::int + 1", [41]) == 42, "value")


async def prepared_reuse():
    async with await connect() as c:
        for i in range(3):
            async with c.transaction():
                v = await one(c, "SELECT %s::int * 2", [i], prepare=True)
                expect(v == i * 2, v)
        return "prepare=True, 3 transactions"


async def pipeline():
    async with await connect() as c:
        async with c.pipeline():
            curs = [await c.execute("SELECT %s::int", [i]) for i in range(10)]
        got = [(await cur.fetchone())[0] for cur in curs]
        expect(got == list(range(10)), got)
        return "10 queries in one pipeline"


async def copy():
    async with await connect(autocommit=True) as c:
        await c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await c.execute(f"CREATE TABLE {TABLE} (id int, name text)")
        try:
            async with c.cursor().copy(f"COPY {TABLE} FROM STDIN") as cp:
                for i in range(1000):
                    await cp.write_row((i, f"row {i}"))
            rows = []
            async with c.cursor().copy(f"COPY {TABLE} TO STDOUT") as cp:
                async for row in cp.rows():
                    rows.append(row)
            expect(len(rows) == 1000 and rows[999] == ("999", "row 999"), len(rows))
        finally:
            await c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        return "1000 rows in and out"


async def cancel():
    async with await connect(autocommit=True) as c:
        async def later():
            await asyncio.sleep(0.5)
            await c.cancel_safe()
        task = asyncio.create_task(later())
        started = time.monotonic()
        try:
            await c.execute("SELECT pg_sleep(20)")
            raise AssertionError("not cancelled")
        except psycopg.errors.QueryCanceled:
            pass
        took = time.monotonic() - started
        await task
        expect(took < 10, f"took {took:.1f}s")
        expect(await one(c, "SELECT 'after'") == "after", "usable after")
        return f"cancelled after {took:.2f}s"


async def listen_notify():
    async with await connect(autocommit=True) as listener, \
            await connect(autocommit=True) as sender:
        await listener.execute("LISTEN matrix")
        await sender.execute("NOTIFY matrix, 'hello'")
        async for n in listener.notifies(timeout=10):
            expect(n.payload == "hello", n.payload)
            if not SESSION:
                return TRANSACTION_NOTIFY
            expect(n.pid == sender.info.backend_pid,
                   f"sender pid {n.pid}, its key says {sender.info.backend_pid}")
            return "delivered; sender pid matches its key"
        raise AssertionError("no notification within 10 s")


async def terminated_backend():
    admin_info = conninfo(user=ENV["SY_ADMIN_USER"], password="")
    async with await connect(autocommit=True) as c, \
            await psycopg.AsyncConnection.connect(admin_info, autocommit=True) as a:
        pid = await one(c, "SELECT pg_backend_pid()")
        ended = await one(a, "SELECT pg_terminate_backend(%s, 5000)", [pid])
        # (Transaction mode: another client may have ended that server process already.)
        expect(ended or not SESSION, "terminated")
        if SESSION:
            try:
                await c.execute("SELECT 1")
                raise AssertionError("the next query still ran")
            except psycopg.OperationalError as e:
                state = e.sqlstate or "connection closed"
            async with await connect() as again:
                expect(await one(again, "SELECT 1") == 1, "new connection")
            return f"next query: {state}; a new connection works"
        expect(await one(c, "SELECT 1") == 1, "next query")
        return "next query works"


async def client_encoding():
    async with await connect(autocommit=True) as c:
        await c.execute("SET client_encoding = 'utf-8'")
        shown = await one(c, "SHOW client_encoding")
        reported = c.info.parameter_status("client_encoding")
        expect(shown == "UTF8" and reported == "UTF8", f"SHOW {shown}, reported {reported}")
        return "SHOW and ParameterStatus: UTF8"


async def pool_health():
    async with AsyncConnectionPool(conninfo(), min_size=1, max_size=1, open=False,
                                   check=AsyncConnectionPool.check_connection,
                                   timeout=10) as pool:
        async with pool.connection() as c:
            try:
                await c.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            except psycopg.OperationalError:
                pass
        async with pool.connection() as c:
            expect(await one(c, "SELECT 'healthy'") == "healthy", "value")
        return "AsyncConnectionPool check_connection replaced it"


async def failover():
    async def write(c):
        await c.execute(f"INSERT INTO {TABLE} (driver) VALUES ('psycopg_async')")

    async def close(c):
        if c is not None:
            await c.close()
    return await run_failover_async(lambda: connect(autocommit=True), write, close)


if __name__ == "__main__":
    main(globals())
