//! Helpers for the gateway's tests: start it in-process on each driver, speak raw HTTP/1.1.
#![allow(dead_code)]

pub mod process;

use std::{
    collections::HashMap,
    io::{BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use ringgate::{
    config::{Config, DriverChoice},
    Gateway,
};
// The fixtures every crate's tests share (not every test binary takes each).
#[allow(unused_imports)]
pub use ringgate_testkit::{
    eventually,
    http::{read_response, Resp},
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

/// A raw client connection.
pub struct Client {
    /// The connection, buffered for reading responses (write through `get_mut`).
    pub reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects to `addr` with a 10 s read timeout.
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            reader: BufReader::new(s),
        }
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// Reads one response (Content-Length framed); `head_only` for HEAD requests.
    pub fn read_response(&mut self, head_only: bool) -> Resp {
        self.try_read_response(head_only).expect("a response")
    }

    /// Reads one response, or `None` when the connection ends (or times out) first.
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

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    c.read_response(false)
}
