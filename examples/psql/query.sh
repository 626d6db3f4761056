#!/usr/bin/env bash
# psql through ringgate's PostgreSQL listener (scripts/run opens it on 127.0.0.1:6432):
#   examples/psql/query.sh
# The project is named by `options=endpoint=alpha` (psql connects to an IP address, so there
# is no TLS server name to read it from); the password is checked with SCRAM against the
# role's verifier, and ringgate never holds it. Statements run on the project's pooled
# server connections: one is held from BEGIN until COMMIT or ROLLBACK.
set -euo pipefail
url="${RINGGATE_PG_URL:-postgresql://alpha_owner:alpha-secret@127.0.0.1:6432/tenant_alpha?options=endpoint%3Dalpha}"
psql -X -q -v ON_ERROR_STOP=1 "$url" <<'SQL'
select id, name, price from items where id <= 3 order by id;
begin;
insert into items (name, price) values ('psql example', 9.99) returning name, price;
rollback;
select count(*) as left_after_rollback from items where name = 'psql example';
SQL
