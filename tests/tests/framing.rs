//! Message framing (RFC 9112) end to end: one codec for every route. Malformed and
//! ambiguous requests get the same answer on `/sql` and on a proxied route, a bare LF head
//! is refused at once, and a corpus of such requests is sent both to ringgate (proxying to
//! hyper, an independent HTTP/1.1 implementation) and to hyper directly: wherever ringgate
//! lets a request through, both must agree on where it ends. Needs no backend.

use std::{
    convert::Infallible,
    io::{BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response};
use ringgate::Gateway;
use ringgate_tests::{
    gateway::start,
    http::{read_response, Resp},
    worker::TestWorker,
};

/// Requests for `/p/next` that reached the hyper worker through ringgate (with its `via`).
static NEXT_VIA_RINGGATE: AtomicUsize = AtomicUsize::new(0);

/// A hyper HTTP/1.1 server on 127.0.0.1 answering every request with what it saw:
/// `<method> <target> <body length> <body>`, with `x-worker: hyper`. Runs until the test
/// process ends.
fn hyper_worker() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind hyper");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let (parts, body) = req.into_parts();
                        if parts.uri.path() == "/p/next" && parts.headers.contains_key("via") {
                            NEXT_VIA_RINGGATE.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = match body.collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(e) => Bytes::from(format!("<body error: {e}>")),
                        };
                        let text = format!(
                            "{} {} {} {}",
                            parts.method,
                            parts.uri,
                            body.len(),
                            String::from_utf8_lossy(&body)
                        );
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-worker", "hyper")
                                .body(Full::new(Bytes::from(text)))
                                .unwrap(),
                        )
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

/// Sends `bytes` on a fresh connection and reads responses until the connection closes
/// (or stays silent for 3 s).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Resp> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    let mut reader = BufReader::new(s);
    let mut out = Vec::new();
    while let Some(r) = read_response(&mut reader) {
        out.push(r);
    }
    out
}

/// The framing refusals' codes (`gateway/src/error.rs`).
const FRAMING_CODES: &[&str] = &[
    "malformed_request",
    "ambiguous_framing",
    "unsupported_transfer_coding",
    "malformed_body",
];

/// A response ringgate made itself (not a worker's): (status, code, message).
fn own_answer(r: &Resp) -> Option<(u16, String, String)> {
    if r.header("x-worker").is_some() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    Some((
        r.status,
        v["code"].as_str()?.to_string(),
        v["message"].as_str()?.to_string(),
    ))
}

/// What ringgate must do with a request of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Pass it on whole (a worker answers it).
    Accept,
    /// Refuse it with this status and close the connection.
    Refuse(u16),
}

/// Requests with `{path}` for the target, the last line of each head still to come.
const CORPUS: &[(&str, &str, Verdict)] = &[
    // Well-formed: the baseline every side must agree on.
    (
        "chunked",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Verdict::Accept,
    ),
    (
        "chunked, extensions and trailers",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c=\"d;e\"\r\nhello\r\n6 ;x\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        Verdict::Accept,
    ),
    (
        "leading zeros",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n000\r\n\r\n",
        Verdict::Accept,
    ),
    (
        "content-length",
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        Verdict::Accept,
    ),
    (
        "repeated equal content-length",
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        Verdict::Accept,
    ),
    // Chunk sizes.
    (
        "size with a leading space",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "size with a trailing space",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "size with a trailing tab",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\t\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "size with a plus sign",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "size with a minus sign",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "size with 0x",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "size that overflows 64 bits",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "empty size",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "size line ending in a bare LF",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "extension with a bare CR",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "extension with a bare LF",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "chunk data longer than its size",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "chunk data ending in a bare LF",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "trailer with a bare LF",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: a\nY: b\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "last chunk ending in a bare LF",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n",
        Verdict::Refuse(400),
    ),
    (
        "folded trailer",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n",
        Verdict::Refuse(400),
    ),
    // Heads.
    (
        "bare LF head",
        "POST {path} HTTP/1.1\nHost: t\nContent-Length: 5\n\nhello",
        Verdict::Refuse(400),
    ),
    (
        "one bare LF in a head",
        "POST {path} HTTP/1.1\r\nHost: t\nContent-Length: 5\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
    (
        "bare CR in a head",
        "POST {path} HTTP/1.1\r\nHost: t\rContent-Length: 5\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
    (
        "folded header",
        "POST {path} HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n 2\r\nContent-Length: 5\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
    (
        "space before the colon",
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
    (
        "content-length and transfer-encoding",
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "differing content-lengths",
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 4\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
    (
        "signed content-length",
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
    (
        "transfer-encoding in HTTP/1.0",
        "POST {path} HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(400),
    ),
    (
        "chunked twice",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(501),
    ),
    (
        "a coding that is not chunked",
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Verdict::Refuse(501),
    ),
    (
        "two Host headers",
        "POST {path} HTTP/1.1\r\nHost: t\r\nHost: u\r\nContent-Length: 5\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
    (
        "Host disagreeing with an absolute-form target",
        "POST http://u{path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        Verdict::Refuse(400),
    ),
];

/// A gateway with `/p` proxied to `worker` (and `/sql` its own).
fn gateway_to(worker: SocketAddr) -> (Gateway, SocketAddr) {
    let upstreams = format!("g={worker}");
    start(&[
        ("RINGGATE_ROUTES", "/p=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
    ])
}

/// The request `case` for `path`, then a second request the connection must reach when
/// the first one ends where it should.
fn with_sentinel(case: &str, path: &str, sentinel: &str) -> Vec<u8> {
    let mut bytes = case.replace("{path}", path).into_bytes();
    bytes.extend_from_slice(
        format!("GET {sentinel} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    bytes
}

#[test]
fn test_framing_corpus_same_answer_on_every_route_and_the_same_ends_as_hyper() {
    let hyper = hyper_worker();
    let (_g, addr) = gateway_to(hyper);
    let mut lenient_hyper = Vec::new();
    for (name, case, verdict) in CORPUS {
        let next_before = NEXT_VIA_RINGGATE.load(Ordering::SeqCst);
        let proxied = exchange(addr, &with_sentinel(case, "/p/x", "/p/next"));
        let next_seen = NEXT_VIA_RINGGATE.load(Ordering::SeqCst) - next_before;
        let direct = exchange(hyper, &with_sentinel(case, "/p/x", "/p/next"));
        let own = exchange(addr, &with_sentinel(case, "/sql", "/health"));
        match verdict {
            Verdict::Refuse(status) => {
                // Refused before anything reached a worker, or mid-body (the worker's
                // connection is dropped): ringgate's own answer, then the connection closes,
                // so nothing after the request is ever read as a request.
                assert_eq!(proxied.len(), 1, "{name}: proxied: {proxied:?}");
                assert_eq!(next_seen, 0, "{name}: the next request reached the worker");
                let answer = own_answer(&proxied[0])
                    .unwrap_or_else(|| panic!("{name}: the worker answered: {proxied:?}"));
                assert_eq!(answer.0, *status, "{name}: {answer:?}");
                assert!(
                    FRAMING_CODES.contains(&answer.1.as_str()),
                    "{name}: {answer:?}"
                );
                assert_eq!(own.len(), 1, "{name}: /sql: {own:?}");
                assert_eq!(
                    own_answer(&own[0]),
                    Some(answer.clone()),
                    "{name}: /sql and the proxied route answer differently"
                );
                // hyper answers the head before its handler reads the body: it took the
                // request only when the body came whole.
                if direct.first().is_some_and(|r| {
                    r.header("x-worker").is_some() && !r.text().contains("<body error")
                }) {
                    lenient_hyper.push(*name);
                }
            }
            Verdict::Accept => {
                // What hyper saw through ringgate is what it sees when sent the bytes
                // itself: the same requests, each ending at the same byte.
                let seen =
                    |rs: &[Resp]| rs.iter().map(|r| (r.status, r.text())).collect::<Vec<_>>();
                assert_eq!(seen(&proxied), seen(&direct), "{name}");
                assert_eq!(proxied.len(), 2, "{name}: {proxied:?}");
                assert!(
                    proxied
                        .iter()
                        .all(|r| r.header("x-worker") == Some("hyper")),
                    "{name}: {proxied:?}"
                );
                assert!(
                    proxied[0].text().ends_with(" 5 hello")
                        || proxied[0].text().ends_with(" 11 hello world"),
                    "{name}: {proxied:?}"
                );
                assert_eq!(proxied[1].text(), "GET /p/next 0 ", "{name}");
                assert_eq!(next_seen, 1, "{name}");
                // `/sql` reads the same body (its answer is about the missing database,
                // not the framing) and then the next request.
                assert_eq!(own.len(), 2, "{name}: /sql: {own:?}");
                let first = own_answer(&own[0]).expect("ringgate's own answer");
                assert!(
                    !FRAMING_CODES.contains(&first.1.as_str()),
                    "{name}: {first:?}"
                );
                assert_eq!(
                    (own[1].status, own[1].text()),
                    (200, r#"{"status":"ok"}"#.into()),
                    "{name}"
                );
            }
        }
    }
    // Where hyper is more lenient than ringgate, ringgate's refusal closes the connection:
    // there is no end to disagree about. Listed for whoever reads the output.
    eprintln!("refused by ringgate, accepted by hyper: {lenient_hyper:?}");
}

#[test]
fn test_framing_bare_lf_heads_are_refused_at_once_on_every_route() {
    let w = TestWorker::start("lf");
    let (_g, addr) = gateway_to(w.addr);
    for path in ["/p/x", "/sql", "/health"] {
        for head in [
            format!("GET {path} HTTP/1.1\nHost: t\n\n"),
            // Incomplete: refused before the head would end.
            format!("GET {path} HTTP/1.1\r\nHost: t\n"),
        ] {
            let started = Instant::now();
            let r = exchange(addr, head.as_bytes());
            assert_eq!(r.len(), 1, "{head:?}: {r:?}");
            assert_eq!(r[0].status, 400, "{head:?}: {}", r[0].text());
            assert_eq!(r[0].json()["code"], "malformed_request");
            // The header timeout is 10 s; the answer comes at once.
            assert!(started.elapsed() < Duration::from_secs(2), "{head:?}");
        }
    }
    assert_eq!(w.count(), 0);
}
