"""psycopg2 through ringgate's PostgreSQL listener (scripts/run opens it on 127.0.0.1:6432):
python3 examples/python/wire.py   (Debian: python3-psycopg2, installed by scripts/install-deps)

`options=endpoint=alpha` names the project; the password is checked with SCRAM and never
held by ringgate. Each transaction runs on one of the project's pooled server connections.
"""

import os
import sys

import psycopg2

DSN = os.environ.get(
    "RINGGATE_PG_URL",
    "postgresql://alpha_owner:alpha-secret@127.0.0.1:6432/tenant_alpha?options=endpoint%3Dalpha",
)

conn = psycopg2.connect(DSN, connect_timeout=10)
with conn, conn.cursor() as cur:
    # Parameters are bound by the driver; values come back as Python types.
    cur.execute("select id, name, price from items where id <= %s order by id", (3,))
    print(cur.statusmessage)
    for id_, name, price in cur.fetchall():
        print(id_, name, price)

# A transaction (psycopg2 opens one at the first statement): committed, then undone.
name = f"psycopg2 example {os.getpid()}"
with conn, conn.cursor() as cur:
    cur.execute("insert into items (name, price) values (%s, %s) returning id", (name, "4.50"))
    (new_id,) = cur.fetchone()
with conn, conn.cursor() as cur:
    cur.execute("select count(*) from items where id = %s", (new_id,))
    print("committed:", cur.fetchone()[0])
    cur.execute("delete from items where id = %s", (new_id,))
    print("deleted:", cur.rowcount)
conn.close()

# A mistyped project: the server's FATAL says what was wrong, never which projects exist.
try:
    psycopg2.connect(DSN.replace("endpoint%3Dalpha", "endpoint%3Dalpah"), connect_timeout=10)
    sys.exit("a mistyped project connected")
except psycopg2.OperationalError as e:
    message = str(e).strip().splitlines()[0]
    print("typo:", message[message.find("FATAL"):])
