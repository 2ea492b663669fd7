//! The buckets every latency histogram of the mesh shares (the runtime's `grpc_server_*` and
//! the gateway's HTTP metrics), so their quantiles line up.

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds, in seconds, of the latency histograms: 100 µs to 10 s, about ×2.5 apart.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations in seconds, with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}
