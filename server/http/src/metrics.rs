//! Prometheus metrics: requests by route and status, latency histograms, and the store's
//! figures (read at scrape time).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use meridian_crdt::StoreStats;
use meridian_sync::repo::SyncStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// The node's metrics. Owned by the app (no global registry), so tests can run many apps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    documents: Gauge,
    bytes_on_disk: Gauge,
    cache_bytes: Gauge,
    free_bytes: Gauge,
    floor_bytes: Gauge,
    writable: Gauge,
    scrub_checked: Counter,
    scrub_passes: Counter,
    damaged: Gauge,
    damage_found: Counter,
    damage_healed: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    flushes: Counter,
    drift_refusals: Counter,
    replication_sent: Counter,
    replication_received: Counter,
    sync_connections: Gauge,
    sync_documents: Gauge,
    sync_received: Counter,
    sync_sent: Counter,
    sync_accepted: Counter,
    sync_refused: Counter,
    sync_waiting: Counter,
    sync_connections_refused: Counter,
    change_streams: Gauge,
    change_events_sent: Counter,
    change_streams_behind: Counter,
}

/// Replication figures read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicationStats {
    pub drift_refusals: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("meridian");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~26 s
            Histogram::new(exponential_buckets(0.00005, 2.0, 20))
        });
        let m = Metrics {
            requests,
            latency,
            documents: Gauge::default(),
            bytes_on_disk: Gauge::default(),
            cache_bytes: Gauge::default(),
            free_bytes: Gauge::default(),
            floor_bytes: Gauge::default(),
            writable: Gauge::default(),
            scrub_checked: Counter::default(),
            scrub_passes: Counter::default(),
            damaged: Gauge::default(),
            damage_found: Counter::default(),
            damage_healed: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            flushes: Counter::default(),
            drift_refusals: Counter::default(),
            replication_sent: Counter::default(),
            replication_received: Counter::default(),
            sync_connections: Gauge::default(),
            sync_documents: Gauge::default(),
            sync_received: Counter::default(),
            sync_sent: Counter::default(),
            sync_accepted: Counter::default(),
            sync_refused: Counter::default(),
            sync_waiting: Counter::default(),
            sync_connections_refused: Counter::default(),
            change_streams: Gauge::default(),
            change_events_sent: Counter::default(),
            change_streams_behind: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.latency.clone(),
        );
        registry.register("documents", "Live documents", m.documents.clone());
        registry.register(
            "disk_bytes",
            "Bytes the store takes on disk",
            m.bytes_on_disk.clone(),
        );
        registry.register(
            "cache_bytes",
            "Estimated bytes in the document cache",
            m.cache_bytes.clone(),
        );
        registry.register(
            "storage_free_bytes",
            "Free bytes on the data dir's filesystem",
            m.free_bytes.clone(),
        );
        registry.register(
            "storage_floor_bytes",
            "Free bytes the store keeps: below them new data is refused (507)",
            m.floor_bytes.clone(),
        );
        registry.register(
            "storage_writable",
            "1 when the store takes writes; 0 when low on space or failed (see /readyz)",
            m.writable.clone(),
        );
        registry.register(
            "scrub_checked_documents",
            "Documents the scrub checked from disk",
            m.scrub_checked.clone(),
        );
        registry.register(
            "scrub_passes",
            "Scrub passes over every document finished",
            m.scrub_passes.clone(),
        );
        registry.register(
            "documents_damaged",
            "Documents damaged on this node now, refused until healed from a peer",
            m.damaged.clone(),
        );
        registry.register(
            "damage_found_documents",
            "Damaged documents found, by the scrub or on load",
            m.damage_found.clone(),
        );
        registry.register(
            "damage_healed_documents",
            "Damaged documents rebuilt from intact pieces and the peers",
            m.damage_healed.clone(),
        );
        registry.register("cache_hits", "Document cache hits", m.cache_hits.clone());
        registry.register(
            "cache_misses",
            "Document cache misses",
            m.cache_misses.clone(),
        );
        registry.register(
            "flushes",
            "Durable flushes (one per group commit)",
            m.flushes.clone(),
        );
        registry.register(
            "clock_drift_refusals",
            "Changes from peers refused because their HLC stamp was too far ahead of this clock",
            m.drift_refusals.clone(),
        );
        registry.register(
            "replication_sent_bytes",
            "Bytes sent to peers (requests and answers)",
            m.replication_sent.clone(),
        );
        registry.register(
            "replication_received_bytes",
            "Bytes received from peers (requests and answers)",
            m.replication_received.clone(),
        );
        let sync: [(&str, &str, &Counter); 6] = [
            (
                "sync_received_bytes",
                "Bytes received from sync clients",
                &m.sync_received,
            ),
            (
                "sync_sent_bytes",
                "Bytes sent to sync clients",
                &m.sync_sent,
            ),
            (
                "sync_changes_accepted",
                "Client changes accepted (durable)",
                &m.sync_accepted,
            ),
            (
                "sync_changes_refused",
                "Client sync messages refused (layout)",
                &m.sync_refused,
            ),
            (
                "sync_messages_waiting",
                "Client sync messages that relayed other nodes' changes this node lacked (not taken; they wait for replication)",
                &m.sync_waiting,
            ),
            (
                "sync_connections_refused",
                "Sync connections refused at the limit",
                &m.sync_connections_refused,
            ),
        ];
        for (name, help, c) in sync {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "sync_connections",
            "Open sync (WebSocket) connections",
            m.sync_connections.clone(),
        );
        registry.register(
            "sync_documents_open",
            "Documents open on sync connections",
            m.sync_documents.clone(),
        );
        registry.register(
            "change_streams",
            "Open change-feed streams",
            m.change_streams.clone(),
        );
        registry.register(
            "change_events_sent",
            "Events sent on change-feed streams",
            m.change_events_sent.clone(),
        );
        registry.register(
            "change_streams_behind",
            "Change-feed streams closed for falling behind",
            m.change_streams_behind.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition, with the store's figures as of now.
    pub fn render(
        &self,
        s: &StoreStats,
        r: ReplicationStats,
        y: SyncStats,
        f: crate::StreamStats,
    ) -> String {
        self.documents.set(s.documents as i64);
        self.bytes_on_disk.set(s.bytes_on_disk as i64);
        self.cache_bytes.set(s.cache_bytes as i64);
        self.free_bytes.set(s.storage.free_bytes as i64);
        self.floor_bytes.set(s.storage.floor_bytes as i64);
        self.writable.set(i64::from(s.storage.problem.is_none()));
        self.damaged.set(s.scrub.damaged_count as i64);
        let set = |c: &Counter, v: u64| c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
        set(&self.scrub_checked, s.scrub.checked_total);
        set(&self.scrub_passes, s.scrub.passes);
        set(&self.damage_found, s.scrub.found);
        set(&self.damage_healed, s.scrub.healed);
        set(&self.cache_hits, s.cache_hits);
        set(&self.cache_misses, s.cache_misses);
        set(&self.flushes, s.flushes);
        set(&self.drift_refusals, r.drift_refusals);
        set(&self.replication_sent, r.bytes_sent);
        set(&self.replication_received, r.bytes_received);
        self.sync_connections.set(y.connections as i64);
        self.sync_documents.set(y.documents_open as i64);
        set(&self.sync_received, y.bytes_in);
        set(&self.sync_sent, y.bytes_out);
        set(&self.sync_accepted, y.changes_accepted);
        set(&self.sync_refused, y.changes_refused);
        set(&self.sync_waiting, y.changes_waiting);
        set(&self.sync_connections_refused, y.connections_refused);
        self.change_streams.set(f.streams as i64);
        set(&self.change_events_sent, f.events_sent);
        set(&self.change_streams_behind, f.streams_behind);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware: counts every request and times it.
pub(crate) async fn track(State(st): State<crate::AppState>, req: Request, next: Next) -> Response {
    let m = &st.metrics;
    st.drain.touch();
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let labels = RouteLabels {
        method: method.clone(),
        route: route.clone(),
    };
    m.latency
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
