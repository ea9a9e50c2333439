"""Shared bookkeeping for the Python drivers of the matrix: the environment and the runner.

A scenario is a function that returns a detail string on success and raises on failure; raising
`Skip` marks it not applicable.
"""

import json
import os
import time
import traceback


class Skip(Exception):
    """The scenario does not apply to this driver or mode."""


ENV = {k: os.environ[k] for k in
       ["SY_HOST", "SY_PORT", "SY_DB", "SY_USER", "SY_PASSWORD", "SY_ADMIN_USER", "SY_MODE",
        "SY_TABLE"]}
SESSION = ENV["SY_MODE"] == "session"
# In transaction mode a notification comes through the listener's hub: its sender pid is the
# pooled server process the NOTIFY ran on, not the process id of the sender's key.
TRANSACTION_NOTIFY = "delivered through the hub (transaction mode: the sender pid is its server's)"


def conninfo(user=None, password=None, **extra) -> str:
    user = user or ENV["SY_USER"]
    password = ENV["SY_PASSWORD"] if password is None else password
    parts = [f"host={ENV['SY_HOST']}", f"port={ENV['SY_PORT']}", f"dbname={ENV['SY_DB']}",
             f"user={user}"]
    if password:
        parts.append(f"password='{password}'")
    parts += [f"{k}={v}" for k, v in extra.items()]
    return " ".join(parts)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def _outcome(run) -> dict:
    """Runs one scenario (a callable returning its detail); never raises."""
    started = time.monotonic()
    try:
        out = {"ok": True, "detail": str(run() or "")}
    except Skip as s:
        out = {"skip": str(s)}
    except Exception as e:  # noqa: BLE001 - the matrix reports every failure
        tb = traceback.format_exc(limit=3)
        out = {"ok": False, "detail": f"{type(e).__name__}: {e} | {tb[-600:]}"}
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def run_all(scenarios) -> dict:
    """Runs (name, fn) pairs in order."""
    return {name: _outcome(fn) for name, fn in scenarios}


async def run_all_async(scenarios, limit=40) -> dict:
    """Runs (name, coroutine function) pairs in order, each bounded by `limit` seconds."""
    import asyncio

    out = {}
    for name, fn in scenarios:
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(fn(), limit)
            out[name] = _outcome(lambda: detail)
        except BaseException as e:  # noqa: BLE001 - re-raised inside _outcome's bookkeeping
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            out[name] = _outcome(lambda e=e: (_ for _ in ()).throw(e))
        out[name]["seconds"] = round(time.monotonic() - started, 3)
    return out


def emit(results: dict):
    print(json.dumps(results))


def failover_seconds() -> float:
    return float(os.environ.get("SY_SECONDS", "14"))


class FailoverLog:
    """What a client saw while the primary failed over: each error (its SQLSTATE, or the
    exception's name when there is none), the longest a statement took, and the writes that
    succeeded after the last error."""

    def __init__(self):
        self.errors, self.longest, self.total, self.after = [], 0.0, 0, 0

    def ok(self, took):
        self.longest = max(self.longest, took)
        self.total += 1
        self.after += 1

    def error(self, e, took=0.0):
        self.longest = max(self.longest, took)
        self.errors.append(getattr(e, "sqlstate", None) or type(e).__name__)
        self.after = 0

    def result(self) -> dict:
        return {"failover": {"ok": True, "errors": self.errors, "longest": round(self.longest, 3),
                             "total": self.total, "after_last_error": self.after}}


def run_failover(connect, write, close):
    """The failover scenario for a synchronous driver: one connection writing every 50 ms for
    SY_SECONDS, reconnecting after an error that ended it."""
    log, conn = FailoverLog(), None
    deadline = time.monotonic() + failover_seconds()
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            if conn is None:
                conn = connect()
            write(conn)
            log.ok(time.monotonic() - started)
        except Exception as e:  # noqa: BLE001 - every error is recorded
            log.error(e, time.monotonic() - started)
            close(conn)
            conn = None
        time.sleep(0.05)  # pacing of the workload, not a synchronisation
    close(conn)
    return log.result()


async def run_failover_async(connect, write, close):
    """As run_failover, for an asyncio driver."""
    import asyncio

    log, conn = FailoverLog(), None
    deadline = time.monotonic() + failover_seconds()
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            if conn is None:
                conn = await connect()
            await write(conn)
            log.ok(time.monotonic() - started)
        except Exception as e:  # noqa: BLE001 - every error is recorded
            log.error(e, time.monotonic() - started)
            await close(conn)
            conn = None
        await asyncio.sleep(0.05)  # pacing of the workload, not a synchronisation
    await close(conn)
    return log.result()


def scenario() -> str:
    return os.environ.get("SY_SCENARIO", "matrix")


# The matrix's scenarios, in order: each driver module defines a function of each name.
SCENARIOS = ["connect_scram", "simple_query", "extended_query", "prepared_reuse", "pipeline",
             "copy", "cancel", "listen_notify", "terminated_backend", "client_encoding",
             "pool_health"]


def main(module_globals: dict):
    """Runs the scenario set SY_SCENARIO names (the matrix, or `failover`) with the functions
    of the calling module, and prints the result."""
    import asyncio
    import inspect

    if scenario() == "failover":
        run = module_globals["failover"]
        emit(asyncio.run(run()) if inspect.iscoroutinefunction(run) else run())
        return
    pairs = [(name, module_globals[name]) for name in SCENARIOS]
    if inspect.iscoroutinefunction(pairs[0][1]):
        emit(asyncio.run(run_all_async(pairs)))
    else:
        emit(run_all(pairs))
