//! The daemon's HTTP endpoint at its trust boundary: callers without the token learn nothing,
//! a weak token refuses to start or reload, reloads rebind or apply their limits, and slow or
//! idle connections cannot exhaust the daemon.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::daemon::{Options, SECRET, Setup, write_stack};
use support::{TestEnv, eventually, git};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "status-token-for-tests-0123456789";

fn with_token<'a>(listen: &'a str, daemon: &'a str) -> Options<'a> {
    Options {
        listen,
        daemon,
        credentials: &[("status-token", TOKEN)],
        token: Some(TOKEN),
        ..Options::default()
    }
}

const TOKEN_FILE: &str = "  statusTokenFile: status-token\n";

#[test]
fn an_empty_or_short_status_token_refuses_to_start() {
    for (token, why) in [
        ("\n", "is empty"),
        ("", "is empty"),
        ("   \n", "is empty"),
        ("short-token\n", "at least 16"),
        ("a token with spaces inside\n", "whitespace"),
    ] {
        let setup = Setup::new(
            &Options {
                listen: "0.0.0.0:0",
                daemon: TOKEN_FILE,
                credentials: &[("status-token", token)],
                ..Options::default()
            },
            |_, _| {},
        );
        let (status, log) = setup.refused();
        assert!(!status.success(), "{token:?}: {log}");
        assert!(
            log.contains("daemon.statusTokenFile") && log.contains(why),
            "{token:?}: the log says why ({why}): {log}"
        );
        assert!(
            !setup.state().join("listen").exists(),
            "{token:?}: nothing was served"
        );
    }
}

/// Status, metrics, the page and readiness need the token; an unauthenticated answer says only
/// that a token is required. `/healthz` and signed webhooks need none.
#[tokio::test]
async fn callers_without_the_token_learn_nothing() {
    let d = Setup::new(&with_token("127.0.0.1:0", TOKEN_FILE), |_, _| {}).start();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let http = support::daemon::http();
    for path in ["/", "/api/v1/status", "/metrics", "/readyz"] {
        for auth in [
            None,
            Some("Bearer wrong-token-0123456789abcdef"),
            Some(TOKEN),
        ] {
            let mut request = http.get(format!("{}{path}", d.base));
            if let Some(a) = auth {
                request = request.header("Authorization", a);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{path} with {auth:?}");
            let headers = format!("{:?}", response.headers());
            let body = response.text().await.unwrap();
            assert_eq!(body, "a bearer token is required\n", "{path}");
            for secret in [d.id.as_str(), "ns-", "ready", "driftless_", "github"] {
                assert!(
                    !body.contains(secret) && !headers.contains(secret),
                    "{path} reveals {secret:?}: {headers} {body}"
                );
            }
        }
        let ok = http
            .get(format!("{}{path}", d.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{path} with the token");
    }
    let health = http
        .get(format!("{}/healthz", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    assert_eq!(d.github(&d.push_payload(), SECRET).await.status(), 202);
    let unsigned = d.github(&d.push_payload(), "not-the-secret").await;
    assert_eq!(unsigned.status(), 401);
    let body = unsigned.text().await.unwrap();
    assert!(
        !body.contains(SECRET) && !body.contains(&d.id),
        "a refused webhook names only the header at fault: {body}"
    );
}

/// A reload with an empty token is refused (the old token stays in force); one that changes
/// the body limit applies it, and one that changes `listen` moves the endpoint there.
#[tokio::test]
async fn reloads_refuse_a_weak_token_and_apply_listen_and_body_limit() {
    let d = Setup::new(&with_token("127.0.0.1:0", TOKEN_FILE), |_, _| {}).start();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let http = support::daemon::http();

    // An empty token file: the reload is refused, the old token keeps working.
    d.write_credential("empty-token", "\n");
    d.reconfigure(&with_token(
        "127.0.0.1:0",
        "  statusTokenFile: empty-token\n",
    ));
    eventually("the reload refused", Duration::from_secs(15), || async {
        d.log()
            .contains("configuration reload refused")
            .then_some(())
    })
    .await;
    assert!(d.log().contains("daemon.statusTokenFile"), "{}", d.log());
    let unauthenticated = http
        .get(format!("{}/api/v1/status", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401, "authentication stays on");
    assert_eq!(d.get("/api/v1/status").await.status(), 200);

    // A smaller body limit and another address: both in force without a restart.
    let old = d.base.trim_start_matches("http://").to_owned();
    d.reconfigure(&with_token(
        "127.0.0.2:0",
        "  statusTokenFile: status-token\n  webhookBodyLimit: 1000\n",
    ));
    let listen_file = d.dir.path().join("state/listen");
    let new = eventually("the endpoint moved", Duration::from_secs(15), || async {
        let addr = std::fs::read_to_string(&listen_file).ok()?;
        let addr = addr.trim().to_owned();
        (addr.starts_with("127.0.0.2:")).then_some(addr)
    })
    .await;
    let base = format!("http://{new}");
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    eventually(
        "the old address closed",
        Duration::from_secs(10),
        || async { std::net::TcpStream::connect(&old).is_err().then_some(()) },
    )
    .await;
    let mut body = d.push_payload();
    body.extend(std::iter::repeat_n(b' ', 2000));
    let big = support::daemon::github_push(&base, &body, SECRET).await;
    assert_eq!(big.status(), 413, "the new body limit applies");
    let small = support::daemon::github_push(&base, &d.push_payload(), SECRET).await;
    assert_eq!(small.status(), 202);
    assert!(d.log().contains(&new), "the log names the new address");
}

/// Raises this process's open-file limit to its hard limit (the daemon inherits it): the test
/// holds over a thousand sockets.
fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < needed {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_max
    );
}

/// A number from the Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// 1,100 idle connections and one that drips a header line a second: `/healthz` still
/// answers at once, webhooks are served, a reconcile succeeds, the open connections stay under
/// the cap, and every idle or dripping connection is cut.
#[tokio::test]
async fn slow_and_idle_connections_cannot_exhaust_the_endpoint() {
    raise_fd_limit(4096);
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = Setup::new(&Options::default(), |_, _| {}).start();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let addr = d.base.trim_start_matches("http://").to_owned();
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // One line of headers a second, never the blank line that ends them.
    let mut drip = tokio::net::TcpStream::connect(&addr).await.unwrap();
    drip.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dripping = tokio::spawn(async move {
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                r = drip.read(&mut buf) => {
                    // The server answered (408) or closed: either way the connection is over.
                    let _ = r;
                    return started.elapsed();
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if drip.write_all(b"X-Drip: 1\r\n").await.is_err() {
                        return started.elapsed();
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the dripping connection was kept for a minute"
            );
        }
    });

    let t = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        support::daemon::http()
            .get(format!("{}/healthz", d.base))
            .send(),
    )
    .await
    .expect("/healthz answers within 5 s")
    .unwrap();
    assert_eq!(health.status(), 200);
    println!("/healthz under 1,100 idle connections: {:?}", t.elapsed());

    // A pushed commit is applied after a webhook.
    write_stack(d.repo.path(), &d.id, "two");
    git(d.repo.path(), &["commit", "-qam", "second"]);
    assert_eq!(d.github(&d.push_payload(), SECRET).await.status(), 202);
    let cms: Api<ConfigMap> = Api::namespaced(client, &format!("ns-{}", d.id));
    eventually(
        "the pushed commit applied",
        Duration::from_secs(30),
        || async { (cms.get("settings").await.ok()?.data?["value"] == "two").then_some(()) },
    )
    .await;
    let status = eventually(
        "the reconcile recorded",
        Duration::from_secs(15),
        || async {
            let st = d.status().await;
            (st["lastReconcile"]["ok"] == true && st["appliedRevision"]["subject"] == "second")
                .then_some(st)
        },
    )
    .await;
    assert_eq!(status["state"], "ready", "{status}");

    let metrics = d.metrics().await;
    let cap = metric(&metrics, "driftless_http_connections_limit");
    assert!(
        metric(&metrics, "driftless_http_connections") <= cap,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "driftless_http_connections_evicted_total") >= 1.0,
        "idle connections were evicted to make room: {metrics}"
    );

    let dripped = dripping.await.unwrap();
    assert!(
        dripped <= Duration::from_secs(12),
        "a header dripped line by line is cut at the header timeout (10 s), not {dripped:?}"
    );
    // Every idle connection is closed by the server: evicted, or cut at the timeout.
    let closed = futures::future::join_all(idle.iter_mut().map(|s| async move {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .is_ok()
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open,
        0,
        "{open} idle connections still open after {:?}",
        opened.elapsed()
    );
}
