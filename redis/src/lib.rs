//! Redis through Sentinel, on one small tokio side thread.
//!
//! The `redis` crate needs tokio; ringgate's cores run monoio. So one thread runs a tokio
//! current-thread runtime that owns every Redis connection, and cores send it commands
//! through a channel ([`RedisHandle::query`]); the reply comes back on a oneshot, which a
//! monoio task can await. No core ever blocks on Redis.
//!
//! The master is resolved through the Sentinels ([`sentinel`]) and confirmed with `ROLE`.
//! The side thread subscribes to `+switch-master` on every Sentinel and switches at once:
//! after a failover the old master stays writable for seconds, so re-resolving only on
//! errors would send writes to a node that is about to throw them away. A `READONLY`
//! error (the command was refused, not run) triggers re-resolution and a retry. A command
//! whose connection broke after it was sent is retried only when it is idempotent;
//! otherwise the caller gets [`RedisError::OutcomeUnknown`].
//!
//! The same thread watches the reverse proxy's workers registered in Redis ([`workers`]).
//!
//! # Layout
//! - [`sentinel`]: asking the Sentinels who the master is.
//! - `side`: the side thread (master connection, Sentinel subscriptions, commands, the
//!   worker watch).
//! - [`workers`]: upstream workers, static and registered in Redis.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]

pub mod sentinel;
mod side;
pub mod workers;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use self::side::{spawn, spawn_with, MasterObserver, Subscription, WorkerWatch};

/// Where Redis is and how to talk to it. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Sentinel addresses (`host:port`).
    pub sentinels: Vec<String>,
    /// The monitored master's name (`sentinel monitor NAME ...`).
    pub master: String,
    /// The password of the Redis nodes (Sentinels are asked without one).
    pub password: Option<String>,
    /// Connect and response timeout of one attempt.
    pub timeout: Duration,
    /// How long a command may wait for a usable master (a failover in progress).
    pub failover_wait: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("timeout", &self.timeout)
            .field("failover_wait", &self.failover_wait)
            .finish()
    }
}

/// Why a Redis command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// No Sentinel named a master that confirmed its role within the failover wait.
    #[error("no Redis master within {waited:?}: {last}")]
    NoMaster {
        /// How long the command waited.
        waited: Duration,
        /// The last resolution error.
        last: String,
    },
    /// Redis answered with an error (the command ran, or was rejected, deterministically).
    #[error("Redis error: {0}")]
    Command(String),
    /// The connection broke after a non-idempotent command was sent: it may or may not
    /// have run, and it is not retried.
    #[error("Redis connection lost after the command was sent; outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The side thread is gone (shutdown).
    #[error("the Redis thread has stopped")]
    Gone,
}

/// Whether a command may run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    /// Reads, and writes that set an absolute value: safe to repeat.
    Idempotent,
    /// `INCR`, `LPUSH`, ...: never repeated when its outcome is unknown.
    NotIdempotent,
}

/// One command for the side thread.
#[derive(Debug)]
struct Job {
    cmd: redis::Cmd,
    safety: Safety,
    reply: oneshot::Sender<Result<redis::Value, RedisError>>,
}

/// A cheap, cloneable, `Send` handle to the Redis side thread.
#[derive(Debug, Clone)]
pub struct RedisHandle {
    jobs: mpsc::UnboundedSender<Job>,
}

impl RedisHandle {
    /// Runs `cmd` on the current master.
    pub async fn query(&self, cmd: redis::Cmd, safety: Safety) -> Result<redis::Value, RedisError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { cmd, safety, reply })
            .map_err(|_| RedisError::Gone)?;
        answer.await.map_err(|_| RedisError::Gone)?
    }

    /// `GET key` as a string (`None` when the key does not exist).
    pub async fn get(&self, key: &str) -> Result<Option<String>, RedisError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        match self.query(cmd, Safety::Idempotent).await? {
            redis::Value::Nil => Ok(None),
            v => redis::from_redis_value::<String>(v)
                .map(Some)
                .map_err(|e| RedisError::Command(e.to_string())),
        }
    }

    /// `PUBLISH channel message`; the number of subscribers that received it. Repeated when
    /// its outcome is unknown (callers publish what may be received twice).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<i64, RedisError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        match self.query(cmd, Safety::Idempotent).await? {
            redis::Value::Int(n) => Ok(n),
            v => Err(RedisError::Command(format!("PUBLISH answered {v:?}"))),
        }
    }

    /// `INCRBY key by` and `EXPIRE key ttl_secs`, and `GET also`, in one round trip (a
    /// script); returns the new value of `key` and the value of `also` (0 when missing).
    /// Not idempotent: never repeated when its outcome is unknown.
    pub async fn incr_by_with_expiry(
        &self,
        key: &str,
        by: u64,
        ttl_secs: u64,
        also: &str,
    ) -> Result<(i64, i64), RedisError> {
        const SCRIPT: &str = "local n = redis.call('INCRBY', KEYS[1], ARGV[1]) \
                              redis.call('EXPIRE', KEYS[1], ARGV[2]) \
                              return {n, tonumber(redis.call('GET', KEYS[2]) or '0') or 0}";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(2)
            .arg(key)
            .arg(also)
            .arg(by)
            .arg(ttl_secs);
        let answer = self.query(cmd, Safety::NotIdempotent).await?;
        match answer.as_sequence() {
            Some([redis::Value::Int(n), redis::Value::Int(other)]) => Ok((*n, *other)),
            _ => Err(RedisError::Command(format!(
                "INCRBY script answered {answer:?}"
            ))),
        }
    }
}
