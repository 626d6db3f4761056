// Neon's serverless driver, unchanged, over WebSocket (`GET /v2`) against ringgate's
// PostgreSQL listener: Pool and Client, interactive transactions committed and rolled back.
// Started by tests/tests/pg_transport.rs with RINGGATE_PG_PORT, RINGGATE_NEON_PG_URL,
// RINGGATE_NEON_PG_SESSION_URL (a session-mode project) and NODE_EXTRA_CA_CERTS (the test
// CA, for wss://) set.
//
// ws:// carries no cleartext password: the driver runs SCRAM (`pipelineConnect: false`).
// wss:// takes the driver's default, the password pipelined with the startup message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, Pool, neonConfig } from '@neondatabase/serverless';
import ws from 'ws';

const port = process.env.RINGGATE_PG_PORT;
const url = process.env.RINGGATE_NEON_PG_URL;
const sessionUrl = process.env.RINGGATE_NEON_PG_SESSION_URL;
if (!port || !url || !sessionUrl) {
  throw new Error('RINGGATE_PG_PORT, RINGGATE_NEON_PG_URL and RINGGATE_NEON_PG_SESSION_URL must be set (run through tests/tests/pg_transport.rs)');
}
// ws:// and wss:// go to the PostgreSQL port, or (when given) to the HTTP and HTTPS
// listeners, which serve the same `GET /v2`.
const wsPort = process.env.RINGGATE_WS_PORT ?? port;
const wssPort = process.env.RINGGATE_WSS_PORT ?? port;
let current = port;
// Node 20 has no global WebSocket.
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = () => `localhost:${current}/v2`;

const transports = [
  { name: 'ws:// with SCRAM', secure: false, pipeline: false },
  { name: 'wss:// with the pipelined password', secure: true, pipeline: 'password' },
];

for (const t of transports) {
  const table = `ws_driver_${process.pid}_${t.secure ? 'wss' : 'ws'}`;
  const use = () => {
    current = t.secure ? wssPort : wsPort;
    neonConfig.useSecureWebSocket = t.secure;
    neonConfig.pipelineConnect = t.pipeline;
  };

  test(`${t.name}: Client, a transaction committed and one rolled back`, async () => {
    use();
    const client = new Client(url);
    await client.connect();
    try {
      await client.query(`create table ${table} (id int primary key, v text)`);
      await client.query('BEGIN');
      await client.query(`insert into ${table} values ($1, $2)`, [1, 'kept']);
      const { rows } = await client.query(`select v from ${table} where id = $1`, [1]);
      assert.deepEqual(rows, [{ v: 'kept' }]);
      await client.query('COMMIT');
      await client.query('BEGIN');
      await client.query(`insert into ${table} values (2, 'dropped')`);
      const inside = await client.query(`select count(*)::int as n from ${table}`);
      assert.equal(inside.rows[0].n, 2);
      await client.query('ROLLBACK');
      const after = await client.query(`select id, v from ${table} order by id`);
      assert.deepEqual(after.rows, [{ id: 1, v: 'kept' }]);
    } finally {
      await client.query(`drop table if exists ${table}`);
      await client.end();
    }
  });

  test(`${t.name}: Pool, queries and a rolled-back transaction`, async () => {
    use();
    const pool = new Pool({ connectionString: url, max: 3 });
    try {
      const ns = await Promise.all([1, 2, 3, 4].map((i) => pool.query('select $1::int * 2 as n', [i])));
      assert.deepEqual(ns.map((r) => r.rows[0].n), [2, 4, 6, 8]);
      const c = await pool.connect();
      try {
        await c.query('BEGIN');
        await c.query(`create table ${table}_p (id int)`);
        await c.query(`insert into ${table}_p values (1)`);
        const { rows } = await c.query(`select count(*)::int as n from ${table}_p`);
        assert.equal(rows[0].n, 1);
        await c.query('ROLLBACK');
        await assert.rejects(c.query(`select * from ${table}_p`), (e) => e.code === '42P01');
      } finally {
        c.release();
      }
    } finally {
      await pool.end();
    }
  });

  test(`${t.name}: session mode, notifications reach a client that sends nothing`, async () => {
    use();
    // Per process: two tests run this script at once against the same database.
    const channel = `ws_driver_${process.pid}_${t.secure ? 'wss' : 'ws'}`;
    const listener = new Client(sessionUrl);
    const notifier = new Client(url);
    await Promise.all([listener.connect(), notifier.connect()]);
    try {
      await listener.query(`LISTEN ${channel}`);
      for (const payload of ['first', 'second']) {
        const arrived = new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no notification within 5 s')), 5000);
          listener.once('notification', (n) => {
            clearTimeout(timer);
            resolve(n);
          });
        });
        await notifier.query('select pg_notify($1, $2)', [channel, payload]);
        const n = await arrived;
        assert.deepEqual([n.channel, n.payload], [channel, payload]);
      }
      const { rows } = await listener.query('select $1::int + 1 as n', [41]);
      assert.deepEqual(rows, [{ n: 42 }]);
    } finally {
      await Promise.all([listener.end(), notifier.end()]);
    }
  });
}
