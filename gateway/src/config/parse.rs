//! Parsers for the value forms environment variables use: durations, byte sizes, booleans,
//! socket addresses. Each returns a short description of the expected form on failure.

use std::{net::SocketAddr, time::Duration};

/// What went wrong parsing one value; `expected` names the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}")]
pub struct ParseError {
    /// The accepted form, for example "a duration like 250ms or 30s".
    pub expected: &'static str,
}

const DURATION: &str = "a duration like 250ms, 30s, 5m or 1h";
const BYTES: &str = "a byte size like 16384, 16KiB or 1MiB";
const BOOL: &str = "true or false";
const COUNT: &str = "a whole number greater than zero";
const ADDR: &str = "an address like 0.0.0.0:8080 or [::1]:8443";

/// Parses durations written as a number and a unit: `ms`, `s`, `m` or `h`.
pub fn duration(s: &str) -> Result<Duration, ParseError> {
    let err = ParseError { expected: DURATION };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(err.clone())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err.clone())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or(err),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or(err),
        _ => Err(err),
    }
}

/// Parses a positive duration, or `off` (`None`).
pub fn interval_or_off(s: &str) -> Result<Option<Duration>, ParseError> {
    if s.trim() == "off" {
        return Ok(None);
    }
    match duration(s) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(ParseError {
            expected: "a duration greater than zero like 250ms, or off",
        }),
    }
}

/// Parses byte sizes: a plain number of bytes, or a number with `KiB`, `MiB` or `GiB`.
pub fn bytes(s: &str) -> Result<usize, ParseError> {
    let err = ParseError { expected: BYTES };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| err.clone())?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(err),
    };
    n.checked_mul(mult).ok_or(err)
}

/// Parses `true`/`false` (also `1`/`0`, `yes`/`no`).
pub fn boolean(s: &str) -> Result<bool, ParseError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ParseError { expected: BOOL }),
    }
}

/// Parses a count that must be at least one.
pub fn count(s: &str) -> Result<usize, ParseError> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ParseError { expected: COUNT }),
    }
}

/// Takes any text as it is (names, filters, paths).
pub fn text(s: &str) -> Result<String, ParseError> {
    Ok(s.to_string())
}

/// Parses a socket address (IP and port; host names are not resolved).
pub fn addr(s: &str) -> Result<SocketAddr, ParseError> {
    s.trim().parse().map_err(|_| ParseError { expected: ADDR })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_or_off() {
        assert_eq!(interval_or_off("off"), Ok(None));
        assert_eq!(
            interval_or_off("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert!(interval_or_off("0ms").is_err());
        assert!(interval_or_off("never").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "30", "s", "1.5s", "-1s", "10 parsecs", "5d"] {
            assert!(duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes("16384"), Ok(16384));
        assert_eq!(bytes("16KiB"), Ok(16384));
        assert_eq!(bytes("1MiB"), Ok(1 << 20));
        for bad in ["", "KiB", "1MB", "1.5MiB", "-1"] {
            assert!(bytes(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn booleans_counts_addrs() {
        assert_eq!(boolean("TRUE"), Ok(true));
        assert_eq!(boolean("0"), Ok(false));
        assert!(boolean("maybe").is_err());
        assert_eq!(count("4"), Ok(4));
        assert!(count("0").is_err());
        assert!(count("four").is_err());
        assert!(addr("127.0.0.1:0").is_ok());
        assert!(addr("localhost:80").is_err());
    }
}
