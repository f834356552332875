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
    let state = State::new(
        Arc::new(RwLock::new(status)),
        Arc::new(Metrics::default()),
        endpoint,
        Arc::new(move |p| sink.lock().unwrap().push(p)),
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
    let (code, _) = send(&s, push(GITHUB_PUSH.as_bytes(), WEBHOOK_SECRET)).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(*woken.lock().unwrap(), [Provider::Github]);
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
