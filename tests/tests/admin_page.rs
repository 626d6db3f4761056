//! The `/admin` page as an operator sees it: headless Chromium (Debian's `chromium`, driven
//! by puppeteer-core from tests/browser) opens it with the admin token, against ringgate
//! following the real Patroni cluster, and takes a screenshot. The test checks what the
//! browser rendered (the DOM after parsing) and that the screenshot is a page, not a blank
//! or an error.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ringgate_tests::{
    backend::{alpha_conn_string, required},
    gateway::{start, ADMIN_TOKEN},
    http::{admin_get, request},
    worker::TestWorker,
};

/// Opens `url` in headless Chromium with the admin token, saves a screenshot to `shot`
/// and returns the rendered DOM.
fn chromium(url: &str, shot: &Path) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/screenshot.mjs");
    let out = Command::new("timeout")
        .args(["90", "node", script, url, ADMIN_TOKEN])
        .arg(shot)
        .output()
        .expect("run node (scripts/test installs tests/browser's puppeteer-core)");
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Decodes the PNG at `path`: `(width, height, distinct colours, share of pixels that are
/// not the background colour)`.
fn png_figures(path: &Path) -> (u32, u32, usize, f64) {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("screenshot written"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("one frame");
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let mut counts = std::collections::HashMap::<&[u8], usize>::new();
    for p in &pixels {
        *counts.entry(p).or_default() += 1;
    }
    let background = counts.values().copied().max().unwrap_or(0);
    let inked = 1.0 - background as f64 / pixels.len() as f64;
    (info.width, info.height, counts.len(), inked)
}

/// Waits until every core has published pool figures with at least one server connection.
fn wait_for_pools(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin_get(addr, "/admin/status").json();
        let open: u64 = v["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["server_connections"].as_u64())
            .sum();
        if open > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pool figures published: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_admin_page_renders_in_headless_chromium_with_a_screenshot() {
    let worker = TestWorker::start("page");
    let upstreams = format!("web={}", worker.addr);
    let etcd = required("RINGGATE_ETCD_ENDPOINTS");
    let scope = required("RINGGATE_PATRONI_SCOPE");
    let (_g, addr) = start(&[
        ("RINGGATE_WORKERS", "2"),
        ("RINGGATE_ETCD_ENDPOINTS", etcd.as_str()),
        ("RINGGATE_PATRONI_SCOPE", scope.as_str()),
        ("RINGGATE_ROUTES", "/app=web"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
    ]);
    let cs = alpha_conn_string();
    for _ in 0..4 {
        let r = request(
            addr,
            "POST",
            "/sql",
            &[("Neon-Connection-String", cs.as_str())],
            br#"{"query": "select count(*) from items"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_for_pools(addr);
    let status = admin_get(addr, "/admin/status").json();
    let leader = status["topology"]["leader"]["name"]
        .as_str()
        .expect("a leader from Patroni")
        .to_string();

    let url = format!("http://{addr}/admin");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    let _ = std::fs::remove_file(&shot);
    let dom = chromium(&url, &shot);
    for expected in [
        "<h1>ringgate</h1>",
        "Pools per core",
        &format!("<td>{leader}</td><td>leader</td>"),
        &worker.addr.to_string(),
        "leader changes",
    ] {
        assert!(
            dom.contains(expected),
            "the rendered page lacks {expected:?}:\n{dom}"
        );
    }
    let rows = dom.matches("<tr>").count();
    assert!(
        rows >= 8,
        "topology, two cores of pools and a worker: {dom}"
    );
    let (w, h, colours, inked) = png_figures(&shot);
    println!(
        "screenshot {}: {w}x{h}, {colours} colours, {:.1}% of pixels not background",
        shot.display(),
        inked * 100.0
    );
    assert_eq!((w, h), (1280, 1000));
    assert!(
        colours >= 16,
        "text is anti-aliased: a rendered page has many colours"
    );
    assert!(
        (0.005..0.6).contains(&inked),
        "a page of tables on a white background, not blank and not an error fill"
    );
}
