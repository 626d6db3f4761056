//! The protocol layer against the real server (compose/cluster): authentication, TLS, text
//! results for types no client-side conversion covers, the server's own command tags,
//! errors that leave the connection usable, pipelines, the size limit, cancel.
//! Needs `RINGGATE_TEST_ALPHA_URL` and `RINGGATE_TEST_PG_CA` (`eval "$(compose/cluster up)"`).

use std::{sync::Arc, time::Duration};

use ringgate_pgwire::{ConnectConfig, Connection, Error};

fn required(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{name} is not set: run `eval \"$(compose/cluster up)\"` first"))
}

/// `postgresql://user:password@host:port/database` → a connect config.
fn config(url: &str) -> ConnectConfig {
    let rest = url.split_once("://").expect("a URL").1;
    let (userinfo, hostpart) = rest.rsplit_once('@').expect("user@host");
    let (user, password) = userinfo.split_once(':').expect("user:password");
    let (hostport, database) = hostpart.split_once('/').expect("/database");
    let addr = hostport.parse().expect("ip:port");
    ConnectConfig {
        addr,
        host: hostport.rsplit_once(':').unwrap().0.to_string(),
        user: user.into(),
        password: password.into(),
        database: database.split('?').next().unwrap().into(),
        options: "-c statement_timeout=5000".into(),
        application_name: "ringgate-pgwire-test".into(),
        tls: None,
    }
}

/// Runs a test body on a monoio runtime; a body that hangs (a lost message) fails after
/// 30 s instead of holding up the suite.
fn run<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("a runtime")
        .block_on(async {
            monoio::time::timeout(Duration::from_secs(30), f)
                .await
                .expect("the test body finished within 30 s")
        })
}

fn none() -> Vec<Option<String>> {
    vec![]
}

#[test]
#[ignore = "needs compose/cluster"]
fn text_results_tags_errors_and_pipelines_against_the_server() {
    run(async {
        let cfg = config(&required("RINGGATE_TEST_ALPHA_URL"));
        let mut c = Connection::connect(&cfg, 64).await.expect("SCRAM login");
        let r = c
            .query(
                "select $1::int + 1 as n, 'x'::text as t, null::int as z",
                &[Some("41".into())],
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(
            r.rows,
            vec![vec![Some("42".into()), Some("x".into()), None]]
        );
        assert_eq!(
            (r.tag.as_str(), r.command.as_str(), r.row_count),
            ("SELECT 1", "SELECT", 1)
        );
        let oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        assert_eq!(oids, [23, 25, 23]);

        // The server's own text, for types a client-side conversion never covered.
        let r = c
            .query(
                "select 12.5::money as m, 'pg_class'::regclass as c, 'a fat cat'::tsvector as v, \
                 '[1,3)'::int4range as r, '{1,NULL,3}'::int[] as a, interval '1 day 02:00' as i",
                &none(),
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(
            r.rows[0],
            [
                "$12.50",
                "pg_class",
                "'a' 'cat' 'fat'",
                "[1,3)",
                "{1,NULL,3}",
                "1 day 02:00:00"
            ]
            .map(|s| Some(s.to_string()))
        );

        // Tags as the server sends them: WITH ... INSERT is an INSERT.
        c.simple("create temp table t (x int)").await.unwrap();
        let r = c
            .query(
                "with v as (select 3 as x) insert into t select x from v",
                &none(),
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.tag.as_str(), r.command.as_str(), r.row_count),
            ("INSERT 0 1", "INSERT", 1)
        );
        let r = c
            .query("update t set x = x + 1", &none(), 1 << 20)
            .await
            .unwrap();
        assert_eq!((r.command.as_str(), r.row_count), ("UPDATE", 1));

        // Errors: the connection stays usable; a statement that parsed stays cached.
        let e = c.query("selec 1", &none(), 1 << 20).await.unwrap_err();
        assert_eq!(e.db().map(|d| d.code.as_str()), Some("42601"), "{e}");
        let zero = "select 1 / $1::int as q";
        let e = c
            .query(zero, &[Some("0".into())], 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(e.db().map(|d| d.code.as_str()), Some("22012"));
        let cached = c.cached_statements();
        let r = c.query(zero, &[Some("2".into())], 1 << 20).await.unwrap();
        assert_eq!(r.rows[0][0].as_deref(), Some("0"));
        assert_eq!(c.cached_statements(), cached, "reused, not parsed again");
        let e = c.query("select $1::int", &[], 1 << 20).await.unwrap_err();
        assert_eq!(e.db().map(|d| d.code.as_str()), Some("08P01"), "{e}");
        assert!(!c.is_broken());

        // A pipeline: one write, answers in order, one error touches no other job.
        let p1 = [Some("1".to_string())];
        let results = c
            .pipeline(
                &[
                    ("select $1::int as a", &p1[..]),
                    ("select 1/0", &[]),
                    ("select 'z' as b", &[]),
                    ("select $1::int as a", &p1[..]),
                ],
                1 << 20,
            )
            .await;
        assert_eq!(results.len(), 4);
        assert_eq!(
            results[0].as_ref().unwrap().rows[0][0].as_deref(),
            Some("1")
        );
        assert_eq!(results[1].as_ref().unwrap_err().db().unwrap().code, "22012");
        assert_eq!(
            results[2].as_ref().unwrap().rows[0][0].as_deref(),
            Some("z")
        );
        assert_eq!(
            results[3].as_ref().unwrap().rows[0][0].as_deref(),
            Some("1")
        );

        // Too large: refused, the rest read and dropped, the connection usable.
        let e = c
            .query(
                "select repeat('x', 1000) from generate_series(1, 10)",
                &none(),
                500,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::TooLarge { limit: 500 }), "{e}");
        assert_eq!(
            c.query("select 7", &none(), 100).await.unwrap().rows[0][0].as_deref(),
            Some("7")
        );

        // A result far larger than one read: every message split across reads arrives whole.
        let r = c
            .query(
                "select i, repeat('y', 70000) as v from generate_series(1, 40) i",
                &none(),
                8 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.rows.len(), 40);
        assert!(r.rows.iter().enumerate().all(|(i, row)| {
            row[0].as_deref() == Some((i + 1).to_string().as_str())
                && row[1]
                    .as_deref()
                    .is_some_and(|v| v.len() == 70000 && v.bytes().all(|b| b == b'y'))
        }));

        // Transactions through the simple protocol.
        c.simple("begin").await.unwrap();
        assert_eq!(c.transaction_status(), b'T');
        assert!(c.query("select 1/0", &none(), 100).await.is_err());
        assert_eq!(c.transaction_status(), b'E');
        c.simple("rollback").await.unwrap();
        assert_eq!(c.transaction_status(), b'I');
        c.close().await;
    });
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_running_query_is_cancelled_and_a_wrong_password_refused() {
    run(async {
        let cfg = config(&required("RINGGATE_TEST_ALPHA_URL"));
        let mut c = Connection::connect(&cfg, 8).await.unwrap();
        let token = c.cancel_token();
        monoio::spawn(async move {
            monoio::time::sleep(Duration::from_millis(300)).await;
            token.cancel().await.expect("cancel sent");
        });
        let started = std::time::Instant::now();
        let e = c
            .query("select pg_sleep(10)", &none(), 100)
            .await
            .unwrap_err();
        assert_eq!(e.db().map(|d| d.code.as_str()), Some("57014"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            c.query("select 1", &none(), 100).await.unwrap().rows.len(),
            1
        );

        let wrong = ConnectConfig {
            password: "wrong".into(),
            ..cfg
        };
        let e = Connection::connect(&wrong, 8).await.unwrap_err();
        assert_eq!(e.db().map(|d| d.code.as_str()), Some("28P01"), "{e}");
    });
}

#[test]
#[ignore = "needs compose/cluster"]
fn tls_verified_against_the_backends_ca() {
    run(async {
        let pem = std::fs::read(required("RINGGATE_TEST_PG_CA")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut cfg = config(&required("RINGGATE_TEST_ALPHA_URL"));
        cfg.tls = Some(Arc::new(tls));
        let mut c = Connection::connect(&cfg, 8).await.expect("TLS login");
        let r = c
            .query(
                "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()",
                &none(),
                100,
            )
            .await
            .unwrap();
        assert_eq!(r.rows[0][0].as_deref(), Some("true"));
        // A name the certificate does not carry is refused.
        cfg.host = "not-the-server.example".into();
        assert!(matches!(
            Connection::connect(&cfg, 8).await,
            Err(Error::Tls(_))
        ));
    });
}
