#!/usr/bin/env python3
"""Open N PostgreSQL client connections that log in (trust) and then stay idle.

Speaks the raw v3 protocol with the standard library only: a StartupMessage, then messages are read
until ReadyForQuery ('Z'). Connections are opened at most --concurrency at a time. When every
attempt is over it prints one line on stdout:

    READY up=<connections logged in> failed=<attempts that failed> seconds=<time taken>

and then holds the connections open until stdin reaches EOF, SIGTERM/SIGINT arrives, or
--max-hold seconds pass (or, with --hold SECONDS, exactly that long, ignoring stdin). While
holding, a line "status" on stdin is answered with "ALIVE <connections still open> queries=<n>
failed=<n>"; with --query-every S each connection runs `SELECT 1` every S seconds meanwhile
(steady traffic through every client), else it stays idle. On the way
out each connection gets a Terminate and is closed; the last line is
"DONE alive=<n> closed_by_server=<n>". Exit status: 0 if all N logged in, 2 otherwise.
Progress and errors go to stderr.

Example:  python3 bench/idle_clients.py --port 6432 --count 10000 --hold 60
"""

import argparse
import asyncio
import random
import resource
import signal
import struct
import sys
import threading
import time

PROTOCOL_3_0 = 196608
TERMINATE = b"X\x00\x00\x00\x04"


class LoginError(Exception):
    pass


def raise_nofile(need):
    """Raise RLIMIT_NOFILE to at least `need` if possible; returns the soft limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        try:  # only root can raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            need = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def startup_packet(user, database):
    body = struct.pack("!i", PROTOCOL_3_0)
    for key, value in (("user", user), ("database", database), ("application_name", "idle_clients")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '?????')}: {fields.get('M', '')}"


async def login(host, port, packet, timeout):
    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(packet)
            await writer.drain()
            while True:
                header = await reader.readexactly(5)
                kind = header[:1]
                length = struct.unpack("!i", header[1:])[0]
                if length < 4 or length > 1 << 20:
                    raise LoginError(f"bad message length {length} for type {kind!r}")
                body = await reader.readexactly(length - 4)
                if kind == b"R":
                    code = struct.unpack("!i", body[:4])[0]
                    if code != 0:
                        raise LoginError(f"server asks for authentication method {code}; only trust is supported")
                elif kind == b"E":
                    raise LoginError(error_text(body))
                elif kind == b"Z":
                    return reader, writer
                # 'S' ParameterStatus, 'K' BackendKeyData, 'N' notice, 'v' negotiate: ignored
        except BaseException:
            writer.close()
            raise

    return await asyncio.wait_for(go(), timeout)


async def watch(reader):
    """Reads (and drops) whatever the server sends until it closes the connection."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass


QUERY_SELECT_1 = b"Q\x00\x00\x00\x0dSELECT 1\x00"
STATS = {"queries": 0, "query_failures": 0}


async def chatter(reader, writer, every):
    """--query-every: sends `SELECT 1` every `every` seconds (the first after a random part of
    it, so the clients spread out) and reads to its ReadyForQuery; returns when the connection
    closes. A query without its answer within 30 s counts as failed and ends the connection."""
    await asyncio.sleep(random.uniform(0, every))
    try:
        while True:
            writer.write(QUERY_SELECT_1)
            await writer.drain()

            async def answer():
                while True:
                    header = await reader.readexactly(5)
                    length = struct.unpack("!i", header[1:])[0]
                    body = await reader.readexactly(length - 4)
                    if header[:1] == b"E":
                        raise LoginError(error_text(body))
                    if header[:1] == b"Z":
                        return

            await asyncio.wait_for(answer(), 30)
            STATS["queries"] += 1
            await asyncio.sleep(every)
    except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, LoginError):
        STATS["query_failures"] += 1


def start_stdin_thread(loop, queue):
    def pump():
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(queue.put_nowait, None)  # EOF

    threading.Thread(target=pump, name="stdin", daemon=True).start()


async def main(args):
    loop = asyncio.get_running_loop()
    packet = startup_packet(args.user, args.database)
    sem = asyncio.Semaphore(args.concurrency)
    conns = []
    failures = {}
    started = time.monotonic()

    async def one():
        async with sem:
            try:
                conns.append(await login(args.host, args.port, packet, args.connect_timeout))
            except asyncio.TimeoutError:
                failures["login timed out"] = failures.get("login timed out", 0) + 1
            except (OSError, LoginError, asyncio.IncompleteReadError) as e:
                key = f"{type(e).__name__}: {e}"
                failures[key] = failures.get(key, 0) + 1
            done = len(conns) + sum(failures.values())
            if args.progress and done % args.progress == 0:
                print(f"idle_clients: {done}/{args.count} attempts, {len(conns)} up", file=sys.stderr, flush=True)

    per_batch = -(-args.count // args.batches)
    for b in range(args.batches):
        if b:
            await asyncio.sleep(args.batch_gap)
        n = min(per_batch, args.count - b * per_batch)
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        _, pending = await asyncio.wait(tasks, timeout=args.overall_timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            failures["overall timeout"] = failures.get("overall timeout", 0) + len(pending)
    nfailed = sum(failures.values())
    for text, n in sorted(failures.items(), key=lambda kv: -kv[1])[:5]:
        print(f"idle_clients: {n} failed: {text}", file=sys.stderr, flush=True)
    print(f"READY up={len(conns)} failed={nfailed} seconds={time.monotonic() - started:.1f}", flush=True)

    if args.query_every:
        watchers = [asyncio.create_task(chatter(r, w, args.query_every)) for r, w in conns]
    else:
        watchers = [asyncio.create_task(watch(r)) for r, _ in conns]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    lines = asyncio.Queue()
    if args.hold is None:
        start_stdin_thread(loop, lines)
        hold_until = time.monotonic() + args.max_hold
    else:
        hold_until = time.monotonic() + args.hold

    stop_wait = asyncio.create_task(stop.wait())
    while not stop.is_set():
        remaining = hold_until - time.monotonic()
        if remaining <= 0:
            break
        line_wait = asyncio.create_task(lines.get())
        done, _ = await asyncio.wait({line_wait, stop_wait}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if line_wait not in done:
            line_wait.cancel()
            continue
        line = line_wait.result()
        if line is None:
            break
        if line == "status":
            alive = sum(1 for w in watchers if not w.done())
            print(f"ALIVE {alive} queries={STATS['queries']} failed={STATS['query_failures']}", flush=True)
    stop_wait.cancel()

    alive = sum(1 for w in watchers if not w.done())
    if args.query_every:
        # The hold is over: queries stop before the connections close (a query cut off by our
        # own close is not a failure).
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    for _, writer in conns:
        try:
            writer.write(TERMINATE)
            writer.close()
        except (OSError, RuntimeError):
            pass
    if watchers:
        await asyncio.wait(watchers, timeout=5)
    print(f"DONE alive={alive} closed_by_server={len(conns) - alive} queries={STATS['queries']} "
          f"query_failures={STATS['query_failures']}", flush=True)
    return 0 if len(conns) == args.count else 2


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="postgres")
    p.add_argument("--database", default="postgres")
    p.add_argument("--count", "-n", type=int, default=10000, help="connections to open (default 10000)")
    p.add_argument("--concurrency", type=int, default=200, help="logins in flight at once (default 200)")
    p.add_argument("--batches", type=int, default=1,
                   help="log in in this many batches, each after the previous one is up (default 1)")
    p.add_argument("--batch-gap", type=float, default=3,
                   help="seconds between batches (default 3)")
    p.add_argument("--connect-timeout", type=float, default=30, help="seconds per connect+login (default 30)")
    p.add_argument("--overall-timeout", type=float, default=None,
                   help="seconds for all logins (default 60 + count/50)")
    p.add_argument("--hold", type=float, default=None, help="hold exactly this many seconds, ignoring stdin")
    p.add_argument("--max-hold", type=float, default=3600, help="longest hold waiting for stdin EOF (default 3600)")
    p.add_argument("--query-every", type=float, default=0,
                   help="while holding, each connection runs SELECT 1 every this many seconds (0: stays idle)")
    p.add_argument("--progress", type=int, default=0, help="print progress to stderr every N attempts")
    args = p.parse_args()
    if args.overall_timeout is None:
        args.overall_timeout = 60 + args.count / 50
    return args


if __name__ == "__main__":
    a = parse_args()
    limit = raise_nofile(a.count + 256)
    if limit < a.count + 16:
        print(f"idle_clients: fd limit {limit} is too low for {a.count} connections", file=sys.stderr)
    sys.exit(asyncio.run(main(a)))
