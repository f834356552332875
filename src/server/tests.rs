//! The endpoint alone: its routes on a `State` of their own, no daemon, no network.

use std::sync::Mutex;

use axum::http::Request;
use tower::ServiceExt;

use super::hooks::fixtures::{GITHUB_PUSH, sign};
use super::*;

const TOKEN: &str = "a-status-token-for-unit-tests";
const WEBHOOK_SECRET: &str = "webhook-secret-sentinel";

/// A state with a token and a GitHub secret, following `main` of the fixture's repository;
/// the providers woken are recorded.
fn state(token: Option<&str>) -> (Arc<State>, Arc<Mutex<Vec<Provider>>>) {
    let woken = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&woken);
    let endpoint = EndpointConfig {
        status_token: token.map(SecretString::from),
        webhook_secrets: vec![(Provider::Github, SecretString::from(WEBHOOK_SECRET))],
        body_limit: 64 * 1024,
        git: Some((
            "https://github.com/Acme/stacks.git".to_owned(),
            crate::source::GitRef::Branch("main".to_owned()),
        )),
        max_connections: 8,
    };
    let status = Status {
        instance: "instance-sentinel".to_owned(),
        state: DaemonState::Ready,
        ..Status::default()
    };
    let runs = Arc::new(crate::runs::store::Store::default());
    let queue = Arc::clone(&runs);
    let state = State::new(
        Arc::new(RwLock::new(status)),
        Arc::new(Metrics::default()),
        endpoint,
        runs,
        Arc::new(move |request| {
            let (trigger, revision) = match &request {
                RunRequest::Webhook { provider, revision } => {
                    sink.lock().unwrap().push(*provider);
                    (format!("webhook {}", provider.name()), revision.clone())
                }
                RunRequest::Sync { revision } => ("api".to_owned(), revision.clone()),
            };
            Some(queue.enqueue(&trigger, revision.as_deref()))
        }),
    );
    (Arc::new(state), woken)
}

async fn send(state: &Arc<State>, request: Request<Body>) -> (StatusCode, String) {
    let response = router(Arc::clone(state)).oneshot(request).await.unwrap();
    let code = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (code, String::from_utf8_lossy(&bytes).into_owned())
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    r.body(Body::empty()).unwrap()
}

fn push(body: &[u8], key: &str) -> Request<Body> {
    Request::post("/hooks/github")
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", format!("sha256={}", sign(body, key)))
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_vec()))
        .unwrap()
}

#[tokio::test]
async fn with_a_token_only_healthz_and_signed_webhooks_are_open() {
    let (s, woken) = state(Some(TOKEN));
    for path in ["/", "/api/v1/status", "/metrics", "/readyz"] {
        for token in [None, Some("wrong-token-of-enough-bytes")] {
            let (code, body) = send(&s, get(path, token)).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(body, "a bearer token is required\n", "{path}");
        }
        let (code, body) = send(&s, get(path, Some(TOKEN))).await;
        assert_eq!(code, StatusCode::OK, "{path}");
        if path == "/api/v1/status" || path == "/" {
            assert!(body.contains("instance-sentinel"), "{path}: {body}");
        }
    }
    assert_eq!(send(&s, get("/healthz", None)).await.0, StatusCode::OK);
    let (code, body) = send(&s, push(GITHUB_PUSH.as_bytes(), WEBHOOK_SECRET)).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(*woken.lock().unwrap(), [Provider::Github]);
    // The answer names the queued run and the pushed revision.
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run = answer["run"].as_str().unwrap();
    let queued = s.runs.get(run).unwrap();
    assert_eq!(queued.triggers, ["webhook github"]);
    assert_eq!(
        answer["revision"].as_str(),
        queued.wanted.first().map(|w| w.revision.as_str())
    );
}

#[tokio::test]
async fn without_a_token_status_and_metrics_are_open() {
    let (s, _) = state(None);
    for path in ["/", "/api/v1/status", "/metrics", "/readyz", "/healthz"] {
        assert_eq!(send(&s, get(path, None)).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_forged_webhook_wakes_nothing_and_reveals_no_secret() {
    let (s, woken) = state(None);
    let (code, body) = send(&s, push(GITHUB_PUSH.as_bytes(), "forged")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        !body.contains(WEBHOOK_SECRET) && !body.contains("sentinel"),
        "{body}"
    );
    assert!(woken.lock().unwrap().is_empty());
    let (code, _) = send(&s, get("/hooks/gitlab", None)).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let request = Request::post("/hooks/gitlab").body(Body::empty()).unwrap();
    assert_eq!(send(&s, request).await.0, StatusCode::NOT_FOUND);
    assert!(woken.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_body_limit_in_force_is_the_configured_one_now() {
    let (s, woken) = state(None);
    let body = GITHUB_PUSH.as_bytes();
    assert_eq!(
        send(&s, push(body, WEBHOOK_SECRET)).await.0,
        StatusCode::ACCEPTED
    );
    s.endpoint.write().await.body_limit = body.len() - 1;
    assert_eq!(
        send(&s, push(body, WEBHOOK_SECRET)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Without a Content-Length (chunked), the limit holds while reading.
    let request = Request::post("/hooks/github")
        .header("X-GitHub-Event", "push")
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", sign(body, WEBHOOK_SECRET)),
        )
        .body(Body::from_stream(futures::stream::iter([Ok::<
            _,
            std::io::Error,
        >(
            Bytes::from(body.to_vec()),
        )])))
        .unwrap();
    assert_eq!(send(&s, request).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(woken.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn webhooks_in_flight_are_capped() {
    let (s, _) = state(None);
    let s = Arc::new(
        Arc::into_inner(s)
            .unwrap()
            .with_webhook_slots(1, Duration::from_millis(200)),
    );
    // A webhook whose body never comes holds the only slot.
    let stuck = Request::post("/hooks/github")
        .header("X-GitHub-Event", "push")
        .body(Body::from_stream(futures::stream::pending::<
            Result<Bytes, std::io::Error>,
        >()))
        .unwrap();
    let held = tokio::spawn(router(Arc::clone(&s)).oneshot(stuck));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (code, body) = send(&s, push(GITHUB_PUSH.as_bytes(), WEBHOOK_SECRET)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    held.abort();
    let _ = held.await;
    assert_eq!(
        send(&s, push(GITHUB_PUSH.as_bytes(), WEBHOOK_SECRET))
            .await
            .0,
        StatusCode::ACCEPTED,
        "the slot is free again"
    );
    assert!(
        s.metrics
            .render()
            .contains("driftless_webhook_requests_total{provider=\"github\",outcome=\"busy\"} 1")
    );
}

fn sync_request(body: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::post("/api/v1/sync").header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    r.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn sync_needs_the_token_even_where_status_is_open() {
    // No token configured: status is open on loopback, sync is closed.
    let (open, _) = state(None);
    let (code, body) = send(&open, sync_request("{}", None)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("daemon.statusTokenFile"), "{body}");
    assert!(open.runs.list(10).is_empty(), "nothing queued");

    let (s, _) = state(Some(TOKEN));
    for token in [None, Some("wrong-token-of-enough-bytes")] {
        assert_eq!(
            send(&s, sync_request("{}", token)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(s.runs.list(10).is_empty());
    for (bad, why) in [
        (r#"{"revision": "main"}"#, "revision"),
        (r#"{"revision": "abc"}"#, "revision"),
        (r#"{"stacks": ["../etc"]}"#, "stacks"),
        (r#"{"other": 1}"#, "unknown field"),
        ("[", "the body must be"),
    ] {
        let (code, body) = send(&s, sync_request(bad, Some(TOKEN))).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let (code, body) = send(
        &s,
        sync_request(
            r#"{"revision": "ABCDEF1234567", "stacks": ["web"]}"#,
            Some(TOKEN),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["revision"], "abcdef1234567");
    // An empty body asks for a run too; before the loop starts it, both share it.
    let (code, again) = send(&s, sync_request("", Some(TOKEN))).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["run"], answer["run"]);
    assert_eq!(again["revision"], serde_json::Value::Null);
}

#[tokio::test]
async fn runs_are_listed_and_waited_for_within_bounds() {
    let (s, _) = state(Some(TOKEN));
    let id = (s.wake)(RunRequest::Sync { revision: None }).unwrap();
    for path in ["/api/v1/runs", &format!("/api/v1/runs/{id}")] {
        assert_eq!(send(&s, get(path, None)).await.0, StatusCode::UNAUTHORIZED);
    }
    let (code, body) = send(&s, get("/api/v1/runs?limit=5", Some(TOKEN))).await;
    assert_eq!(code, StatusCode::OK);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["runs"][0]["id"], id.as_str());
    assert_eq!(listed["runs"][0]["state"], "queued");
    for (path, code) in [
        ("/api/v1/runs/nope-1".to_owned(), StatusCode::NOT_FOUND),
        ("/api/v1/runs/..%2Fx".to_owned(), StatusCode::NOT_FOUND),
        (
            format!("/api/v1/runs/{id}?wait=soon"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/v1/runs/{id}?wait={}", "9".repeat(40)),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(send(&s, get(&path, Some(TOKEN))).await.0, code, "{path}");
    }
    // A waiter returns when the run ends.
    let waiter = {
        let (s, id) = (Arc::clone(&s), id.clone());
        tokio::spawn(async move {
            send(&s, get(&format!("/api/v1/runs/{id}?wait=60s"), Some(TOKEN))).await
        })
    };
    s.runs.start("api", chrono::Utc::now());
    s.runs
        .finish(|r| r.state = crate::runs::RunState::Succeeded);
    let (code, body) = waiter.await.unwrap();
    assert_eq!(code, StatusCode::OK);
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(run["state"], "succeeded");
    // Waiters beyond the cap are turned away at once.
    let next = (s.wake)(RunRequest::Sync { revision: None }).unwrap();
    let held: Vec<_> = (0..runs::MAX_WAITERS)
        .map(|_| s.waiters.try_acquire().unwrap())
        .collect();
    let (code, body) = send(
        &s,
        get(&format!("/api/v1/runs/{next}?wait=10m"), Some(TOKEN)),
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    drop(held);
}

#[tokio::test]
async fn pages_follow_the_token_rules_and_unknown_names_are_404_pages() {
    let (s, _) = state(Some(TOKEN));
    s.status
        .write()
        .await
        .stacks
        .push(crate::status::StackStatus {
            name: "web".to_owned(),
            target: "default".to_owned(),
            state: crate::status::StackState::Synced,
            last_change: None,
            last_sync: None,
            managed_objects: 1,
            drifted: 0,
            last_plan: Default::default(),
            error: None,
            retry_at: None,
            consecutive_failures: 0,
            holder: None,
        });
    let run = s.runs.enqueue("api", None);
    let run_page = format!("/runs/{run}");
    for path in ["/", "/runs", run_page.as_str(), "/stacks/web", "/jobs/x"] {
        let (code, body) = send(&s, get(path, None)).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
        assert!(!body.contains("instance-sentinel") && !body.contains("web"));
    }
    for path in ["/", "/runs", run_page.as_str(), "/stacks/web"] {
        let response = router(Arc::clone(&s))
            .oneshot(get(path, Some(TOKEN)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let h = response.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], pages::csp(), "{path}");
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let (_, body) = send(&s, get(&run_page, Some(TOKEN))).await;
    assert!(body.contains("<span class=\"badge queued\" id=\"state\">queued</span>"));
    for (path, says) in [
        (
            "/runs/20261206T000000Z-ffff",
            "No run 20261206T000000Z-ffff is kept.",
        ),
        ("/runs/..%2Fstatus", "That is not a run id."),
        (
            "/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            "That is not a run id.",
        ),
        ("/stacks/nope", "No stack nope in the applied revision."),
        ("/stacks/%3Cb%3E", "That is not a stack name."),
        ("/jobs/..", "That is not a job name."),
        ("/jobs/cleanup", "No job cleanup in the applied revision."),
    ] {
        let response = router(Arc::clone(&s))
            .oneshot(get(path, Some(TOKEN)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            response
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY)
        );
        let (_, body) = send(&s, get(path, Some(TOKEN))).await;
        assert!(body.contains(says), "{path}: {body}");
        assert!(!body.contains("<script>alert"), "{body}");
    }
}
