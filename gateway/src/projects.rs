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
    /// Its `/sql` result cache rules (`ringgate.cache_rules`); rows whose pattern does not
    /// parse are left out.
    pub cache_rules: Rc<[CacheRule]>,
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

const QUERY: &str =
    "SELECT database, roles, statement_timeout_ms, max_connections, class FROM ringgate.projects WHERE project_id = $1";

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
        let st = c.conn().prepare_cached(QUERY).await.map_err(|e| err(&e))?;
        let row = c
            .conn()
            .client()
            .query_opt(&st, &[&project])
            .await
            .map_err(|e| err(&e))?;
        let found = row.map(|r| {
            let class: String = r.get(4);
            Project {
                cache_rules: Rc::from([]),
                database: r.get(0),
                roles: r.get(1),
                statement_timeout_ms: r.get(2),
                max_connections: r.get(3),
                class_slot: self.registry.class_slot(&class),
                class,
            }
        });
        let found = match found {
            Some(mut p) => {
                p.cache_rules = match c.conn().prepare_cached(RULES).await {
                    Ok(st) => match c.conn().client().query(&st, &[&project]).await {
                        Ok(rows) => rows
                            .iter()
                            .filter_map(|r| CacheRule::from_row(r.get(0), r.get(1)))
                            .collect(),
                        Err(e) => return Err(err(&e)),
                    },
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        Rc::from([])
                    }
                    Err(e) => return Err(err(&e)),
                };
                Some(p)
            }
            None => None,
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
