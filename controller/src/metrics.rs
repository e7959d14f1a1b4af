//! Controller metrics (Prometheus text format on `/metrics`).
//!
//! Gauges that describe the model (sites by region, role and state; agents
//! online; configs waiting for delivery) are computed at scrape time from
//! the in-memory model, so they can never drift from it.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub(crate) registry: Registry,
    pub enrolments: IntCounterVec,
    pub http_requests: HistogramVec,
    /// Time from a config change to the agent reporting it applied.
    pub apply_latency: crate::health::ApplyLatency,
    pub(crate) sites: IntGaugeVec,
    pub(crate) region_hubs: IntGaugeVec,
    pub(crate) region_hubs_online: IntGaugeVec,
    pub(crate) waiters: IntGauge,
    pub(crate) agents_online: IntGauge,
    pub(crate) pending_delivery: IntGauge,
    /// Changes committed together in one transaction.
    pub change_groups: prometheus::Histogram,
    /// Failed database transactions by error kind.
    pub store_failures: IntCounterVec,
    /// Times this replica applied changes other replicas committed.
    pub caught_up: prometheus::IntCounter,
    /// Time a change group waited for the change log's head (held by
    /// another replica committing).
    pub head_wait: prometheus::Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let enrolments = IntCounterVec::new(
            Opts::new(
                "wardnet_controller_enrolments_total",
                "Enrolment attempts by result.",
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        let http_requests = HistogramVec::new(
            HistogramOpts::new(
                "wardnet_controller_http_request_duration_seconds",
                "HTTP request durations by method, route and status (long-polls included).",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
            ]),
            &["method", "route", "status"],
        )
        .expect("static metric definition is valid");
        let apply_latency = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "wardnet_controller_config_apply_duration_seconds",
                "Time from a site's config change being stored to its agent reporting it applied (once per catch-up).",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
        )
        .expect("static metric definition is valid");
        let sites = IntGaugeVec::new(
            Opts::new(
                "wardnet_controller_sites",
                "Sites by region, role and state.",
            ),
            &["region", "role", "state"],
        )
        .expect("static metric definition is valid");
        let region_hubs = IntGaugeVec::new(
            Opts::new(
                "wardnet_controller_region_hubs",
                "Active hubs of each region (a region with two or more fails over between them).",
            ),
            &["region"],
        )
        .expect("static metric definition is valid");
        let region_hubs_online = IntGaugeVec::new(
            Opts::new(
                "wardnet_controller_region_hubs_online",
                "Active hubs of each region whose agent reported within the online window.",
            ),
            &["region"],
        )
        .expect("static metric definition is valid");
        let waiters = IntGauge::new(
            "wardnet_controller_long_poll_waiters",
            "Agent config requests currently held open.",
        )
        .expect("static metric definition is valid");
        let agents_online = IntGauge::new(
            "wardnet_controller_agents_online",
            "Agents that synced within two long-poll periods.",
        )
        .expect("static metric definition is valid");
        let pending_delivery = IntGauge::new(
            "wardnet_controller_config_revisions_pending_delivery",
            "Active agent sites whose applied revision is behind their current revision.",
        )
        .expect("static metric definition is valid");
        let change_groups = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "wardnet_controller_change_group_size",
                "Changes (enrolments, admin changes) committed together in one database transaction.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        )
        .expect("static metric definition is valid");
        let store_failures = IntCounterVec::new(
            Opts::new(
                "wardnet_controller_store_failures_total",
                "Database transactions that failed, by kind (conflict, precondition, unavailable, commit, other).",
            ),
            &["kind"],
        )
        .expect("static metric definition is valid");
        let caught_up = prometheus::IntCounter::new(
            "wardnet_controller_replica_catch_ups_total",
            "Times this controller applied changes that other replicas committed to the shared database.",
        )
        .expect("static metric definition is valid");
        let head_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "wardnet_controller_change_head_wait_seconds",
                "Time a group of changes waited to take the change log's head (other replicas committing).",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )
        .expect("static metric definition is valid");
        let build = IntGaugeVec::new(
            Opts::new(
                "wardnet_controller_build_info",
                "Build information; always 1.",
            ),
            &["version"],
        )
        .expect("static metric definition is valid");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(enrolments.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_requests.clone()),
            Box::new(apply_latency.clone()),
            Box::new(sites.clone()),
            Box::new(region_hubs.clone()),
            Box::new(region_hubs_online.clone()),
            Box::new(waiters.clone()),
            Box::new(agents_online.clone()),
            Box::new(pending_delivery.clone()),
            Box::new(change_groups.clone()),
            Box::new(store_failures.clone()),
            Box::new(caught_up.clone()),
            Box::new(head_wait.clone()),
            Box::new(build),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            enrolments,
            http_requests,
            apply_latency: crate::health::ApplyLatency::new(apply_latency),
            sites,
            region_hubs,
            region_hubs_online,
            waiters,
            agents_online,
            pending_delivery,
            change_groups,
            store_failures,
            caught_up,
            head_wait,
        }
    }
}
