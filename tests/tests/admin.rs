//! Admin endpoints: off without a token, 401 with a wrong one, status JSON and HTML with
//! the right one. Needs no backend.

use ringgate_tests::{
    gateway::start,
    http::{admin_get, request},
    worker::TestWorker,
};

#[test]
fn test_admin_endpoints_are_off_without_a_token() {
    let (_g, addr) = start(&[("RINGGATE_ADMIN_TOKEN", "")]);
    for path in ["/admin", "/admin/status", "/admin/upstreams"] {
        let r = admin_get(addr, path);
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (404, Some("admin_disabled")),
            "{path}"
        );
    }
}

#[test]
fn test_admin_endpoints_need_the_right_token() {
    let (_g, addr) = start(&[]);
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token"),
        Some("Basic abc"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = request(addr, "GET", "/admin/status", &headers, b"");
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.json()["code"], "admin_unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer, Basic realm=\"ringgate admin\"")
        );
    }
    // A browser's Basic credentials: any user name, the token as the password.
    let basic = |user_pass: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    let wrong = basic("admin:wrong-token-wrong-token");
    let r = request(addr, "GET", "/admin", &[("Authorization", &wrong)], b"");
    assert_eq!(r.status, 401);
    let right = basic(&format!("ops:{}", ringgate_tests::gateway::ADMIN_TOKEN));
    let r = request(addr, "GET", "/admin", &[("Authorization", &right)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(addr, "POST", "/admin/status", &[], b"");
    assert_eq!(r.status, 405);
}

#[test]
fn test_admin_status_json_and_page_show_the_core_and_its_upstreams() {
    let w = TestWorker::start("adm");
    let upstreams = format!("web={}", w.addr);
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/app=web"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
    ]);
    let s = admin_get(addr, "/admin/status");
    assert_eq!(s.status, 200, "{}", s.text());
    let v = s.json();
    assert_eq!(v["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["core"], 0);
    assert_eq!(v["draining"], false);
    assert_eq!(v["redis"]["configured"], false);
    let workers = v["upstreams"]["groups"]["web"].as_array().unwrap();
    assert_eq!(workers[0]["addr"], w.addr.to_string());
    assert_eq!(workers[0]["healthy"], true);
    let page = admin_get(addr, "/admin");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    for id in ["build", "topology", "pools", "upstreams", "redis"] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "section {id} missing"
        );
    }
    assert!(html.contains(&w.addr.to_string()));
    // Admin paths are never proxied, even under a catch-all route.
    assert_eq!(admin_get(addr, "/admin/nothing").status, 404);
}
