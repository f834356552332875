//! The registry client against the real distribution registry, and failure injection for its
//! retries (a server that answers 503 before it answers).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use driftless::registry::{Client, Credentials, index_children};
use serde_json::json;
use support::registry::{OCI_INDEX, push_image, put_manifest, sha256_digest};
use support::{TestEnv, unique_name};

#[tokio::test]
async fn lists_resolves_reads_and_deletes_against_the_real_registry() {
    let env = TestEnv::get();
    let base = env.registry_url();
    let repo = format!("client/{}", unique_name("app"));
    let (d1, _) = push_image(base, &repo, "v1", "2026-01-01T00:00:00Z", "a").await;
    let (d2, m2) = push_image(base, &repo, "v2", "2026-02-01T00:00:00Z", "b").await;
    push_image(base, &repo, "v3", "2026-03-01T00:00:00Z", "c").await;
    // An index over v1 and v2, tagged "multi".
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d1, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d2, "size": m2.len(), "platform": {"architecture": "arm64", "os": "linux"}}
        ]
    }))
    .unwrap();
    put_manifest(base, &repo, "multi", OCI_INDEX, &index).await;
    let index_digest = sha256_digest(&index);

    let client = Client::new(base, Credentials::default()).unwrap();
    // Pages of 1 and 2: pagination through Link headers.
    let mut tags = client.tags(&repo, 2).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["multi", "v1", "v2", "v3"]);
    assert!(
        client.catalog(1).await.unwrap().contains(&repo),
        "catalog pages include the repository"
    );

    // The index resolves to itself, never to a child.
    let multi = client
        .resolve(&repo, "multi")
        .await
        .unwrap()
        .expect("index present");
    assert_eq!(multi.digest, index_digest);
    assert_eq!(multi.media_type, OCI_INDEX);
    let body = client.manifest(&repo, "multi").await.unwrap();
    assert_eq!(index_children(&body), [d1.clone(), d2.clone()]);

    let v2 = client.manifest(&repo, "v2").await.unwrap();
    assert_eq!(
        client.created(&repo, &v2).await.unwrap().as_deref(),
        Some("2026-02-01T00:00:00Z")
    );

    // Delete by digest: gone, and a second delete says so.
    let v3 = client.resolve(&repo, "v3").await.unwrap().unwrap();
    assert!(client.delete(&repo, &v3.digest).await.unwrap());
    assert_eq!(client.resolve(&repo, "v3").await.unwrap(), None);
    assert!(!client.delete(&repo, &v3.digest).await.unwrap());
    let mut tags = client.tags(&repo, 100).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["multi", "v1", "v2"]);
}

#[tokio::test]
async fn retries_server_errors_and_rate_limits_then_reports_a_persistent_one() {
    // Failure injection: 503, then 429, then an answer.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v2/_catalog",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "{}".to_owned()),
                    1 => (axum::http::StatusCode::TOO_MANY_REQUESTS, "{}".to_owned()),
                    _ => (
                        axum::http::StatusCode::OK,
                        r#"{"repositories":["x"]}"#.to_owned(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(&format!("http://{addr}"), Credentials::default()).unwrap();
    assert_eq!(client.catalog(10).await.unwrap(), ["x"]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Always failing: the error names the URL and status after the retries.
    let app = axum::Router::new().route(
        "/v2/_catalog",
        axum::routing::get(|| async {
            (
                axum::http::StatusCode::BAD_GATEWAY,
                r#"{"errors":[{"message":"upstream down"}]}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut client = Client::new(&format!("http://{addr}"), Credentials::default()).unwrap();
    client.retries = 2;
    let err = client.catalog(10).await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 502: upstream down") && err.contains(&addr.to_string()),
        "{err}"
    );
}

/// The test registry (distribution v3) does not serve the OCI referrers API: it answers 404,
/// which the client reads as "use the referrers tag schema". (If a later version serves it,
/// this test says so, and ImageCleanup's tests should then use the real API.)
#[tokio::test]
async fn the_test_registry_has_no_referrers_api() {
    let env = TestEnv::get();
    let base = env.registry_url();
    let repo = format!("client/{}", unique_name("refs"));
    let (d, _) = push_image(base, &repo, "v1", "2026-01-01T00:00:00Z", "r").await;
    let client = Client::new(base, Credentials::default()).unwrap();
    assert_eq!(client.referrers(&repo, &d).await.unwrap(), None);
}

/// A referrers answer is untrusted: pages are bounded in bytes, the list in length (the rest is
/// left out and said so), and descriptors whose digest could steer a URL are dropped. Failure
/// injection: a server answering each way.
#[tokio::test]
async fn referrers_answers_are_bounded_and_checked() {
    let hex = |n: usize| format!("sha256:{n:064x}");
    let many: Vec<serde_json::Value> = (0..1500)
        .map(|n| json!({"digest": hex(n), "mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1}))
        .collect();
    let app = axum::Router::new()
        .route(
            "/v2/big/referrers/{digest}",
            axum::routing::get(|| async { "x".repeat(5 << 20) }),
        )
        .route(
            "/v2/many/referrers/{digest}",
            axum::routing::get(move || {
                let many = many.clone();
                async move { json!({"schemaVersion": 2, "manifests": many}).to_string() }
            }),
        )
        .route(
            "/v2/odd/referrers/{digest}",
            axum::routing::get(move || async move {
                json!({"schemaVersion": 2, "manifests": [
                    {"digest": "sha256:../../other/manifests/x", "artifactType": "a"},
                    {"digest": hex(7), "artifactType": "application/spdx+json"},
                    {"artifactType": "no digest"}]})
                .to_string()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(&format!("http://{addr}"), Credentials::default()).unwrap();
    let subject = hex(1);

    let err = client
        .referrers("big", &subject)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than 4194304 bytes"), "{err}");

    let listed = client.referrers("many", &subject).await.unwrap().unwrap();
    assert_eq!(listed.referrers.len(), driftless::registry::REFERRERS_MAX);
    assert!(listed.truncated);

    let listed = client.referrers("odd", &subject).await.unwrap().unwrap();
    assert_eq!(
        listed.referrers,
        [driftless::registry::Referrer {
            digest: hex(7),
            artifact_type: Some("application/spdx+json".to_owned())
        }]
    );
    assert!(!listed.truncated);

    // No route: 404, the API is not served.
    assert_eq!(client.referrers("none", &subject).await.unwrap(), None);
}
