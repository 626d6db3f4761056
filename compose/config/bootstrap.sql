-- What ringgate needs in a fresh cluster. Run once by the launcher on the leader as the
-- superuser; idempotent. :'app_password', :'alpha_password', :'beta_password' are psql
-- variables, as is :'authenticator_password'.
SELECT format('CREATE ROLE ringgate_app LOGIN PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ringgate_app') \gexec
SELECT format('CREATE ROLE alpha_owner LOGIN PASSWORD %L', :'alpha_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'alpha_owner') \gexec
SELECT format('CREATE ROLE beta_owner LOGIN PASSWORD %L', :'beta_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'beta_owner') \gexec
-- The role ringgate logs in as for requests that present an API key: it holds no
-- privileges of its own (NOINHERIT) and takes the session's role at connection start
-- (`options=-c role=...`), which PostgreSQL allows only for roles granted to it.
SELECT format('CREATE ROLE ringgate_authenticator LOGIN NOINHERIT PASSWORD %L', :'authenticator_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ringgate_authenticator') \gexec
GRANT alpha_owner, beta_owner TO ringgate_authenticator;
SELECT 'CREATE DATABASE tenant_alpha OWNER alpha_owner'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenant_alpha') \gexec
SELECT 'CREATE DATABASE tenant_beta OWNER beta_owner'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenant_beta') \gexec
SELECT 'CREATE DATABASE ringgate_control OWNER ringgate_app'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'ringgate_control') \gexec
-- A tenant's database is reachable only by its own role (and the app role, which ringgate
-- uses for its own checks).
REVOKE CONNECT ON DATABASE tenant_alpha FROM PUBLIC;
REVOKE CONNECT ON DATABASE tenant_beta FROM PUBLIC;
GRANT CONNECT ON DATABASE tenant_alpha TO alpha_owner, ringgate_app, ringgate_authenticator;
GRANT CONNECT ON DATABASE tenant_beta TO beta_owner, ringgate_app, ringgate_authenticator;

\connect tenant_alpha
SET ROLE alpha_owner;
CREATE TABLE IF NOT EXISTS items (
    id serial PRIMARY KEY,
    name text NOT NULL,
    price numeric(10,2),
    tags text[],
    meta jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO items (name, price, tags, meta)
SELECT 'alpha item ' || i, i * 1.25, ARRAY['a', 'tag' || i], jsonb_build_object('n', i)
FROM generate_series(1, 100) i
WHERE NOT EXISTS (SELECT 1 FROM items);
RESET ROLE;

\connect tenant_beta
SET ROLE beta_owner;
CREATE TABLE IF NOT EXISTS items (
    id serial PRIMARY KEY,
    name text NOT NULL,
    price numeric(10,2),
    tags text[],
    meta jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO items (name, price, tags, meta)
SELECT 'beta item ' || i, i * 2.5, ARRAY['b'], jsonb_build_object('n', i)
FROM generate_series(1, 50) i
WHERE NOT EXISTS (SELECT 1 FROM items);
RESET ROLE;

\connect ringgate_control
SET ROLE ringgate_app;
CREATE SCHEMA IF NOT EXISTS ringgate;
CREATE TABLE IF NOT EXISTS ringgate.projects (
    project_id text PRIMARY KEY,
    database text NOT NULL,
    roles text[] NOT NULL,
    max_connections int NOT NULL DEFAULT 10,
    statement_timeout_ms int NOT NULL DEFAULT 30000,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The tenant class (plan) labels ringgate's /sql metrics; keep the set of values small.
ALTER TABLE ringgate.projects ADD COLUMN IF NOT EXISTS class text NOT NULL DEFAULT 'standard';
-- Every change is announced, so ringgate's per-core caches drop the row at once.
CREATE OR REPLACE FUNCTION ringgate.notify_project_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ringgate_projects', COALESCE(NEW.project_id, OLD.project_id));
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS projects_changed ON ringgate.projects;
CREATE TRIGGER projects_changed AFTER INSERT OR UPDATE OR DELETE ON ringgate.projects
    FOR EACH ROW EXECUTE FUNCTION ringgate.notify_project_change();
INSERT INTO ringgate.projects (project_id, database, roles) VALUES
    ('alpha', 'tenant_alpha', ARRAY['alpha_owner']),
    ('beta', 'tenant_beta', ARRAY['beta_owner'])
ON CONFLICT (project_id) DO NOTHING;
RESET ROLE;
