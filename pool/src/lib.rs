//! Per-core tenant pools of PostgreSQL connections, and replica-aware routing.
//!
//! This crate owns every PostgreSQL connection ringgate makes. Each core has one [`Shard`]:
//! a bounded cache of tenant pools keyed by (tenant, database, role, node), counted against
//! process-wide connection budgets ([`budget`]), and the current [`Topology`](ringgate_discovery::Topology) to route
//! by. Data-path connections speak PostgreSQL's protocol through `ringgate-pgwire` on the
//! core's own monoio runtime (no tokio runtime anywhere), in per-core pools of our own
//! (see [`tenant`] for why not deadpool).
//!
//! It does not learn the topology (that is `ringgate-discovery`'s) nor speak HTTP.
//!
//! # Layout
//! - [`config`]: limits and timeouts, with documented defaults.
//! - [`budget`]: the process-wide connection budgets per tenant and node, shared by cores.
//! - [`conn`]: the only module doing socket I/O: connect, statement cache.
//! - [`tenant`]: one tenant pool on one node: checkout, waiting, recycle checks.
//! - [`waiters`]: the queue of checkouts waiting in a pool.
//! - [`pool_cache`]: the bounded cache of tenant pools and idle expiry.
//! - [`route`]: which member serves a read or a write.
//! - [`shard`]: one core's pools, budget and topology.
//! - [`tls`]: optional TLS to PostgreSQL (`require`, `verify-full`).
//! - [`url`]: `postgres://` URLs for the fixed topology.
//! - [`error`]: what can go wrong, by kind.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]

pub mod budget;
pub mod config;
pub mod conn;
pub mod error;
pub mod pool_cache;
pub mod route;
pub mod shard;
pub mod tenant;
pub mod tls;
pub mod url;
pub mod waiters;

pub use budget::Budgets;
pub use config::Config;
pub use conn::{settle, Canceller, Credentials, Job, Lent, PgConn};
pub use error::Error;
pub use ringgate_pgwire::{Answer, ClientKeys, DbError, Error as PgError, QueryResult};
pub use route::Intent;
pub use shard::{Checkout, HandOff, Lease, Shard, ShardStats};
pub use tenant::PoolKey;
