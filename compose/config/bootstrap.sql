-- What ringgate needs in a fresh cluster. Run once by the launcher on the leader as the
-- superuser; idempotent. :'app_password', :'alpha_password', :'beta_password' and
-- :'key_login_secret' (32+ characters; ringgate's RINGGATE_KEY_LOGIN_SECRET) are psql
-- variables. Re-running it with a new secret rotates every API-key login's password.
SELECT format('CREATE ROLE ringgate_app LOGIN PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ringgate_app') \gexec
SELECT format('CREATE ROLE alpha_owner LOGIN PASSWORD %L', :'alpha_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'alpha_owner') \gexec
SELECT format('CREATE ROLE beta_owner LOGIN PASSWORD %L', :'beta_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'beta_owner') \gexec
-- Earlier versions had one authenticator granted every tenant role, so a key holder could
-- SET ROLE to any tenant; it is gone (API keys now log in as one role per tenant role,
-- made by ringgate_private.sync_key_login below).
SELECT format('REVOKE %I FROM ringgate_authenticator', g.rolname)
FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
WHERE u.rolname = 'ringgate_authenticator' \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM ringgate_authenticator', datname) FROM pg_database
WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ringgate_authenticator') \gexec
DROP ROLE IF EXISTS ringgate_authenticator;
SELECT 'CREATE DATABASE tenant_alpha OWNER alpha_owner'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenant_alpha') \gexec
SELECT 'CREATE DATABASE tenant_beta OWNER beta_owner'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenant_beta') \gexec
SELECT 'CREATE DATABASE ringgate_control OWNER ringgate_app'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'ringgate_control') \gexec
-- A tenant's database is reachable only by its own role (and, made by the projects
-- trigger, the API-key login of each of the project's roles); the control database only
-- by ringgate's app role.
REVOKE CONNECT ON DATABASE tenant_alpha FROM PUBLIC;
REVOKE CONNECT ON DATABASE tenant_beta FROM PUBLIC;
REVOKE CONNECT ON DATABASE ringgate_control FROM PUBLIC;
REVOKE CONNECT ON DATABASE tenant_alpha, tenant_beta FROM ringgate_app;
GRANT CONNECT ON DATABASE tenant_alpha TO alpha_owner;
GRANT CONNECT ON DATABASE tenant_beta TO beta_owner;
GRANT CONNECT ON DATABASE ringgate_control TO ringgate_app;

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
-- The PostgreSQL front end's pooling: 'transaction' (a server connection per transaction)
-- or 'session' (one per client session: LISTEN, temp tables, SQL PREPARE, WITH HOLD
-- cursors and session advisory locks work); and whether its plain reads and READ ONLY
-- transactions run on a replica (read_split).
ALTER TABLE ringgate.projects ADD COLUMN IF NOT EXISTS pool_mode text NOT NULL DEFAULT 'transaction'
    CHECK (pool_mode IN ('transaction', 'session'));
ALTER TABLE ringgate.projects ADD COLUMN IF NOT EXISTS read_split boolean NOT NULL DEFAULT false;
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
-- /sql result cache rules, loaded with the project's row: reads whose fingerprint (the
-- statement with its literals as placeholders, e.g. `SELECT name FROM items WHERE id = $1`)
-- or digest (16 hex digits, ringgate's Ringgate-Cache-Digest) matches `pattern` are cached
-- for ttl_ms. Nothing is cached without a rule or the Ringgate-Cache request header.
CREATE TABLE IF NOT EXISTS ringgate.cache_rules (
    project_id text NOT NULL REFERENCES ringgate.projects (project_id) ON DELETE CASCADE,
    pattern text NOT NULL,
    ttl_ms int NOT NULL CHECK (ttl_ms > 0),
    PRIMARY KEY (project_id, pattern)
);
DROP TRIGGER IF EXISTS cache_rules_changed ON ringgate.cache_rules;
CREATE TRIGGER cache_rules_changed AFTER INSERT OR UPDATE OR DELETE ON ringgate.cache_rules
    FOR EACH ROW EXECUTE FUNCTION ringgate.notify_project_change();
RESET ROLE;

-- API-key logins. Each tenant role r listed in ringgate.projects gets a login role
-- <prefix>r: LOGIN NOINHERIT, member of r alone (no ADMIN OPTION, nobody a member of it),
-- CONNECT on exactly the databases of the projects that list r, and the password
-- hex(HMAC-SHA256(secret, r)), which ringgate derives from the same secret. So a key
-- holder's session reaches r and nothing else: SET ROLE / RESET ROLE / set_config('role')
-- can only name r or the login itself (which holds no privileges), and SET SESSION
-- AUTHORIZATION needs a superuser. A trigger keeps the logins in step with every change of
-- ringgate.projects, so projects added at run time get the same fence. The secret lives in
-- a schema only superusers can read; the functions run as the superuser who ran this file
-- (SECURITY DEFINER, fixed search_path) and check that ringgate.projects is still a plain
-- table with text columns, so its owner cannot make them run code of its own.
CREATE SCHEMA IF NOT EXISTS ringgate_private;
REVOKE ALL ON SCHEMA ringgate_private FROM PUBLIC;
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA ringgate_private;
CREATE TABLE IF NOT EXISTS ringgate_private.key_login (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    prefix text NOT NULL CHECK (prefix ~ '^[a-z_][a-z0-9_]{0,29}$'),
    secret text NOT NULL CHECK (length(secret) >= 32)
);
REVOKE ALL ON ringgate_private.key_login FROM PUBLIC;
INSERT INTO ringgate_private.key_login (prefix, secret)
VALUES (coalesce(nullif(:'key_login_prefix', ''), 'ringgate_key_'), :'key_login_secret')
ON CONFLICT (singleton) DO UPDATE SET prefix = EXCLUDED.prefix, secret = EXCLUDED.secret;

CREATE OR REPLACE FUNCTION ringgate_private.check_projects_table() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'ringgate.projects'::regclass) <> 'r'
       OR (SELECT atttypid FROM pg_attribute
           WHERE attrelid = 'ringgate.projects'::regclass AND attname = 'roles') <> 'text[]'::regtype
       OR (SELECT atttypid FROM pg_attribute
           WHERE attrelid = 'ringgate.projects'::regclass AND attname = 'database') <> 'text'::regtype
    THEN
        RAISE EXCEPTION 'ringgate.projects must be a table with database text and roles text[]';
    END IF;
END
$$;

-- Brings tenant_role's API-key login in line with ringgate.projects.
CREATE OR REPLACE FUNCTION ringgate_private.sync_key_login(tenant_role text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg record;
    login text;
    login_oid oid;
    dbs text[];
    db text;
    r record;
BEGIN
    PERFORM ringgate_private.check_projects_table();
    SELECT prefix, secret INTO cfg FROM ringgate_private.key_login;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no API-key login secret: run compose/config/bootstrap.sql';
    END IF;
    IF tenant_role !~ '^[a-z_][a-z0-9_]*$' OR length(cfg.prefix || tenant_role) > 63 THEN
        RAISE EXCEPTION 'role "%" cannot have an API-key login: it must be a lowercase identifier of at most % characters',
            tenant_role, 63 - length(cfg.prefix);
    END IF;
    login := cfg.prefix || tenant_role;
    SELECT coalesce(array_agg(DISTINCT p.database), '{}') INTO dbs
    FROM ringgate.projects p WHERE tenant_role = ANY (p.roles);
    SELECT oid INTO login_oid FROM pg_roles WHERE rolname = login;

    IF cardinality(dbs) = 0 THEN
        -- No project lists the role any more: the login can do nothing.
        IF login_oid IS NOT NULL THEN
            EXECUTE format('ALTER ROLE %I NOLOGIN PASSWORD NULL', login);
            FOR r IN SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                     WHERE m.member = login_oid LOOP
                EXECUTE format('REVOKE %I FROM %I', r.rolname, login);
            END LOOP;
            FOR r IN SELECT d.datname FROM pg_database d, aclexplode(d.datacl) a
                     WHERE a.grantee = login_oid LOOP
                EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', r.datname, login);
            END LOOP;
        END IF;
        RETURN;
    END IF;

    -- The tenant role must exist and reach no privileged role, directly or through others.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = tenant_role) THEN
        RAISE EXCEPTION 'role "%" does not exist: create it before listing it in ringgate.projects', tenant_role;
    END IF;
    IF tenant_role = 'ringgate_app' OR tenant_role LIKE cfg.prefix || '%' THEN
        RAISE EXCEPTION 'role "%" is ringgate''s own and cannot be a tenant role', tenant_role;
    END IF;
    IF EXISTS (
        WITH RECURSIVE reach(oid) AS (
            SELECT oid FROM pg_roles WHERE rolname = tenant_role
            UNION
            SELECT m.roleid FROM pg_auth_members m JOIN reach ON m.member = reach.oid
        )
        SELECT 1 FROM reach JOIN pg_roles g ON g.oid = reach.oid
        WHERE g.rolsuper OR g.rolcreaterole OR g.rolreplication OR g.rolbypassrls
           OR g.rolname LIKE 'pg\_%' OR g.rolname = 'ringgate_app'
    ) THEN
        RAISE EXCEPTION 'role "%" is or reaches a privileged role and cannot be a tenant role', tenant_role;
    END IF;
    -- A key login reaches no database its role does not reach by itself (as owner or by
    -- an explicit grant; PUBLIC's CONNECT is revoked below), and never a system database.
    FOREACH db IN ARRAY dbs LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = db) THEN
            RAISE EXCEPTION 'database "%" does not exist: create it before listing it in ringgate.projects', db;
        END IF;
        IF db IN ('postgres', 'template0', 'template1', 'ringgate_control') THEN
            RAISE EXCEPTION 'database "%" is a system database and cannot be a project''s', db;
        END IF;
        IF NOT EXISTS (
            SELECT 1 FROM pg_database d JOIN pg_roles tr ON tr.rolname = tenant_role
            WHERE d.datname = db
              AND (d.datdba = tr.oid OR EXISTS (
                    SELECT 1 FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                    WHERE a.grantee = tr.oid AND a.privilege_type = 'CONNECT'))
        ) THEN
            RAISE EXCEPTION 'role "%" may not connect to database "%" itself, so its API-key login may not either: GRANT CONNECT ON DATABASE % TO % first',
                tenant_role, db, quote_ident(db), quote_ident(tenant_role);
        END IF;
    END LOOP;

    IF login_oid IS NULL THEN
        EXECUTE format('CREATE ROLE %I', login);
        SELECT oid INTO login_oid FROM pg_roles WHERE rolname = login;
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE '
                   'NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 VALID UNTIL ''infinity'' PASSWORD %L',
                   login, encode(ringgate_private.hmac(tenant_role, cfg.secret, 'sha256'), 'hex'));
    -- Member of tenant_role alone, without ADMIN OPTION; nobody is a member of the login.
    FOR r IN SELECT g.rolname, m.admin_option FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = login_oid LOOP
        IF r.rolname <> tenant_role OR r.admin_option THEN
            EXECUTE format('REVOKE %I FROM %I', r.rolname, login);
        END IF;
    END LOOP;
    FOR r IN SELECT u.rolname FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
             WHERE m.roleid = login_oid LOOP
        EXECUTE format('REVOKE %I FROM %I', login, r.rolname);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                   WHERE m.member = login_oid AND g.rolname = tenant_role) THEN
        EXECUTE format('GRANT %I TO %I', tenant_role, login);
    END IF;
    -- CONNECT on exactly the projects' databases, which nobody else reaches through PUBLIC.
    FOR r IN SELECT d.datname FROM pg_database d, aclexplode(d.datacl) a
             WHERE a.grantee = login_oid AND NOT d.datname = ANY (dbs) LOOP
        EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', r.datname, login);
    END LOOP;
    FOREACH db IN ARRAY dbs LOOP
        EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', db);
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', db, login);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION ringgate_private.projects_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    roles text[] := '{}';
    tenant_role text;
BEGIN
    PERFORM ringgate_private.check_projects_table();
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        roles := roles || OLD.roles;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        roles := roles || NEW.roles;
    END IF;
    FOR tenant_role IN SELECT DISTINCT unnest(roles) LOOP
        PERFORM ringgate_private.sync_key_login(tenant_role);
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ringgate_private FROM PUBLIC;
DROP TRIGGER IF EXISTS projects_key_logins ON ringgate.projects;
CREATE TRIGGER projects_key_logins AFTER INSERT OR UPDATE OR DELETE ON ringgate.projects
    FOR EACH ROW EXECUTE FUNCTION ringgate_private.projects_changed();

SET ROLE ringgate_app;
INSERT INTO ringgate.projects (project_id, database, roles) VALUES
    ('alpha', 'tenant_alpha', ARRAY['alpha_owner']),
    ('beta', 'tenant_beta', ARRAY['beta_owner'])
ON CONFLICT (project_id) DO NOTHING;
RESET ROLE;
-- Every listed role's login, made or brought up to date (a new secret rotates them all).
-- One role that cannot be synced (dropped since its project was listed) is reported, not
-- fatal to the rest.
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN SELECT DISTINCT unnest(roles) FROM ringgate.projects LOOP
        BEGIN
            PERFORM ringgate_private.sync_key_login(r);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'API-key login of role %: %', r, SQLERRM;
        END;
    END LOOP;
END
$$;

-- The PostgreSQL front end's auth query (PgBouncer's way): ringgate verifies a client's
-- SCRAM proof against the role's verifier and authenticates upstream with the ClientKey it
-- recovers from the proof, never holding a password. The function returns the SCRAM
-- verifier of a role only when it is one of the project's roles (never a superuser's,
-- never an MD5 hash), and only ringgate's app role may call it. It lives in a schema of its
-- own, owned by the superuser, so the app role can neither replace nor shadow it.
CREATE SCHEMA IF NOT EXISTS ringgate_auth;
REVOKE ALL ON SCHEMA ringgate_auth FROM PUBLIC;
GRANT USAGE ON SCHEMA ringgate_auth TO ringgate_app;
CREATE OR REPLACE FUNCTION ringgate_auth.scram_verifier(p_project text, p_role text)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v text;
BEGIN
    PERFORM ringgate_private.check_projects_table();
    SELECT a.rolpassword INTO v
    FROM pg_authid a
    WHERE a.rolname = p_role AND a.rolcanlogin AND NOT a.rolsuper
      AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > now())
      AND EXISTS (SELECT 1 FROM ringgate.projects p
                  WHERE p.project_id = p_project AND p_role = ANY (p.roles));
    IF v IS NULL OR v NOT LIKE 'SCRAM-SHA-256$%' THEN
        RETURN NULL;
    END IF;
    RETURN v;
END
$$;
REVOKE ALL ON FUNCTION ringgate_auth.scram_verifier(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ringgate_auth.scram_verifier(text, text) TO ringgate_app;
