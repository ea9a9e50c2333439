// The driver matrix with node-postgres (`pg`), see ../README.md.
'use strict';

const { Client, Pool } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline: streamPipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');

const env = process.env;
const SESSION = env.SY_MODE === 'session';
const TABLE = env.SY_TABLE;
// In transaction mode a notification comes through the listener's hub: its sender pid is the
// pooled server process the NOTIFY ran on, not the process id of the sender's key.
const TRANSACTION_NOTIFY =
  "delivered through the hub (transaction mode: the sender pid is its server's)";

class Skip extends Error {}

function config(user, password) {
  return {
    host: env.SY_HOST,
    port: Number(env.SY_PORT),
    database: env.SY_DB,
    user: user || env.SY_USER,
    password: password === undefined ? env.SY_PASSWORD : password,
    connectionTimeoutMillis: 10000,
  };
}

async function connect(user, password) {
  const c = new Client(config(user, password));
  // A backend that ends while idle is reported here; the next query fails instead of the
  // process crashing.
  c.on('error', () => {});
  await c.connect();
  return c;
}

function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${what}`);
}

async function withClient(fn) {
  const c = await connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

const scenarios = {
  async connect_scram() {
    return withClient(async (c) => {
      const { rows } = await c.query('SELECT current_user AS u');
      expect(rows[0].u === env.SY_USER, rows[0].u);
      return `as ${rows[0].u}`;
    });
  },
  async simple_query() {
    // A query without values goes as one simple Query message.
    return withClient(async (c) => {
      const r = await c.query('SELECT 1 AS a; SELECT 2 AS b');
      expect(Array.isArray(r) && r[1].rows[0].b === 2, JSON.stringify(r.map((x) => x.rows)));
    });
  },
  async extended_query() {
    return withClient(async (c) => {
      const { rows } = await c.query('SELECT $1::int + 1 AS v', [41]);
      expect(rows[0].v === 42, rows[0].v);
    });
  },
  async prepared_reuse() {
    return withClient(async (c) => {
      for (let i = 0; i < 3; i++) {
        await c.query('BEGIN');
        const { rows } = await c.query({ name: 'double', text: 'SELECT $1::int * 2 AS v', values: [i] });
        expect(rows[0].v === i * 2, rows[0].v);
        await c.query('COMMIT');
      }
      return 'named statement, 3 transactions';
    });
  },
  async pipeline() {
    throw new Skip('node-postgres sends one query at a time (no pipelining)');
  },
  async copy() {
    return withClient(async (c) => {
      await c.query(`DROP TABLE IF EXISTS ${TABLE}; CREATE TABLE ${TABLE} (id int, name text)`);
      const lines = [];
      for (let i = 0; i < 1000; i++) lines.push(`${i}\trow ${i}\n`);
      await streamPipeline(Readable.from(lines), c.query(copyFrom(`COPY ${TABLE} FROM STDIN`)));
      let text = '';
      await streamPipeline(
        c.query(copyTo(`COPY ${TABLE} TO STDOUT`)),
        new Writable({ write(chunk, _e, done) { text += chunk; done(); } }),
      );
      const got = text.trim().split('\n');
      expect(got.length === 1000 && got[999] === '999\trow 999', `${got.length} rows`);
      await c.query(`DROP TABLE ${TABLE}`);
      return '1000 rows in and out (pg-copy-streams)';
    });
  },
  async cancel() {
    return withClient(async (c) => {
      const started = Date.now();
      const running = c.query('SELECT pg_sleep(20)');
      await new Promise((r) => setTimeout(r, 500));
      // pg's own CancelRequest: a second Client sends the first one's key.
      new Client(config()).cancel(c, c.activeQuery);
      let code = 'not cancelled';
      try {
        await running;
      } catch (e) {
        code = e.code;
      }
      const took = (Date.now() - started) / 1000;
      expect(code === '57014', `error ${code}`);
      expect(took < 10, `took ${took}s`);
      const { rows } = await c.query("SELECT 'after' AS a");
      expect(rows[0].a === 'after', 'usable after');
      return `cancelled after ${took.toFixed(2)}s`;
    });
  },
  async listen_notify() {
    const listener = await connect();
    const sender = await connect();
    try {
      const got = new Promise((resolve, reject) => {
        listener.on('notification', resolve);
        setTimeout(() => reject(new Error('no notification within 10 s')), 10000).unref();
      });
      await listener.query('LISTEN matrix');
      await sender.query("NOTIFY matrix, 'hello'");
      const n = await got;
      expect(n.payload === 'hello', n.payload);
      if (!SESSION) return TRANSACTION_NOTIFY;
      expect(n.processId === sender.processID,
        `sender pid ${n.processId}, its key says ${sender.processID}`);
      return 'delivered; sender pid matches its key';
    } finally {
      await listener.end().catch(() => {});
      await sender.end().catch(() => {});
    }
  },
  async terminated_backend() {
    const c = await connect();
    const admin = await connect(env.SY_ADMIN_USER, '');
    try {
      const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      const { rows } = await admin.query('SELECT pg_terminate_backend($1, 5000) AS t', [pid]);
      // (Transaction mode: another client may have ended that server process already.)
      expect(rows[0].t === true || !SESSION, 'terminated');
      if (SESSION) {
        let state = 'still ran';
        try {
          await c.query('SELECT 1');
        } catch (e) {
          state = e.code || e.message;
        }
        expect(state !== 'still ran', 'the next query still ran');
        await withClient(async (again) => {
          expect((await again.query('SELECT 1 AS one')).rows[0].one === 1, 'new connection');
        });
        return `next query: ${state}; a new connection works`;
      }
      expect((await c.query('SELECT 1 AS one')).rows[0].one === 1, 'next query');
      return 'next query works';
    } finally {
      await c.end().catch(() => {});
      await admin.end().catch(() => {});
    }
  },
  async client_encoding() {
    return withClient(async (c) => {
      await c.query("SET client_encoding = 'utf-8'");
      const shown = (await c.query('SHOW client_encoding')).rows[0].client_encoding;
      expect(shown === 'UTF8', `SHOW ${shown}`);
      return 'SHOW: UTF8';
    });
  },
  async pool_health() {
    const pool = new Pool({ ...config(), max: 1 });
    pool.on('error', () => {});
    try {
      const c = await pool.connect();
      let err;
      try {
        await c.query('SELECT pg_terminate_backend(pg_backend_pid())');
      } catch (e) {
        err = e;
      }
      // pg's pattern: a client released with an error is discarded, not reused.
      c.release(err || true);
      const again = await pool.connect();
      try {
        const { rows } = await again.query("SELECT 'healthy' AS h");
        expect(rows[0].h === 'healthy', rows[0].h);
      } finally {
        again.release();
      }
      return 'pg.Pool replaced it';
    } finally {
      await pool.end();
    }
  },
};

// The failover scenario: one connection writing every 50 ms for SY_SECONDS, reconnecting after
// an error that ended it; reports each error's SQLSTATE (or its name), the longest statement
// and the writes after the last error.
async function failover() {
  const deadline = Date.now() + Number(env.SY_SECONDS || 14) * 1000;
  const log = { ok: true, errors: [], longest: 0, total: 0, after_last_error: 0 };
  let c = null;
  while (Date.now() < deadline) {
    const started = Date.now();
    try {
      if (!c) c = await connect();
      await c.query(`INSERT INTO ${TABLE} (driver) VALUES ('node')`);
      log.total += 1;
      log.after_last_error += 1;
    } catch (e) {
      log.errors.push(e.code || e.name || 'Error');
      log.after_last_error = 0;
      if (c) c.end().catch(() => {});
      c = null;
    }
    log.longest = Math.max(log.longest, (Date.now() - started) / 1000);
    // Pacing of the workload, not a synchronisation.
    await new Promise((r) => setTimeout(r, 50));
  }
  if (c) await c.end().catch(() => {});
  process.stdout.write(JSON.stringify({ failover: log }) + '\n');
  process.exit(0);
}

async function main() {
  if (env.SY_SCENARIO === 'failover') return failover();
  const out = {};
  for (const [name, fn] of Object.entries(scenarios)) {
    const started = Date.now();
    try {
      let timer;
      const limit = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('scenario took more than 40 s')), 40000);
      });
      const detail = await Promise.race([fn(), limit]).finally(() => clearTimeout(timer));
      out[name] = { ok: true, detail: String(detail || '') };
    } catch (e) {
      out[name] = e instanceof Skip ? { skip: e.message } : { ok: false, detail: String(e.stack || e) };
    }
    out[name].seconds = (Date.now() - started) / 1000;
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
}

main();
