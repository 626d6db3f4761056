// Neon's serverless driver against a local ringgate (scripts/run): node examples/node/neon.mjs
import { neon, neonConfig } from '@neondatabase/serverless';

neonConfig.fetchEndpoint = `${process.env.RINGGATE_URL ?? 'http://127.0.0.1:8080'}/sql`;
// Project alpha: the host's first label (ringgate never resolves the host).
const sql = neon(process.env.RINGGATE_CONNECTION_STRING
  ?? 'postgresql://alpha_owner:alpha-secret@alpha.localtest.me/tenant_alpha');

const rows = await sql`select id, name, price from items where id <= ${3} order by id`;
console.log(rows);
