//! Master resolution through Sentinels and their `+switch-master` announcements.

use std::time::Duration;

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, ConnectionAddr};

use super::RedisConfig;

/// A `+switch-master` message: `<name> <old-ip> <old-port> <new-ip> <new-port>`. Returns
/// the new master's `host:port` when the message is about `master`.
pub fn parse_switch_master(payload: &str, master: &str) -> Option<String> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    match parts.as_slice() {
        [name, _, _, ip, port] if *name == master && port.parse::<u16>().is_ok() => {
            Some(format!("{ip}:{port}"))
        }
        _ => None,
    }
}

/// Splits `host:port` (IPv6 in brackets) for the redis client.
pub fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// A client for `addr`, with the password when given.
pub fn client(addr: &str, password: Option<&str>) -> redis::RedisResult<Client> {
    let (host, port) = split_addr(addr).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "address is not host:port",
            addr.to_string(),
        ))
    })?;
    let mut info =
        redis::IntoConnectionInfo::into_connection_info(ConnectionAddr::Tcp(host, port))?;
    if let Some(p) = password {
        let settings = info.redis_settings().clone().set_password(p);
        info = info.set_redis_settings(settings);
    }
    Client::open(info)
}

/// Connects to `addr` with both timeouts set.
pub async fn connect(
    addr: &str,
    password: Option<&str>,
    timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client(addr, password)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The master address the Sentinels name, asking each in turn.
pub async fn ask_sentinels(config: &RedisConfig) -> Result<String, String> {
    let mut errors = Vec::new();
    for s in &config.sentinels {
        let reply: redis::RedisResult<Option<(String, String)>> = async {
            let mut c = connect(s, None, config.timeout).await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&config.master)
                .query_async(&mut c)
                .await
        }
        .await;
        match reply {
            Ok(Some((ip, port))) => return Ok(format!("{ip}:{port}")),
            Ok(None) => errors.push(format!("{s}: does not know master {:?}", config.master)),
            Err(e) => errors.push(format!("{s}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// Connects to `addr` and checks that it is a master (`ROLE`), not a replica that a
/// Sentinel named before it heard of the failover.
pub async fn connect_master(
    addr: &str,
    config: &RedisConfig,
) -> Result<MultiplexedConnection, String> {
    let mut conn = connect(addr, config.password.as_deref(), config.timeout)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let role: redis::Value = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("{addr}: ROLE: {e}"))?;
    match role_name(&role).as_deref() {
        Some("master") => Ok(conn),
        other => Err(format!("{addr} is not a master (role {other:?})")),
    }
}

/// The first element of a `ROLE` reply.
fn role_name(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::Array(items) => redis::from_redis_value_ref::<String>(items.first()?).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_messages_name_the_new_master() {
        assert_eq!(
            parse_switch_master("mymaster 127.0.3.1 6379 127.0.3.2 6379", "mymaster").as_deref(),
            Some("127.0.3.2:6379")
        );
        assert_eq!(
            parse_switch_master("other 1.1.1.1 1 2.2.2.2 2", "mymaster"),
            None
        );
        assert_eq!(
            parse_switch_master("mymaster 127.0.3.1 6379", "mymaster"),
            None
        );
        assert_eq!(parse_switch_master("mymaster a 1 b port", "mymaster"), None);
    }

    #[test]
    fn addresses_split_with_and_without_brackets() {
        assert_eq!(
            split_addr("127.0.0.1:6379"),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(split_addr("[::1]:26379"), Some(("::1".into(), 26379)));
        assert_eq!(split_addr("nohost"), None);
        assert_eq!(split_addr("h:notaport"), None);
    }
}
