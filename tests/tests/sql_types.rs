//! Every type's value through `POST /sql` is PostgreSQL's own output text: the same as
//! psql shows for `SELECT v` (`v::text`, except for boolean: its cast to text is `true`
//! where its output function, which psql shows, says `t`). The cases come from the catalog of a fresh database (every
//! type a sample literal casts to), plus an enum, a domain, a composite, a range and its
//! multirange, arrays of each (with NULLs and with a non-default lower bound), and the
//! contrib extensions the backend ships (`citext`, `hstore`, `ltree`, `pg_trgm`, and
//! PostGIS when installed). Also: command tags are the server's own.

use ringgate_tests::{
    backend::{pg_admin_url, psql, unique},
    gateway::start,
    http::{request, Resp},
};
use serde_json::{json, Value};

/// Extensions created in the test database when the backend has them.
const EXTENSIONS: &[&str] = &["citext", "hstore", "ltree", "pg_trgm", "postgis"];

/// User-defined types of every kind, over types the binary path could not render.
const USER_TYPES: &str = "
CREATE TYPE rg_mood AS ENUM ('sad', 'happy', 'a \"quoted\" one');
CREATE DOMAIN rg_price AS money CHECK (VALUE >= '0'::money);
CREATE DOMAIN rg_label AS citext;
CREATE TYPE rg_pair AS (n int, label text, tags hstore);
CREATE TYPE rg_floatrange AS RANGE (subtype = float8);
";

/// For each type: the first of these literals it accepts is its sample.
const LITERALS: &[&str] = &[
    "1",
    "1.5",
    "abc",
    "2024-02-29",
    "12:34:56.789",
    "2024-02-29 12:34:56.789+01",
    "(1,2)",
    "((0,0),(1,1))",
    "<(1,2),3>",
    "{1,2,3}",
    "[1,3)",
    "{[1,3), [5,7]}",
    "[1.5,3)",
    "{[1.5,3), [5,7]}",
    "(1,x,\"a=>1, b=>NULL\")",
    "happy",
    "192.168.0.1/24",
    "08:00:2b:01:02:03",
    "08:00:2b:01:02:03:04:05",
    "a fat cat",
    "fat & (rat | cat)",
    "{\"k\": [1, 2.50, null], \"s\": \"é\\n\"}",
    "$.k[*] ? (@ > 1)",
    "a=>1, \"b c\"=>NULL",
    "top.middle.leaf",
    "top.*{1,2}.leaf",
    "top & middle",
    "0/16B6C50",
    "10:20:10,14,15",
    "00000000-0000-0000-0000-00000000002a",
    "=r/postgres",
    "POINT(1 2)",
    "BOX(0 0,1 1)",
    "BOX3D(0 0 0,1 1 1)",
    "SPHEROID[\"WGS 84\",6378137,298.257223563]",
];

/// The setup, as one script: the functions find each type's sample and print, per case, its
/// SQL expression and psql's `v::text` for it (hex-encoded UTF-8, so any text survives).
const CASES: &str = r#"
CREATE FUNCTION pg_temp.sample(typ regtype, lits text[]) RETURNS text LANGUAGE plpgsql AS $$
DECLARE lit text;
BEGIN
  FOREACH lit IN ARRAY lits LOOP
    BEGIN
      EXECUTE format('SELECT (%L::%s)::text', lit, typ);
      RETURN lit;
    EXCEPTION WHEN OTHERS THEN
    END;
  END LOOP;
  RETURN NULL;
END $$;
CREATE FUNCTION pg_temp.text_of(expr text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE out text;
BEGIN
  -- format's %s is the type's output function: what psql shows for `SELECT v` (and
  -- `v::text`, but for boolean, whose cast to text says `true` where psql shows `t`).
  EXECUTE format('SELECT format(''%%s'', %s)', expr) INTO out;
  RETURN encode(convert_to(coalesce(out, '<NULL>'), 'UTF8'), 'hex');
EXCEPTION WHEN OTHERS THEN
  RETURN NULL;
END $$;
WITH types AS (
  SELECT t.oid::regtype AS typ, t.typarray
  FROM pg_type t
  WHERE t.typisdefined
    AND ((t.typtype = 'b' AND t.typcategory <> 'A')
      OR t.typtype IN ('r', 'm')
      OR (t.typtype IN ('e', 'd', 'c') AND t.typnamespace = 'public'::regnamespace))
), samples AS (
  SELECT typ, typarray, pg_temp.sample(typ, :'lits'::text[]) AS lit FROM types
), cases AS (
  SELECT typ::text AS name, format('%L::%s', lit, typ) AS expr FROM samples WHERE lit IS NOT NULL
  UNION ALL
  SELECT typ::text || '[]', format('ARRAY[%L::%s, NULL, %L::%s]', lit, typ, lit, typ)
  FROM samples WHERE lit IS NOT NULL AND typarray <> 0
  UNION ALL
  SELECT typ::text || '[] from 0',
         format('%L::%s[]', '[0:1]=' || ARRAY[NULL, lit::text]::text, typ)
  FROM samples WHERE lit IS NOT NULL AND typarray <> 0
)
SELECT name, expr, pg_temp.text_of(expr) FROM cases ORDER BY name;
"#;

fn sql(addr: std::net::SocketAddr, cs: &str, body: Value) -> Resp {
    request(
        addr,
        "POST",
        "/sql",
        &[
            ("Neon-Connection-String", cs),
            ("Content-Type", "application/json"),
            ("Neon-Raw-Text-Output", "true"),
            ("Neon-Array-Mode", "true"),
        ],
        body.to_string().as_bytes(),
    )
}

/// The admin URL with another database.
fn url_of(database: &str) -> String {
    let admin = pg_admin_url();
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{database}")
}

fn unhex(h: &str) -> String {
    let bytes: Vec<u8> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
        .collect();
    String::from_utf8(bytes).expect("UTF-8")
}

/// Runs `CASES` with psql against `url`: (name, expression, psql's text) per case.
fn cases(url: &str) -> Vec<(String, String, String)> {
    let lits = format!(
        "{{{}}}",
        LITERALS
            .iter()
            .map(|l| format!("\"{}\"", l.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1"])
        .args(["-v", &format!("lits={lits}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(CASES.as_bytes())?;
            child.wait_with_output()
        })
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|line| {
            let mut f = line.splitn(3, '\t');
            let (name, expr, hex) = (f.next()?, f.next()?, f.next()?);
            // A sample whose text cannot be taken back (none expected) is skipped.
            (!hex.is_empty()).then(|| (name.to_string(), expr.to_string(), unhex(hex)))
        })
        .collect()
}

#[test]
#[ignore = "needs compose/cluster"]
fn every_types_value_is_the_servers_own_text() {
    let db = unique("rg_types_");
    let admin = pg_admin_url();
    psql(&admin, &format!("CREATE DATABASE {db}"));
    let url = url_of(&db);
    let available = psql(
        &url,
        "SELECT string_agg(name, ',') FROM pg_available_extensions",
    );
    let mut created = Vec::new();
    for ext in EXTENSIONS {
        if available.split(',').any(|a| a == *ext) {
            psql(&url, &format!("CREATE EXTENSION {ext}"));
            created.push(*ext);
        }
    }
    for required in ["citext", "hstore", "ltree", "pg_trgm"] {
        assert!(
            created.contains(&required),
            "contrib {required} is installed"
        );
    }
    psql(&url, USER_TYPES);
    let cases = cases(&url);
    let names: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    // Types the binary conversion could not render, and one of each kind.
    for must in [
        "money",
        "regclass",
        "regtype",
        "tsvector",
        "tsquery",
        "pg_lsn",
        "citext",
        "hstore",
        "ltree",
        "lquery",
        "ltxtquery",
        "rg_mood",
        "rg_mood[]",
        "rg_mood[] from 0",
        "rg_price",
        "rg_label",
        "rg_pair",
        "rg_pair[]",
        "rg_floatrange",
        "rg_floatmultirange",
        "int4range[]",
        "int4multirange",
        "hstore[] from 0",
    ] {
        assert!(
            names.contains(&must),
            "{must} is among the cases: {names:?}"
        );
    }
    if created.contains(&"postgis") {
        assert!(names.contains(&"geometry"), "{names:?}");
    }
    assert!(cases.len() > 200, "{} cases", cases.len());
    eprintln!("{} cases: {}", cases.len(), names.join(", "));

    let (g, addr) = start(&[("DATABASE_URL", &admin)]);
    let u = ringgate_pool::url::parse_pg_url(&admin)
        .unwrap()
        .credentials;
    let cs = format!(
        "postgres://{}:{}@types.ringgate.test/{db}",
        u.user, u.password
    );
    let mut mismatches = Vec::new();
    for chunk in cases.chunks(40) {
        let select = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, expr, _))| format!("{expr} AS v{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let r = sql(addr, &cs, json!({ "query": format!("SELECT {select}") }));
        assert_eq!(r.status, 200, "{:?}", r.json());
        let v = r.json();
        let row = v["rows"][0].as_array().expect("one row").clone();
        for (i, (name, expr, want)) in chunk.iter().enumerate() {
            let got = match &row[i] {
                Value::Null => "<NULL>".to_string(),
                Value::String(s) => s.clone(),
                other => panic!("{name}: not text: {other}"),
            };
            if &got != want {
                mismatches.push(format!("{name} ({expr}): /sql {got:?}, psql {want:?}"));
            }
            // The type OID is the server's, for every column.
            assert!(
                v["fields"][i]["dataTypeID"].as_u64().unwrap_or(0) > 0,
                "{name}"
            );
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    g.drain();
    psql(&admin, &format!("DROP DATABASE {db} WITH (FORCE)"));
}

#[test]
#[ignore = "needs compose/cluster"]
fn command_tags_and_row_counts_are_the_servers() {
    let db = unique("rg_tags_");
    let admin = pg_admin_url();
    psql(&admin, &format!("CREATE DATABASE {db}"));
    let (g, addr) = start(&[("DATABASE_URL", &admin)]);
    let u = ringgate_pool::url::parse_pg_url(&admin)
        .unwrap()
        .credentials;
    let cs = format!(
        "postgres://{}:{}@tags.ringgate.test/{db}",
        u.user, u.password
    );
    let run = |q: &str| {
        let r = sql(addr, &cs, json!({ "query": q }));
        assert_eq!(r.status, 200, "{q}: {:?}", r.json());
        let v = r.json();
        (
            v["command"].as_str().unwrap_or_default().to_string(),
            v["rowCount"].clone(),
            v["rows"].clone(),
        )
    };
    let (c, _, _) = run("CREATE TABLE t (id int PRIMARY KEY, note text)");
    assert_eq!(c, "CREATE");
    // The main statement of a WITH is an INSERT: the server says so, and how many rows.
    let (c, n, rows) = run("WITH src AS (SELECT g FROM generate_series(1, 3) g) \
         INSERT INTO t SELECT g, 'n' || g FROM src RETURNING id");
    assert_eq!(
        (c.as_str(), n, rows),
        ("INSERT", json!(3), json!([["1"], ["2"], ["3"]]))
    );
    let (c, n, _) =
        run("WITH u AS (UPDATE t SET note = 'x' WHERE id < 3 RETURNING 1) SELECT count(*) FROM u");
    assert_eq!((c.as_str(), n), ("SELECT", json!(1)));
    let (c, n, _) = run("UPDATE t SET note = 'y'");
    assert_eq!((c.as_str(), n), ("UPDATE", json!(3)));
    let (c, n, _) = run("DELETE FROM t WHERE id = 1");
    assert_eq!((c.as_str(), n), ("DELETE", json!(1)));
    let (c, n, _) = run("VALUES (1), (2)");
    assert_eq!((c.as_str(), n), ("SELECT", json!(2)));
    // Table OID and column number come from the server's row description.
    let r = sql(
        addr,
        &cs,
        json!({"query": "SELECT id, note FROM t ORDER BY id"}),
    );
    let v = r.json();
    let table: u64 = psql(&url_of(&db), "SELECT 't'::regclass::oid")
        .parse()
        .unwrap();
    assert_eq!(v["fields"][1]["tableID"], json!(table));
    assert_eq!(v["fields"][1]["columnID"], json!(2));
    assert_eq!(v["fields"][0]["dataTypeSize"], json!(4));
    assert_eq!(v["fields"][1]["dataTypeSize"], json!(-1));
    g.drain();
    psql(&admin, &format!("DROP DATABASE {db} WITH (FORCE)"));
}
