// node-postgres (`pg`), unchanged, over TCP against ringgate's PostgreSQL listener: plain
// TCP with SCRAM-SHA-256, and TLS (SSLRequest) with SCRAM-SHA-256-PLUS. Started by
// tests/tests/pg_transport.rs with RINGGATE_NODE_PG_URL (a transaction-mode project whose
// pool has RINGGATE_NODE_PG_SERVERS server connections), RINGGATE_NODE_PG_SESSION_URL (a
// session-mode project) and NODE_EXTRA_CA_CERTS (the test CA) set.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';

const url = process.env.RINGGATE_NODE_PG_URL;
const servers = Number(process.env.RINGGATE_NODE_PG_SERVERS);
const sessionUrl = process.env.RINGGATE_NODE_PG_SESSION_URL;
if (!url || !servers || !sessionUrl) {
  throw new Error('RINGGATE_NODE_PG_URL, RINGGATE_NODE_PG_SERVERS and RINGGATE_NODE_PG_SESSION_URL must be set (run through tests/tests/pg_transport.rs)');
}

const transports = [
  { name: 'TCP with SCRAM-SHA-256', config: {} },
  { name: 'TLS with SCRAM-SHA-256-PLUS', config: { ssl: true, enableChannelBinding: true } },
];

const connect = async (config, extra = {}) => {
  const client = new pg.Client({ connectionString: url, ...config, ...extra });
  await client.connect();
  return client;
};

// The next `event` the client emits, within `ms` (rejects after).
const next = (client, event, ms = 5000) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
  client.once(event, (m) => {
    clearTimeout(timer);
    resolve(m);
  });
});

for (const t of transports) {
  const table = `node_pg_${process.pid}_${t.config.ssl ? 'tls' : 'tcp'}`;

  test(`${t.name}: bound parameters of several types come back as sent`, async () => {
    const client = await connect(t.config);
    try {
      const when = new Date('2024-02-29T23:59:58.123Z');
      const bytes = Buffer.from([0, 1, 2, 254, 255]);
      const { rows } = await client.query(
        `select $1::int as i, $2::text as t, $3::text as nothing, $4::timestamptz as ts,
                $5::json as j, $6::bytea as b, $7::numeric as num, $8::int[] as ints,
                $9::text[] as texts, $10::bigint as big, $11::bool as yes`,
        [
          42, 'héllo, wörld', null, when, JSON.stringify({ a: [1, 'two', null] }), bytes,
          '12345678901234567890.000000001', [1, 2, 3], ['a', null, 'c,d"e'], '9007199254740993', true,
        ],
      );
      assert.equal(rows.length, 1);
      const r = rows[0];
      assert.equal(r.i, 42);
      assert.equal(r.t, 'héllo, wörld');
      assert.equal(r.nothing, null);
      assert.equal(r.ts.getTime(), when.getTime());
      assert.deepEqual(r.j, { a: [1, 'two', null] });
      assert.deepEqual(r.b, bytes);
      // numeric and bigint come back as text: exact.
      assert.equal(r.num, '12345678901234567890.000000001');
      assert.deepEqual(r.ints, [1, 2, 3]);
      assert.deepEqual(r.texts, ['a', null, 'c,d"e']);
      assert.equal(r.big, '9007199254740993');
      assert.equal(r.yes, true);
      // The server got the values as sent, not only the driver's round trip.
      const seen = await client.query(
        'select $1::bytea = $2::bytea as same, $3::timestamptz = $4::timestamptz as at',
        [bytes, '\\x000102feff', when, '2024-02-29 23:59:58.123+00'],
      );
      assert.deepEqual(seen.rows, [{ same: true, at: true }]);
    } finally {
      await client.end();
    }
  });

  test(`${t.name}: a committed transaction's rows stay, a rolled-back one's do not`, async () => {
    const client = await connect(t.config);
    const other = await connect(t.config);
    try {
      await client.query(`create table ${table} (id int primary key, v text)`);
      await client.query('BEGIN');
      await client.query(`insert into ${table} values ($1, $2), ($3, $4)`, [1, 'one', 2, 'two']);
      await client.query('COMMIT');
      await client.query('BEGIN');
      await client.query(`insert into ${table} values ($1, $2)`, [3, 'three']);
      const inside = await client.query(`select count(*)::int as n from ${table}`);
      assert.equal(inside.rows[0].n, 3);
      await client.query('ROLLBACK');
      // Seen from another client (another server session) too.
      for (const c of [client, other]) {
        const { rows } = await c.query(`select id, v from ${table} order by id`);
        assert.deepEqual(rows, [{ id: 1, v: 'one' }, { id: 2, v: 'two' }]);
      }
    } finally {
      await client.query(`drop table if exists ${table}`);
      await Promise.all([client.end(), other.end()]);
    }
  });

  test(`${t.name}: named prepared statements reused across transactions by clients sharing server connections`, async () => {
    // More clients than server connections; each names a statement `same` with a text
    // of its own, so that clients sharing a server connection would collide without
    // ringgate's per-client names.
    const clients = await Promise.all(Array.from({ length: servers * 3 }, () => connect(t.config)));
    const pids = new Set();
    try {
      await Promise.all(clients.map(async (c, k) => {
        const text = `select $1::int * ${k + 2} as v, pg_backend_pid() as pid, ${k} as k`;
        for (let i = 0; i < 8; i++) {
          await c.query('BEGIN');
          const { rows } = await c.query({ name: 'same', text, values: [i] });
          assert.deepEqual([rows[0].v, rows[0].k], [i * (k + 2), k]);
          pids.add(rows[0].pid);
          // Inside the transaction, twice: the same server connection runs both.
          const again = await c.query({ name: 'same', text, values: [i + 1] });
          assert.equal(again.rows[0].v, (i + 1) * (k + 2));
          assert.equal(again.rows[0].pid, rows[0].pid);
          await c.query('COMMIT');
        }
      }));
      assert.ok(pids.size >= 1 && pids.size <= servers,
        `${clients.length} clients on ${pids.size} server connections (at most ${servers})`);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });

  test(`${t.name}: Pool with named statements and transactions`, async () => {
    const pool = new pg.Pool({ connectionString: url, ...t.config, max: 4 });
    try {
      const sums = await Promise.all(Array.from({ length: 20 }, (_, i) =>
        pool.query({ name: 'sum', text: 'select $1::int + $2::int as s', values: [i, 100] })));
      assert.deepEqual(sums.map((r) => r.rows[0].s), Array.from({ length: 20 }, (_, i) => i + 100));
      const c = await pool.connect();
      try {
        await c.query('BEGIN');
        const { rows } = await c.query({ name: 'sum', text: 'select $1::int + $2::int as s', values: [1, 2] });
        assert.equal(rows[0].s, 3);
        await c.query('COMMIT');
      } finally {
        c.release();
      }
    } finally {
      await pool.end();
    }
  });

  test(`${t.name}: an error inside a transaction, ROLLBACK, and the client goes on`, async () => {
    const client = await connect(t.config);
    try {
      await client.query('BEGIN');
      await assert.rejects(client.query('select 1 / $1::int', [0]), (e) => e.code === '22012');
      await assert.rejects(client.query('select 1'), (e) => e.code === '25P02');
      await client.query('ROLLBACK');
      const { rows } = await client.query('select $1::text as ok', ['after']);
      assert.deepEqual(rows, [{ ok: 'after' }]);
      // A named statement whose Parse failed is not taken for prepared afterwards.
      await assert.rejects(client.query({ name: 'bad', text: 'select nope', values: [] }), (e) => e.code === '42703');
      const named = await client.query({ name: 'good', text: 'select $1::int as n', values: [7] });
      assert.equal(named.rows[0].n, 7);
    } finally {
      await client.end();
    }
  });

  test(`${t.name}: session mode, notifications reach a client that sends nothing`, async () => {
    // Per process: another run of this script may share the database.
    const channel = `node_pg_${process.pid}_${t.config.ssl ? 'tls' : 'tcp'}`;
    const listener = await connect(t.config, { connectionString: sessionUrl });
    const notifier = await connect(t.config);
    try {
      await listener.query(`LISTEN ${channel}`);
      const { rows: [{ pid }] } = await listener.query('select pg_backend_pid() as pid');
      for (const payload of ['first', 'second']) {
        const arrived = next(listener, 'notification');
        await notifier.query('select pg_notify($1, $2)', [channel, payload]);
        const n = await arrived;
        assert.deepEqual([n.channel, n.payload], [channel, payload]);
      }
      // The session goes on, on its own server connection.
      const again = await listener.query('select pg_backend_pid() as pid, $1::int + 1 as n', [41]);
      assert.deepEqual(again.rows, [{ pid, n: 42 }]);
    } finally {
      await Promise.all([listener.end(), notifier.end()]);
    }
  });

  test(`${t.name}: a wrong password is refused with 28P01`, async () => {
    // The connection string's password wins over a `password` option: changed in it.
    const wrong = new URL(url);
    wrong.password = 'not-the-password';
    const client = new pg.Client({ connectionString: wrong.href, ...t.config });
    try {
      await assert.rejects(client.connect(), (e) => e.code === '28P01');
    } finally {
      await client.end().catch(() => {});
    }
  });
}
