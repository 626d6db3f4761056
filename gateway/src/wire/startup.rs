//! The first message of a PostgreSQL connection: `SSLRequest`, `GSSENCRequest`,
//! `CancelRequest` or a protocol 3.0 `StartupMessage`, parsed with strict limits.

/// Longest startup packet accepted (PostgreSQL's own `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_BYTES: usize = 10_000;
/// Parameters accepted in one startup packet.
const MAX_PARAMS: usize = 64;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;

/// What a client's first packet asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// TLS, please (`SSLRequest`).
    Ssl,
    /// GSSAPI encryption, please (declined).
    GssEnc,
    /// Cancel the query of the session with this key.
    Cancel {
        /// The process id ringgate handed out.
        pid: i32,
        /// The secret key ringgate handed out.
        key: i32,
    },
    /// A session.
    Start(Params),
}

/// The parameters of a `StartupMessage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// `user` (required).
    pub user: String,
    /// `database` (defaults to the user name).
    pub database: String,
    /// `options` (command-line options; ringgate reads `endpoint=`/`project=` from it).
    pub options: String,
    /// `application_name`, when sent.
    pub application_name: Option<String>,
}

/// Why a startup packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Its length is below 8 or above [`MAX_STARTUP_BYTES`].
    #[error("invalid length of startup packet: {0} bytes (at most {MAX_STARTUP_BYTES})")]
    Length(usize),
    /// A protocol version other than 3.0.
    #[error("unsupported frontend protocol {0}.{1}: ringgate supports 3.0")]
    Protocol(u32, u32),
    /// Not NUL-terminated names and values, not UTF-8, or too many of them.
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
    /// No `user` parameter.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
}

impl StartupError {
    /// The SQLSTATE PostgreSQL uses for it.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            StartupError::Length(_) | StartupError::Malformed(_) => "08P01",
            StartupError::Protocol(..) => "0A000",
            StartupError::NoUser => "28000",
        }
    }
}

/// The length of a startup packet (including its 4-byte length), checked.
pub fn packet_len(head: [u8; 4]) -> Result<usize, StartupError> {
    let len = u32::from_be_bytes(head) as usize;
    if !(8..=MAX_STARTUP_BYTES).contains(&len) {
        return Err(StartupError::Length(len));
    }
    Ok(len)
}

/// Parses a startup packet's body (everything after its length).
pub fn parse(body: &[u8]) -> Result<Startup, StartupError> {
    let code = u32::from_be_bytes(body[..4].try_into().expect("length checked"));
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(Startup::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Ok(Startup::GssEnc),
        CANCEL_REQUEST if rest.len() == 8 => Ok(Startup::Cancel {
            pid: i32::from_be_bytes(rest[..4].try_into().expect("8 bytes")),
            key: i32::from_be_bytes(rest[4..].try_into().expect("8 bytes")),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            Err(StartupError::Malformed("request of the wrong length"))
        }
        PROTOCOL_3_0 => params(rest).map(Startup::Start),
        other => Err(StartupError::Protocol(other >> 16, other & 0xffff)),
    }
}

fn params(mut rest: &[u8]) -> Result<Params, StartupError> {
    let mut p = Params::default();
    let mut database = None;
    let mut n = 0;
    loop {
        let (name, after) = cstr(rest)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("bytes after the terminator"));
            }
            break;
        }
        let (value, after) = cstr(after)?;
        rest = after;
        n += 1;
        if n > MAX_PARAMS {
            return Err(StartupError::Malformed("too many parameters"));
        }
        match name {
            "user" => p.user = value.to_string(),
            "database" => database = Some(value.to_string()),
            "options" => p.options = value.to_string(),
            "application_name" => p.application_name = Some(value.to_string()),
            _ => {}
        }
    }
    if p.user.is_empty() {
        return Err(StartupError::NoUser);
    }
    p.database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| p.user.clone());
    Ok(p)
}

/// A NUL-terminated UTF-8 string and what follows it.
fn cstr(b: &[u8]) -> Result<(&str, &[u8]), StartupError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(StartupError::Malformed("missing terminator"))?;
    let s = std::str::from_utf8(&b[..end]).map_err(|_| StartupError::Malformed("not UTF-8"))?;
    Ok((s, &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, v) in pairs {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn a_startup_message_gives_user_database_and_options() {
        let p = parse(&startup(&[
            ("user", "alpha_owner"),
            ("database", "tenant_alpha"),
            ("options", "endpoint=alpha"),
            ("application_name", "psql"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            Startup::Start(Params {
                user: "alpha_owner".into(),
                database: "tenant_alpha".into(),
                options: "endpoint=alpha".into(),
                application_name: Some("psql".into()),
            })
        );
        let Startup::Start(p) = parse(&startup(&[("user", "u")])).unwrap() else {
            panic!()
        };
        assert_eq!(p.database, "u", "the database defaults to the user");
    }

    #[test]
    fn requests_are_recognised() {
        assert_eq!(parse(&SSL_REQUEST.to_be_bytes()).unwrap(), Startup::Ssl);
        assert_eq!(
            parse(&GSSENC_REQUEST.to_be_bytes()).unwrap(),
            Startup::GssEnc
        );
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(parse(&c).unwrap(), Startup::Cancel { pid: 7, key: -9 });
    }

    #[test]
    fn bad_packets_are_refused_with_their_sqlstate() {
        assert_eq!(packet_len(4u32.to_be_bytes()), Err(StartupError::Length(4)));
        assert_eq!(
            packet_len(100_000u32.to_be_bytes()),
            Err(StartupError::Length(100_000))
        );
        assert_eq!(
            packet_len((MAX_STARTUP_BYTES as u32).to_be_bytes()),
            Ok(MAX_STARTUP_BYTES)
        );
        let e = parse(&0x0002_0000u32.to_be_bytes()).unwrap_err();
        assert_eq!(e, StartupError::Protocol(2, 0));
        assert_eq!(e.sqlstate(), "0A000");
        assert_eq!(
            parse(&startup(&[("database", "d")])),
            Err(StartupError::NoUser)
        );
        let mut unterminated = startup(&[("user", "u")]);
        unterminated.truncate(unterminated.len() - 2);
        assert!(matches!(
            parse(&unterminated),
            Err(StartupError::Malformed(_))
        ));
        let mut junk = startup(&[("user", "u")]);
        junk.push(b'x');
        assert!(matches!(parse(&junk), Err(StartupError::Malformed(_))));
        let many: Vec<(String, String)> = (0..100)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(matches!(
            parse(&startup(&many)),
            Err(StartupError::Malformed(_))
        ));
        let mut bad_utf8 = PROTOCOL_3_0.to_be_bytes().to_vec();
        bad_utf8.extend_from_slice(b"user\0\xff\0\0");
        assert!(matches!(parse(&bad_utf8), Err(StartupError::Malformed(_))));
    }
}
