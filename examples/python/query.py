"""ringgate's POST /sql from Python with requests, against a local ringgate (scripts/run):
python3 examples/python/query.py

The connection string names the project in its host's first label (alpha here); ringgate
never resolves that host, it only reads the project, role, password and database from it.
"""

import os
import sys

import requests

RINGGATE = os.environ.get("RINGGATE_URL", "http://127.0.0.1:8080")
CONNECTION_STRING = os.environ.get(
    "RINGGATE_CONNECTION_STRING",
    "postgresql://alpha_owner:alpha-secret@alpha.localtest.me/tenant_alpha",
)


def sql(body):
    """POST /sql; exits with ringgate's or PostgreSQL's code and message on an error."""
    r = requests.post(
        f"{RINGGATE}/sql",
        json=body,
        headers={"Neon-Connection-String": CONNECTION_STRING},
        timeout=30,
    )
    answer = r.json()
    if r.status_code != 200:
        sys.exit(f"POST /sql: {r.status_code} {answer['code']}: {answer['message']}")
    return answer


# One query, parameters bound ($1), values in PostgreSQL text format.
result = sql(
    {"query": "select id, name, price from items where id <= $1 order by id", "params": [3]}
)
print(result["command"], result["rowCount"])
for row in result["rows"]:
    print(row["id"], row["name"], row["price"])

# A batch: one transaction; the insert is rolled back with the whole batch if any fails.
name = f"python example {os.getpid()}"
batch = sql(
    {
        "queries": [
            {
                "query": "insert into items (name, price) values ($1, $2) returning id",
                "params": [name, "4.50"],
            },
            {"query": "select count(*) as n from items where name = $1", "params": [name]},
            {"query": "delete from items where name = $1", "params": [name]},
        ]
    }
)
inserted, counted, deleted = batch["results"]
print(
    "batch:",
    inserted["command"],
    inserted["rowCount"],
    "count",
    counted["rows"][0]["n"],
    deleted["command"],
    deleted["rowCount"],
)

# What a typo in the project looks like: ringgate says how it read the project.
r = requests.post(
    f"{RINGGATE}/sql",
    json={"query": "select 1"},
    headers={"Neon-Connection-String": CONNECTION_STRING.replace("@alpha.", "@alpah.")},
    timeout=30,
)
print("typo:", r.status_code, r.json()["code"], "-", r.json()["message"])
