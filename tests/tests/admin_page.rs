//! The `/admin` page as an operator sees it: headless Chromium (Debian's `chromium`) opens
//! it with the token as Basic credentials, against ringgate following the real Patroni
//! cluster, and takes a screenshot. The test checks what the browser rendered (the DOM
//! after parsing) and that the screenshot is a page, not a blank or an error.

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

/// Runs Chromium headless on `url` with `mode` (`--dump-dom` or `--screenshot=...`);
/// returns its standard output.
fn chromium(url: &str, mode: &str, profile: &Path) -> String {
    let out = Command::new("timeout")
        .args([
            "90",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .output()
        .expect("run chromium (scripts/install-deps installs Debian's chromium)");
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
            br#"{"query": "insert into items (name) values ('admin page') returning id"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_for_pools(addr);
    let status = admin_get(addr, "/admin/status").json();
    let leader = status["topology"]["leader"]["name"]
        .as_str()
        .expect("a leader from Patroni")
        .to_string();

    let profile = tempfile_dir("chromium-profile");
    let url = format!("http://ops:{ADMIN_TOKEN}@{addr}/admin");
    let dom = chromium(&url, "--dump-dom", &profile);
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
    assert!(rows >= 8, "topology, two cores of pools and a worker: {dom}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &format!("--screenshot={}", shot.display()),
        &profile,
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
    let _ = std::fs::remove_dir_all(&profile);
}

/// A fresh directory under the target dir's tmp (cleaned at the next run).
fn tempfile_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a profile dir");
    dir
}
