// Neon's serverless driver, unchanged, against ringgate's POST /sql.
// Started by tests/tests/neon.rs with RINGGATE_SQL_ENDPOINT and RINGGATE_NEON_URL set.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { neon, neonConfig } from '@neondatabase/serverless';

const endpoint = process.env.RINGGATE_SQL_ENDPOINT;
const url = process.env.RINGGATE_NEON_URL;
if (!endpoint || !url) {
  throw new Error('RINGGATE_SQL_ENDPOINT and RINGGATE_NEON_URL must be set (run through tests/tests/neon.rs)');
}
neonConfig.fetchEndpoint = () => endpoint;
const sql = neon(url);

test('parameters and NULLs', async () => {
  const rows = await sql`select ${41}::int + 1 as n, ${null}::text as z, ${"it's"}::text as t`;
  assert.deepEqual(rows, [{ n: 42, z: null, t: "it's" }]);
});

test('numeric, json, jsonb, arrays, bytea, timestamps, int8, booleans, floats', async () => {
  const [r] = await sql`select 1.50::numeric as price, -0.000001::numeric as tiny,
    '{"a":[1,2]}'::jsonb as j, '{"b":true}'::json as k,
    array[1,2,null]::int[] as a, array['x y','q"', '', 'NULL']::text[] as s, array[[1,2],[3,4]] as m,
    '\\x0102ff'::bytea as b, ''::bytea as empty,
    '2024-01-02 03:04:05.123+00'::timestamptz as ts, '2024-01-02'::date as d, '1999-12-31 23:59:59'::timestamp as lts,
    9007199254740993::int8 as big, true as yes, false as no, 1.5::float8 as f, 'NaN'::float8 as nan,
    '1 day 02:03:04'::interval as iv, 'b4f1e2c0-0d6f-4a3c-9b7e-1c2d3e4f5a6b'::uuid as id`;
  assert.equal(r.price, '1.50');
  assert.equal(r.tiny, '-0.000001');
  assert.deepEqual(r.j, { a: [1, 2] });
  assert.deepEqual(r.k, { b: true });
  assert.deepEqual(r.a, [1, 2, null]);
  assert.deepEqual(r.s, ['x y', 'q"', '', 'NULL']);
  assert.deepEqual(r.m, [[1, 2], [3, 4]]);
  assert.deepEqual(r.b, Buffer.from([1, 2, 255]));
  assert.deepEqual(r.empty, Buffer.alloc(0));
  assert.equal(r.ts.toISOString(), '2024-01-02T03:04:05.123Z');
  assert.equal(r.d.toISOString(), '2024-01-02T00:00:00.000Z');
  assert.equal(r.lts.toISOString(), '1999-12-31T23:59:59.000Z');
  assert.equal(r.big, '9007199254740993');
  assert.equal(r.yes, true);
  assert.equal(r.no, false);
  assert.equal(r.f, 1.5);
  assert.ok(Number.isNaN(r.nan));
  assert.deepEqual({ ...r.iv }, { days: 1, hours: 2, minutes: 3, seconds: 4 });
  assert.equal(r.id, 'b4f1e2c0-0d6f-4a3c-9b7e-1c2d3e4f5a6b');
});

test('the tenant database: demo rows', async () => {
  const rows = await sql`select id, name, price, tags, meta from items where id <= ${3} order by id`;
  assert.equal(rows.length, 3);
  assert.equal(typeof rows[0].name, 'string');
  assert.ok(Array.isArray(rows[0].tags));
  assert.equal(typeof rows[0].meta, 'object');
});

test('errors carry SQLSTATE and position', async () => {
  await assert.rejects(sql`select * from no_such_table_xyz`, (e) => {
    assert.equal(e.code, '42P01');
    assert.equal(e.position, '15');
    assert.match(e.message, /no_such_table_xyz/);
    return true;
  });
});

test('a batch runs in one transaction', async () => {
  const name = `neon-${process.pid}-${Date.now()}`;
  const [inserted, counted] = await sql.transaction([
    sql`insert into items (name, price) values (${name}, ${9.99}) returning name`,
    sql`select count(*)::int as c from items where name = ${name}`,
  ]);
  assert.deepEqual(inserted, [{ name }]);
  assert.deepEqual(counted, [{ c: 1 }]);
  await assert.rejects(
    sql.transaction([
      sql`insert into items (name) values (${name + '-rolled-back'})`,
      sql`select 1/0`,
    ]),
    (e) => e.code === '22012',
  );
  const [{ c }] = await sql`select count(*)::int as c from items where name = ${name + '-rolled-back'}`;
  assert.equal(c, 0);
  await sql`delete from items where name = ${name}`;
});

test('sql.query with full results and array mode', async () => {
  const r = await sql.query('select $1::text as v, $2::int as w', ['hi', 7], { fullResults: true, arrayMode: true });
  assert.equal(r.command, 'SELECT');
  assert.equal(r.rowCount, 1);
  assert.deepEqual(r.rows, [['hi', 7]]);
  assert.deepEqual(r.fields.map((f) => f.name), ['v', 'w']);
});

test('types the binary path could not render come back as the server writes them', async () => {
  const [r] = await sql`select 12.5::money as cash, 'pg_class'::regclass as rel, 'int4'::regtype as typ,
    'a fat cat'::tsvector as doc, 'fat & rat'::tsquery as q, '0/16B6C50'::pg_lsn as lsn,
    array['1.50'::money, null] as cashes, '[0:1]={x,y}'::text[] as shifted`;
  assert.equal(r.cash, '$12.50');
  assert.equal(r.rel, 'pg_class');
  assert.equal(r.typ, 'integer');
  assert.equal(r.doc, "'a' 'cat' 'fat'");
  assert.equal(r.q, "'fat' & 'rat'");
  assert.equal(r.lsn, '0/16B6C50');
  // The driver parses arrays it knows (money[], text[]) from the server's text.
  assert.deepEqual(r.cashes, ['$1.50', null]);
  assert.deepEqual(r.shifted, ['x', 'y']);
});

test('command tags and counts are the server\'s, field metadata from its row description', async () => {
  const name = `neon-with-${process.pid}-${Date.now()}`;
  const r = await sql.query(
    'with v as (select $1::text as n) insert into items (name, price) select n, 1 from v returning name',
    [name],
    { fullResults: true },
  );
  assert.equal(r.command, 'INSERT');
  assert.equal(r.rowCount, 1);
  assert.deepEqual(r.rows, [{ name }]);
  const [{ t }] = await sql`select 'items'::regclass::oid::int as t`;
  const s = await sql.query('select id, name from items where name = $1', [name], { fullResults: true });
  assert.equal(s.fields[1].tableID, t);
  assert.equal(s.fields[1].columnID, 2);
  assert.equal(s.fields[0].dataTypeID, 23);
  const d = await sql.query('delete from items where name = $1', [name], { fullResults: true });
  assert.equal(d.command, 'DELETE');
  assert.equal(d.rowCount, 1);
});
