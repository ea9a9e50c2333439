"""The driver matrix with asyncpg (see README.md here)."""

import asyncio
import io
import time

import asyncpg

from pyscenarios import (ENV, SESSION, TRANSACTION_NOTIFY, expect, main,
                         run_failover_async)

TABLE = ENV["SY_TABLE"]


async def connect(user=None, password=None):
    return await asyncpg.connect(
        host=ENV["SY_HOST"], port=int(ENV["SY_PORT"]), database=ENV["SY_DB"],
        user=user or ENV["SY_USER"],
        password=ENV["SY_PASSWORD"] if password is None else (password or None),
        ssl=False, timeout=10)


async def admin():
    return await connect(user=ENV["SY_ADMIN_USER"], password="")


async def connect_scram():
    c = await connect()
    try:
        user = await c.fetchval("SELECT current_user")
        expect(user == ENV["SY_USER"], user)
        return f"as {user}"
    finally:
        await c.close()


async def simple_query():
    c = await connect()
    try:
        # execute() without arguments uses the simple protocol.
        await c.execute("SELECT 1; SELECT 2")
    finally:
        await c.close()


async def extended_query():
    c = await connect()
    try:
        v = await c.fetchval("SELECT $1::int + 1", 41)
        expect(v == 42, v)
    finally:
        await c.close()


async def prepared_reuse():
    c = await connect()
    try:
        stmt = await c.prepare("SELECT $1::int * 2")
        for i in range(3):
            async with c.transaction():
                v = await stmt.fetchval(i)
                expect(v == i * 2, v)
        return "prepare(), 3 transactions"
    finally:
        await c.close()


async def pipeline():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int, name text)")
        # executemany sends every Bind/Execute in one flight.
        await c.executemany(f"INSERT INTO {TABLE} VALUES ($1, $2)",
                            [(i, f"row {i}") for i in range(100)])
        n = await c.fetchval(f"SELECT count(*) FROM {TABLE}")
        expect(n == 100, n)
        await c.execute(f"DROP TABLE {TABLE}")
        return "executemany: 100 inserts in one flight"
    finally:
        await c.close()


async def copy():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int, name text)")
        await c.copy_records_to_table(TABLE, records=[(i, f"row {i}") for i in range(1000)])
        out = io.BytesIO()
        await c.copy_from_table(TABLE, output=out)
        lines = out.getvalue().decode().splitlines()
        expect(len(lines) == 1000, len(lines))
        expect(lines[999] == "999\trow 999", lines[999])
        await c.execute(f"DROP TABLE {TABLE}")
        return "1000 rows in and out"
    finally:
        await c.close()


async def cancel():
    c = await connect()
    try:
        started = time.monotonic()
        try:
            # On timeout asyncpg sends a CancelRequest and waits for the query to end.
            await c.fetchval("SELECT pg_sleep(20)", timeout=0.5)
            raise AssertionError("not cancelled")
        except asyncio.TimeoutError:
            pass
        v = await c.fetchval("SELECT 'after'")
        took = time.monotonic() - started
        expect(v == "after", v)
        expect(took < 10, f"took {took:.1f}s: the cancel did not stop the query")
        return f"cancelled and usable after {took:.2f}s"
    finally:
        await c.close()


async def listen_notify():
    listener, sender = await connect(), await connect()
    try:
        got = asyncio.get_running_loop().create_future()
        await listener.add_listener(
            "matrix", lambda _c, pid, _ch, payload: got.done() or got.set_result((pid, payload)))
        await sender.execute("NOTIFY matrix, 'hello'")
        pid, payload = await asyncio.wait_for(got, 10)
        expect(payload == "hello", payload)
        if not SESSION:
            return TRANSACTION_NOTIFY
        expect(pid == sender.get_server_pid(),
               f"sender pid {pid}, its key says {sender.get_server_pid()}")
        return "delivered; sender pid matches its key"
    finally:
        await listener.close()
        await sender.close()


async def terminated_backend():
    c, a = await connect(), await admin()
    try:
        pid = await c.fetchval("SELECT pg_backend_pid()")
        ended = await a.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        # (Transaction mode: another client may have ended that server process already.)
        expect(ended or not SESSION, "terminated")
        if SESSION:
            try:
                await c.fetchval("SELECT 1")
                raise AssertionError("the next query still ran")
            except Exception as e:  # noqa: BLE001 - whatever asyncpg raises for a lost backend
                state = getattr(e, "sqlstate", None) or type(e).__name__
            again = await connect()
            expect(await again.fetchval("SELECT 1") == 1, "new connection")
            await again.close()
            return f"next query: {state}; a new connection works"
        v = await c.fetchval("SELECT 1")
        expect(v == 1, v)
        return "next query works"
    finally:
        await a.close()
        c.terminate()


async def client_encoding():
    c = await connect()
    try:
        await c.execute("SET client_encoding = 'utf-8'")
        shown = await c.fetchval("SHOW client_encoding")
        reported = c.get_settings().client_encoding
        expect(shown == "UTF8" and reported == "UTF8", f"SHOW {shown}, reported {reported}")
        return "SHOW and ParameterStatus: UTF8"
    finally:
        await c.close()


async def pool_health():
    pool = await asyncpg.create_pool(
        host=ENV["SY_HOST"], port=int(ENV["SY_PORT"]), database=ENV["SY_DB"],
        user=ENV["SY_USER"], password=ENV["SY_PASSWORD"], ssl=False, min_size=1, max_size=1,
        timeout=10)
    try:
        async with pool.acquire() as c:
            try:
                await c.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
                pass
        async with pool.acquire() as c:
            v = await c.fetchval("SELECT 'healthy'")
            expect(v == "healthy", v)
        return "asyncpg pool replaced it"
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def failover():
    async def write(c):
        await c.execute(f"INSERT INTO {TABLE} (driver) VALUES ('asyncpg')")

    async def close(c):
        if c is not None:
            c.terminate()
    return await run_failover_async(connect, write, close)


if __name__ == "__main__":
    main(globals())
