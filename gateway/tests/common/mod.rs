//! Helpers for the gateway's tests: start it in-process on each driver, speak raw HTTP/1.1.
#![allow(dead_code)]

pub mod process;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use ringgate::{
    config::{Config, DriverChoice},
    Gateway,
};

/// The drivers to run each test on: epoll always, io_uring where the kernel allows it.
pub fn drivers() -> Vec<DriverChoice> {
    let mut v = vec![DriverChoice::Epoll];
    if monoio::utils::detect_uring() {
        v.push(DriverChoice::IoUring);
    } else {
        eprintln!("io_uring is refused here: running the epoll driver only");
    }
    v
}

/// A config for tests: loopback, port 0, two cores, no pinning, short timeouts.
pub fn test_config(driver: DriverChoice, extra: &[(&'static str, &'static str)]) -> Config {
    let mut map: HashMap<&str, &str> = HashMap::from([
        ("RINGGATE_LISTEN", "127.0.0.1:0"),
        ("RINGGATE_WORKERS", "2"),
        ("RINGGATE_PIN_CORES", "false"),
        ("RINGGATE_DRAIN_TIMEOUT", "5s"),
    ]);
    map.extend(extra.iter().copied());
    let mut c = Config::from_strings(&map).expect("test config is valid");
    c.driver = driver;
    c
}

/// Starts a gateway in-process and returns it with its plain address.
pub fn start(config: Config) -> (Gateway, SocketAddr) {
    let g = Gateway::start(config).expect("gateway starts");
    let addr = g.plain_addr().expect("plain listener");
    (g, addr)
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection.
pub struct Client {
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// Reads one response (Content-Length framed); `head_only` for HEAD requests.
    pub fn read_response(&mut self, head_only: bool) -> Resp {
        self.try_read_response(head_only).expect("a response")
    }

    pub fn try_read_response(&mut self, head_only: bool) -> Option<Resp> {
        read_response(&mut self.reader, head_only)
    }

    /// True when the server has closed the connection (EOF or reset) within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// Reads one Content-Length framed response from any reader.
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> Option<Resp> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 100 {
        return Some(resp);
    }
    let len: usize = resp
        .header("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    if !head_only {
        resp.body = vec![0; len];
        reader.read_exact(&mut resp.body).ok()?;
    }
    Some(resp)
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    c.read_response(false)
}

/// Waits until `cond` holds or panics after `limit`.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}
