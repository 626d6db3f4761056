// drizzle-orm on Neon's serverless driver against a local ringgate (scripts/run):
// node examples/node/drizzle.mjs
import { neon, neonConfig } from '@neondatabase/serverless';
import { drizzle } from 'drizzle-orm/neon-http';
import { asc, count, eq, lte } from 'drizzle-orm';
import { jsonb, numeric, pgTable, serial, text } from 'drizzle-orm/pg-core';

neonConfig.fetchEndpoint = `${process.env.RINGGATE_URL ?? 'http://127.0.0.1:8080'}/sql`;
// Project alpha: the host's first label (ringgate never resolves the host).
const db = drizzle({
  client: neon(process.env.RINGGATE_CONNECTION_STRING
    ?? 'postgresql://alpha_owner:alpha-secret@alpha.localtest.me/tenant_alpha'),
});

// The demo table every project of compose/cluster has.
const items = pgTable('items', {
  id: serial('id').primaryKey(),
  name: text('name').notNull(),
  price: numeric('price', { precision: 10, scale: 2 }),
  tags: text('tags').array(),
  meta: jsonb('meta'),
});

// A read: a single plain SELECT, which ringgate may send to a replica.
const first = await db
  .select({ id: items.id, name: items.name, price: items.price, tags: items.tags })
  .from(items)
  .where(lte(items.id, 3))
  .orderBy(asc(items.id));
console.log('first items:', first);

// A batch: one POST /sql, run by ringgate in one transaction on the leader.
const name = `drizzle example ${process.pid}`;
const [inserted, counted] = await db.batch([
  db.insert(items).values({ name, price: '9.99', tags: ['example'], meta: { by: 'drizzle' } })
    .returning({ id: items.id, name: items.name, meta: items.meta }),
  db.select({ n: count() }).from(items).where(eq(items.name, name)),
]);
console.log('inserted:', inserted[0].name, inserted[0].meta, 'count:', counted[0].n);

const deleted = await db.delete(items).where(eq(items.id, inserted[0].id)).returning({ id: items.id });
console.log('deleted:', deleted.length);
