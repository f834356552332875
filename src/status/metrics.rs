//! Prometheus metrics of the daemon (`GET /metrics`, text exposition format).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub reconcile_duration: Histogram,
    /// Duration of each target's part of a run.
    pub target_reconcile_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub reconciles: Family<Labels, Counter>,
    pub last_successful_sync: Family<Labels, Gauge<f64, AtomicU64>>,
    pub drifted_objects: Family<Labels, Gauge>,
    pub managed_objects: Family<Labels, Gauge>,
    pub apply_errors: Family<Labels, Counter>,
    pub webhook_requests: Family<Labels, Counter>,
    pub job_runs: Family<Labels, Counter>,
    pub job_last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    pub job_figures: Family<Labels, Gauge>,
    pub backup_last_complete: Family<Labels, Gauge<f64, AtomicU64>>,
    /// 1 while the followed branch or tag does not exist on the remote.
    pub source_ref_missing: Gauge,
    pub http_connections: Gauge,
    pub http_connections_limit: Gauge,
    pub http_connections_evicted: Counter,
    pub http_connections_refused: Counter,
    /// 1 for the revision `source.git.verify` refused last (commit, signer, reason); empty
    /// once a revision verifies.
    pub source_unverified: Family<Labels, Gauge>,
    /// Commit statuses and notifications by destination and outcome (`notify`).
    pub notify_deliveries: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("driftless");
        let reconcile_duration = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        let m = Metrics {
            reconcile_duration: reconcile_duration.clone(),
            target_reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 2.0, 12))
            }),
            reconciles: Family::default(),
            last_successful_sync: Family::default(),
            drifted_objects: Family::default(),
            managed_objects: Family::default(),
            apply_errors: Family::default(),
            webhook_requests: Family::default(),
            job_runs: Family::default(),
            job_last_success: Family::default(),
            job_figures: Family::default(),
            backup_last_complete: Family::default(),
            source_ref_missing: Gauge::default(),
            http_connections: Gauge::default(),
            http_connections_limit: Gauge::default(),
            http_connections_evicted: Counter::default(),
            http_connections_refused: Counter::default(),
            source_unverified: Family::default(),
            notify_deliveries: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile of all stacks",
            reconcile_duration,
        );
        registry.register(
            "target_reconcile_duration_seconds",
            "Duration of one target's part of a reconcile",
            m.target_reconcile_duration.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by trigger and outcome",
            m.reconciles.clone(),
        );
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last sync of a stack that ended synced and healthy",
            m.last_successful_sync.clone(),
        );
        registry.register(
            "drifted_objects",
            "Objects of a stack whose live state drifted from Git",
            m.drifted_objects.clone(),
        );
        registry.register(
            "managed_objects",
            "Objects a stack manages",
            m.managed_objects.clone(),
        );
        registry.register(
            "apply_errors",
            "Stack reconciles that failed",
            m.apply_errors.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook requests by provider and outcome",
            m.webhook_requests.clone(),
        );
        registry.register(
            "job_runs",
            "Scheduled job runs by job and outcome",
            m.job_runs.clone(),
        );
        registry.register(
            "job_last_success_timestamp_seconds",
            "Unix time of the last successful run of a job",
            m.job_last_success.clone(),
        );
        registry.register(
            "job_last_run_figure",
            "Figures of a job's last run (ImageCleanup: deleted, kept, bytesReclaimable, ...)",
            m.job_figures.clone(),
        );
        registry.register(
            "backup_last_complete_timestamp_seconds",
            "Unix time (start) of the newest complete backup of a Backup job",
            m.backup_last_complete.clone(),
        );
        registry.register(
            "source_ref_missing",
            "1 while the followed branch or tag does not exist on the remote (the last good revision stays applied)",
            m.source_ref_missing.clone(),
        );
        registry.register(
            "http_connections",
            "Connections the HTTP endpoint holds",
            m.http_connections.clone(),
        );
        registry.register(
            "http_connections_limit",
            "Most connections the HTTP endpoint holds at once (daemon.maxConnections)",
            m.http_connections_limit.clone(),
        );
        registry.register(
            "http_connections_evicted",
            "Idle connections closed to make room at the cap",
            m.http_connections_evicted.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections refused at the cap because every open one had a request in progress",
            m.http_connections_refused.clone(),
        );
        registry.register(
            "source_unverified_revision",
            "The revision refused by source.git.verify: its commit, signer and reason (1 while it is the newest)",
            m.source_unverified.clone(),
        );
        registry.register(
            "notify_deliveries",
            "Commit statuses and notifications by destination (commitStatus, webhooks[i]) and outcome (delivered, retried, failed, dropped)",
            m.notify_deliveries.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `[("stack", name)]`-style label sets.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
