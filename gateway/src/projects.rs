//! Project config from the control database's `ringgate.projects`, cached per core.
//!
//! A request's project must exist (else 404) and its connection string must name the
//! project's database and one of its roles (else 403), so one project's credentials never
//! open another's database through ringgate. Entries, unknown projects included, are kept
//! for `RINGGATE_PROJECT_CACHE_TTL`; a changed row is served once its entry expires, and at
//! once when the control database announces it: each core LISTENs on `ringgate_projects`
//! (a trigger on the table NOTIFYs the project id) and drops that entry.

use std::{rc::Rc, time::Duration};

use monoio::time::Instant;
use ringgate_pool::{Credentials, Intent, Shard};

use crate::{
    cache::{Cache, Weigh},
    sql::cache::rules::CacheRule,
};

/// One row of `ringgate.projects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The project's database.
    pub database: String,
    /// Roles allowed to use it.
    pub roles: Vec<String>,
    /// Its statement timeout in milliseconds.
    pub statement_timeout_ms: i32,
    /// Its connection limit.
    pub max_connections: i32,
    /// Its tenant class (`ringgate.projects.class`, e.g. a plan), for metrics.
    pub class: String,
    /// The metrics slot of that class (bounded; see `Registry::class_slot`).
    pub class_slot: usize,
    /// The PostgreSQL front end's pooling (`ringgate.projects.pool_mode`).
    pub pool_mode: PoolMode,
    /// Whether the front end runs plain reads and `READ ONLY` transactions on a replica
    /// (`ringgate.projects.read_split`).
    pub read_split: bool,
    /// Its `/sql` result cache rules (`ringgate.cache_rules`); rows whose pattern does not
    /// parse are left out.
    pub cache_rules: Rc<[CacheRule]>,
}

/// How the PostgreSQL front end pools a project's server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per transaction (the default).
    Transaction,
    /// One server connection for the client's whole session.
    Session,
}

impl PoolMode {
    /// The mode's name, as in `ringgate.projects.pool_mode` and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

impl ProjectCache {
    /// Reads a row of [`QUERY`] (text values).
    fn project(&self, row: Vec<Option<String>>) -> Result<Project, String> {
        let [database, roles, timeout, max, class, mode, split]: [Option<String>; 7] = row
            .try_into()
            .map_err(|_| "the projects query returned an unexpected row".to_string())?;
        let text = |v: Option<String>, name: &str| v.ok_or_else(|| format!("{name} is NULL"));
        let int = |v: Option<String>, name: &str| {
            text(v, name)?
                .parse::<i32>()
                .map_err(|e| format!("{name}: {e}"))
        };
        let class = text(class, "class")?;
        Ok(Project {
            database: text(database, "database")?,
            roles: serde_json::from_str(&text(roles, "roles")?)
                .map_err(|e| format!("roles: {e}"))?,
            statement_timeout_ms: int(timeout, "statement_timeout_ms")?,
            max_connections: int(max, "max_connections")?,
            class_slot: self.registry.class_slot(&class),
            class,
            pool_mode: match text(mode, "pool_mode")?.as_str() {
                "session" => PoolMode::Session,
                "transaction" => PoolMode::Transaction,
                other => return Err(format!("pool_mode: unknown mode {other:?}")),
            },
            read_split: text(split, "read_split")? == "true",
            cache_rules: Rc::from([]),
        })
    }

    /// The project's cache rules; none when the control database predates the table.
    async fn cache_rules(
        &self,
        c: &mut ringgate_pool::Checkout,
        project: &str,
    ) -> Result<Rc<[CacheRule]>, ringgate_pool::PgError> {
        let r = c
            .conn()
            .query(RULES, &[Some(project.to_string())], ROW_LIMIT)
            .await
            .result;
        match r {
            Ok(r) => Ok(r
                .rows
                .into_iter()
                .filter_map(|row| match &row[..] {
                    [Some(pattern), Some(ttl)] => CacheRule::from_row(pattern, ttl.parse().ok()?),
                    _ => None,
                })
                .collect()),
            // undefined_table
            Err(e) if e.db().is_some_and(|d| d.code == "42P01") => Ok(Rc::from([])),
            Err(e) => Err(e),
        }
    }
}

/// Why the project could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// The control database could not be reached or queried.
    #[error("control database: {0}")]
    Control(String),
}

impl Weigh for Project {
    fn heap_bytes(&self) -> usize {
        self.database.capacity()
            + self.roles.heap_bytes()
            + self.class.capacity()
            + self
                .cache_rules
                .iter()
                .map(|r| std::mem::size_of::<CacheRule>() + r.heap_bytes())
                .sum::<usize>()
    }
}

/// One core's cache of project rows.
#[derive(Debug)]
pub struct ProjectCache {
    control: Credentials,
    entries: Cache<Option<Project>>,
    registry: std::sync::Arc<crate::metrics::Registry>,
}

/// Bytes of project rows (and unknown projects) kept per core.
const CACHE_BYTES: u64 = 4 << 20;

/// Values come back as text: the roles as a JSON array, so names need no unquoting. The
/// front end's columns are read through `to_jsonb` so a control database bootstrapped
/// before they existed still serves (with their defaults).
const QUERY: &str = "SELECT database, array_to_json(roles)::text, statement_timeout_ms, max_connections, class, \
     coalesce(to_jsonb(p)->>'pool_mode', 'transaction'), coalesce(to_jsonb(p)->>'read_split', 'false') \
     FROM ringgate.projects p WHERE project_id = $1";

/// Rows of the control query are small.
const ROW_LIMIT: usize = 64 << 10;

/// The project's `/sql` result cache rules. A control database bootstrapped before the
/// table existed has none (the error is not the project's).
const RULES: &str = "SELECT pattern, ttl_ms FROM ringgate.cache_rules WHERE project_id = $1";

impl ProjectCache {
    /// A cache reading the control database as `control`, keeping entries for `ttl`;
    /// tenant classes get their metrics slots from `registry` when a row is loaded.
    pub fn new(
        control: Credentials,
        ttl: Duration,
        registry: std::sync::Arc<crate::metrics::Registry>,
    ) -> Self {
        Self {
            control,
            entries: Cache::new(CACHE_BYTES, ttl),
            registry,
        }
    }

    /// The project's row (`None` when there is none), from the cache or the control database.
    pub async fn get(
        &self,
        db: &Rc<Shard>,
        project: &str,
    ) -> Result<Option<Project>, ProjectError> {
        if let Some(p) = self.entries.get(project, Instant::now()) {
            return Ok(p);
        }
        let err = |e: &dyn std::fmt::Display| ProjectError::Control(e.to_string());
        let mut c = db
            .checkout("ringgate-control", &self.control, Intent::Read)
            .await
            .map_err(|e| err(&e))?;
        let r = c
            .conn()
            .query(QUERY, &[Some(project.to_string())], ROW_LIMIT)
            .await
            .result
            .map_err(|e| err(&e))?;
        let found = match r.rows.into_iter().next() {
            None => None,
            Some(row) => {
                let mut p = self.project(row).map_err(|e| err(&e))?;
                p.cache_rules = self
                    .cache_rules(&mut c, project)
                    .await
                    .map_err(|e| err(&e))?;
                Some(p)
            }
        };
        self.entries.insert(project, found.clone(), Instant::now());
        Ok(found)
    }

    /// The credentials the control database is read with.
    pub fn control(&self) -> &Credentials {
        &self.control
    }

    /// Drops every entry (after a gap in notifications).
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// Drops a project's entry so the next request reads it again.
    pub fn invalidate(&self, project: &str) {
        self.entries.remove(project);
    }
}
