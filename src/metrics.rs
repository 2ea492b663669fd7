//! Prometheus metrics of a mesh process, served as `/metrics` on the admin listener
//! ([`crate::admin`]), never on the public port.
//!
//! A process has one [`Metrics`] registry (clones share it), built on the `prometheus-client`
//! crate. What it holds:
//! - `process_*`: resident memory, CPU seconds and open file descriptors, read from `/proc` at
//!   scrape time ([`process`]);
//! - `grpc_server_*`: requests by service, method and status code, their duration and the calls in
//!   flight, recorded by the tower layer [`grpc::GrpcServerMetricsLayer`] that
//!   [`MeshServer`](crate::server::MeshServer) puts in front of every service;
//! - `mesh_client_*`: the state of the process's mesh client — discovery, circuit breakers and
//!   every endpoint's counters — collected at scrape time from [`Mesh::status`] ([`mesh`]);
//! - whatever the binary adds: its own metrics ([`Metrics::register`]), collectors
//!   ([`Metrics::register_collector`]), and values read asynchronously when scraped
//!   ([`Metrics::on_scrape`]), such as the outbox and stream-consumer lag that the data layer
//!   adds (`protomesh_data::lag`).
//!
//! [`Metrics::render`] answers in the Prometheus text format 0.0.4 (what `promtool check metrics`
//! reads) or in OpenMetrics text, as the scraper's `Accept` header asks ([`Format::negotiate`]).

mod exposition;
pub mod grpc;
mod histogram;
pub mod mesh;
pub mod process;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockWriteGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::registry::{Metric, Registry};

use crate::client::Mesh;

pub use exposition::{openmetrics_to_prometheus_text, EncodeError, Format};
pub use grpc::{GrpcServerMetrics, GrpcServerMetricsLayer};
pub use histogram::{latency_histogram, LATENCY_BUCKETS};

/// How long one scrape waits for the values read at scrape time (the last values are shown
/// for those that did not answer in time).
pub const SCRAPE_REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Something to read (asynchronously) before each scrape, see [`Metrics::on_scrape`].
type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The process's metrics registry; cheap to clone, clones share it.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    registry: RwLock<Registry>,
    refreshers: Mutex<Vec<Refresh>>,
    grpc_server: OnceLock<Arc<grpc::GrpcServerFamilies>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the `process_*` metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        Self {
            inner: Arc::new(MetricsInner {
                registry: RwLock::new(registry),
                refreshers: Mutex::new(Vec::new()),
                grpc_server: OnceLock::new(),
            }),
        }
    }

    /// Registers a metric of the binary's own. `name` is the metric's full name, without the
    /// `_total` suffix of counters (the encoder adds it); `help` says what it measures.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry_mut().register(name, help, metric);
    }

    /// Registers a collector, whose `encode` runs at every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry_mut().register_collector(Box::new(collector));
    }

    /// Runs `refresh` before every scrape (all of them concurrently, each bounded by
    /// [`SCRAPE_REFRESH_TIMEOUT`]); it updates metrics registered with [`Metrics::register`] from
    /// something only an `async` call can read (a database, Redis).
    pub fn on_scrape<F, Fut>(&self, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let refresh: Refresh = Arc::new(move || Box::pin(refresh()));
        lock(&self.inner.refreshers).push(refresh);
    }

    /// Adds the `mesh_client_*` metrics of `mesh`, collected from [`Mesh::status`] at scrape time.
    pub fn watch_mesh(&self, mesh: Mesh) {
        self.register_collector(mesh::MeshClientCollector::new(mesh));
    }

    /// Runs the scrape-time refreshers, then writes every metric in `format`.
    pub async fn render(&self, format: Format) -> Result<String, EncodeError> {
        let refreshers: Vec<Refresh> = lock(&self.inner.refreshers).clone();
        futures::future::join_all(refreshers.iter().map(|refresh| async move {
            if tokio::time::timeout(SCRAPE_REFRESH_TIMEOUT, refresh())
                .await
                .is_err()
            {
                tracing::warn!(
                    timeout = ?SCRAPE_REFRESH_TIMEOUT,
                    "metrics: a scrape-time value took too long; showing the last one"
                );
            }
        }))
        .await;
        self.encode(format)
    }

    /// Writes every metric in `format` as they are now (without the scrape-time refreshers).
    pub fn encode(&self, format: Format) -> Result<String, EncodeError> {
        let mut openmetrics = String::with_capacity(16 * 1024);
        {
            let registry = match self.inner.registry.read() {
                Ok(registry) => registry,
                Err(poisoned) => poisoned.into_inner(),
            };
            prometheus_client::encoding::text::encode(&mut openmetrics, &registry)?;
        }
        Ok(match format {
            Format::OpenMetrics => openmetrics,
            Format::PrometheusText => openmetrics_to_prometheus_text(&openmetrics),
        })
    }

    /// The layer recording the `grpc_server_*` metrics of calls to the methods of `served`
    /// services (full names, `protomesh.priority.v1.PriorityService`), found in `pools`.
    pub fn grpc_server_layer(
        &self,
        served: &[&str],
        pools: &[&prost_reflect::DescriptorPool],
    ) -> GrpcServerMetricsLayer {
        GrpcServerMetricsLayer::new(self.grpc_server_families(), served, pools)
    }

    /// The `grpc_server_*` families, registered on first use.
    fn grpc_server_families(&self) -> Arc<grpc::GrpcServerFamilies> {
        Arc::clone(self.inner.grpc_server.get_or_init(|| {
            let families = grpc::GrpcServerFamilies::default();
            families.register(&mut self.registry_mut());
            Arc::new(families)
        }))
    }

    fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        match self.inner.registry.write() {
            Ok(registry) => registry,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn accept_headers_pick_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
        assert!(Format::PrometheusText
            .content_type()
            .starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn counters_are_named_by_their_samples_in_the_prometheus_format() {
        let metrics = Metrics::new();
        let jobs = Counter::<u64>::default();
        let queue = Gauge::<i64>::default();
        metrics.register("jobs_done", "Jobs done", jobs.clone());
        metrics.register("queue_length", "Jobs waiting", queue.clone());
        jobs.inc_by(3);
        queue.set(7);

        let open = metrics.encode(Format::OpenMetrics).unwrap();
        assert!(open.contains("# TYPE jobs_done counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");

        let text = metrics.encode(Format::PrometheusText).unwrap();
        assert!(
            text.contains("# HELP jobs_done_total Jobs done.\n# TYPE jobs_done_total counter\njobs_done_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE queue_length gauge\nqueue_length 7\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
    }

    #[test]
    fn unknown_becomes_untyped_and_units_go() {
        let open = "# HELP a_seconds A.\n# TYPE a_seconds unknown\n# UNIT a_seconds seconds\na_seconds 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(open),
            "# HELP a_seconds A.\n# TYPE a_seconds untyped\na_seconds 1\n"
        );
    }

    #[tokio::test]
    async fn scrape_time_refreshers_run_before_encoding() {
        let metrics = Metrics::new();
        let reads = Gauge::<i64>::default();
        metrics.register("reads", "Times read", reads.clone());
        metrics.on_scrape(move || {
            let reads = reads.clone();
            async move {
                reads.inc();
            }
        });
        metrics.render(Format::PrometheusText).await.unwrap();
        let text = metrics.render(Format::PrometheusText).await.unwrap();
        assert!(text.contains("\nreads 2\n"), "{text}");
    }
}
