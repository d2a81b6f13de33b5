//! Prometheus metrics: request counts and latencies, pool and realtime gauges.
//!
//! A top-level module of its own because both sides count into it (`http`
//! for requests and refusals, `realtime` for connections, deliveries and
//! presence) and neither should depend on the other to do so.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric livedesk exports, registered once per process.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub pool_size: IntGauge,
    pub pool_available: IntGauge,
    pub ws_connections: IntGauge,
    pub ws_closed_slow: IntCounter,
    /// Frames a worker's hand-off wrote to a parked session's socket itself
    /// (the others went through the session's queue).
    pub ws_direct_writes: IntCounter,
    pub listener_up: IntGauge,
    pub listener_reconnects: IntCounter,
    /// 1 while the logical bus's replication stream is up (always 0 on the
    /// NOTIFY bus).
    pub stream_up: IntGauge,
    /// Stream (re)connects after a loss, on the logical bus.
    pub stream_reconnects: IntCounter,
    pub events_delivered: IntCounter,
    pub event_fetches: IntCounter,
    pub presence_writes: IntCounter,
    /// The collisions livedesk exists to stop, by rule (contract §3):
    /// `duplicate_reply`, `already_assigned`, `stale_version`, `field_conflict`.
    pub conflicts: IntCounterVec,
    /// Requests answered 429 (`rate_limited`).
    pub rate_limited: IntCounter,
    /// `reset` frames sent (the database went back in time, or a version
    /// that can never come).
    pub resets: IntCounter,
    /// Viewers this process publishes now (one per connection and ticket).
    pub viewers: IntGauge,
    /// Write batches run (`domain::write_batch`: one commit each).
    pub write_batches: IntCounter,
    /// Calls those batches carried (calls ÷ batches: the batch size).
    pub write_batch_calls: IntCounter,
    /// Batched calls run again on their own (a row lock held elsewhere, an
    /// error that is not a refusal, a batch that failed as a whole).
    pub write_batch_alone: IntCounter,
    /// Database pings `/healthz` sent (one answers every check of the same
    /// half second).
    pub health_pings: IntCounter,
    /// Snapshots and replay pages that found no read slot within the wait
    /// (`realtime::budget`): the subscribe was refused, or the replaying
    /// connection closed to resume later.
    pub read_slots_busy: IntCounter,
    /// Presence writes put off by an agent's presence budget (written later).
    pub presence_deferred: IntCounter,
}

/// The conflict rules, as `livedesk_conflicts_total` labels.
pub const CONFLICT_RULES: [&str; 4] = [
    "duplicate_reply",
    "already_assigned",
    "stale_version",
    "field_conflict",
];

impl Metrics {
    /// A fresh registry with every metric (infallible names; a failure is a bug).
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("livedesk".into()), None).unwrap_or_else(|_| Registry::new());
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &["method", "route"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let metrics = Metrics {
            http_requests,
            http_duration,
            pool_size: gauge("db_pool_connections", "Open connections in the pool"),
            pool_available: gauge("db_pool_available", "Idle connections in the pool"),
            ws_connections: gauge("ws_connections", "Open WebSocket connections"),
            ws_closed_slow: counter(
                "ws_closed_slow_total",
                "Connections closed with 1013 (queue full)",
            ),
            ws_direct_writes: counter(
                "ws_direct_writes_total",
                "Frames written straight to a parked session's socket by its worker",
            ),
            listener_up: gauge("listener_up", "1 while the LISTEN connection is up"),
            listener_reconnects: counter(
                "listener_reconnects_total",
                "LISTEN connection (re)connects after a loss",
            ),
            stream_up: gauge(
                "bus_stream_up",
                "1 while the logical bus's replication stream is up",
            ),
            stream_reconnects: counter(
                "bus_stream_reconnects_total",
                "Logical bus stream (re)connects after a loss",
            ),
            events_delivered: counter(
                "events_delivered_total",
                "Event frames queued to connections",
            ),
            event_fetches: counter("event_fetches_total", "Batched reads of ticket_events"),
            presence_writes: counter("presence_writes_total", "Writes to the presence table"),
            conflicts: IntCounterVec::new(
                Opts::new(
                    "conflicts_total",
                    "Writes refused by a conflict rule (contract §3), by rule",
                ),
                &["rule"],
            )
            .expect("valid metric"),
            rate_limited: counter("rate_limited_total", "Requests answered 429 rate_limited"),
            resets: counter(
                "resets_total",
                "reset frames sent to subscribers (database went back, or a lost version)",
            ),
            viewers: gauge(
                "viewers",
                "Viewers (connection × ticket) this process publishes now",
            ),
            write_batches: counter("write_batches_total", "Write batches run (one commit each)"),
            write_batch_calls: counter(
                "write_batch_calls_total",
                "PATCH and message calls carried by write batches",
            ),
            write_batch_alone: counter(
                "write_batch_alone_total",
                "Batched calls run again on their own",
            ),
            health_pings: counter(
                "health_pings_total",
                "Database pings sent for /healthz (one answers the checks of half a second)",
            ),
            read_slots_busy: counter(
                "read_slots_busy_total",
                "Snapshots and replay pages that found no read slot within the wait",
            ),
            presence_deferred: counter(
                "presence_deferred_total",
                "Presence writes put off by an agent's presence budget",
            ),
            registry,
        };
        for rule in CONFLICT_RULES {
            metrics.conflicts.with_label_values(&[rule]);
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_duration.clone()),
            Box::new(metrics.pool_size.clone()),
            Box::new(metrics.pool_available.clone()),
            Box::new(metrics.ws_connections.clone()),
            Box::new(metrics.ws_closed_slow.clone()),
            Box::new(metrics.ws_direct_writes.clone()),
            Box::new(metrics.listener_up.clone()),
            Box::new(metrics.listener_reconnects.clone()),
            Box::new(metrics.stream_up.clone()),
            Box::new(metrics.stream_reconnects.clone()),
            Box::new(metrics.events_delivered.clone()),
            Box::new(metrics.event_fetches.clone()),
            Box::new(metrics.presence_writes.clone()),
            Box::new(metrics.conflicts.clone()),
            Box::new(metrics.rate_limited.clone()),
            Box::new(metrics.resets.clone()),
            Box::new(metrics.viewers.clone()),
            Box::new(metrics.write_batches.clone()),
            Box::new(metrics.write_batch_calls.clone()),
            Box::new(metrics.write_batch_alone.clone()),
            Box::new(metrics.health_pings.clone()),
            Box::new(metrics.read_slots_busy.clone()),
            Box::new(metrics.presence_deferred.clone()),
        ];
        for collector in collectors {
            let _ = metrics.registry.register(collector);
        }
        metrics
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
