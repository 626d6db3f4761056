//! A minimal blocking HTTP/1.1 client for tests: raw requests, Content-Length responses.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

// The kit's, which the gateway's own tests share.
pub use ringgate_testkit::http::Resp;

/// Reads one response to a request that is not HEAD from `reader`: the kit's
/// [`read_response`](ringgate_testkit::http::read_response) with a body.
pub fn read_response(reader: &mut impl BufRead) -> Option<Resp> {
    ringgate_testkit::http::read_response(reader, false)
}

/// Sends one request on a fresh connection and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to ringgate");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: test\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let sent = Instant::now();
    let mut reader = BufReader::new(s);
    read_response(&mut reader).unwrap_or_else(|| {
        // Say how it ended: closed (and what came), or nothing within the read timeout.
        let mut rest = Vec::new();
        let end = reader.read_to_end(&mut rest);
        panic!(
            "no response to {method} {path} from {addr} after {:?}: {end:?}, {} more bytes \
             {:?}",
            sent.elapsed(),
            rest.len(),
            String::from_utf8_lossy(&rest[..rest.len().min(200)])
        )
    })
}

/// `GET path` on an admin endpoint with the test gateway's admin token.
pub fn admin_get(addr: SocketAddr, path: &str) -> Resp {
    let bearer = format!("Bearer {}", crate::gateway::ADMIN_TOKEN);
    request(addr, "GET", path, &[("Authorization", &bearer)], b"")
}

/// GETs `path` until the body starts with `name` (a proxy test worker's answer); returns
/// how long it took. Panics after `limit`.
pub fn wait_for_worker(addr: SocketAddr, path: &str, name: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = request(addr, "GET", path, &[], b"");
        if r.status == 200 && r.text().starts_with(name) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{name} got no request within {limit:?} (last: {} {})",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum over every label set of the counter `name` on ringgate's `/metrics`.
pub fn metric_total(addr: SocketAddr, name: &str) -> u64 {
    metric_total_where(addr, name, "")
}

/// The sum of the counter `name` over the label sets whose line contains `label` (e.g.
/// `reason="read"`).
pub fn metric_total_where(addr: SocketAddr, name: &str, label: &str) -> u64 {
    let metrics = request(addr, "GET", "/metrics", &[], b"").text();
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `POST /sql` with a connection string and a JSON body; the status and the error `code`
/// (empty when the answer has none).
pub fn post_sql(
    addr: SocketAddr,
    connection_string: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let r = request(
        addr,
        "POST",
        "/sql",
        &[("Neon-Connection-String", connection_string)],
        body.to_string().as_bytes(),
    );
    let code = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (r.status, code)
}

/// `promtool check metrics` (Debian's prometheus package) accepts `text`: it parses, and
/// lints clean (names, duplicates).
pub fn promtool_accepts(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {:?}: {}{}\n{text}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
