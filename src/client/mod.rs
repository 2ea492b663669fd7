//! The mesh client: callers name a service, never an address. [`Mesh::channel`] returns a
//! [`MeshChannel`] that a generated tonic client takes (`PriorityServiceClient::new(channel)`);
//! each call through it is discovered (Consul blocking queries, one watcher per service name per
//! process), balanced, bounded and retried.
//!
//! The layers of a channel, outermost first, and why they sit there:
//! 1. [`deadline::DeadlineLayer`]: resolves the call's deadline first, so everything below —
//!    waiting for a concurrency slot, retries, backoff — spends the same budget;
//! 2. concurrency limit: caps calls in flight to the service, so a slow target cannot make this
//!    process pile up unbounded work; waiting for a slot counts against the deadline;
//! 3. [`retry::RetryLayer`]: retries safe methods on connection errors and `UNAVAILABLE`, within
//!    a budget; each retry goes back through the balancer, which usually picks another endpoint;
//! 4. [`balance::Balancer`]: picks an endpoint (P2C over peak-EWMA by default), ejects outliers.

pub mod balance;
pub mod deadline;
pub mod grpc_timeout;
pub mod methods;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use protomesh_consul::{ConsulClient, HealthWatcher, WatchHandle, WatchOptions};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

pub use balance::{BalancePolicy, Balancer, EndpointSnapshot, OutlierPolicy};
pub use deadline::{incoming_deadline, IncomingDeadlineLayer};
pub use methods::MethodTable;
pub use retry::RetryPolicy;

/// Errors that travel through the channel's layers (tonic turns a boxed `Status` back into it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How channels to one service behave.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions {
    /// Deadline of a call when neither the caller nor an incoming call sets one.
    pub default_timeout: Duration,
    /// Most calls in flight to the service from this channel's clones.
    pub concurrency_limit: usize,
    /// Endpoint choice.
    pub balance: BalancePolicy,
    /// Outlier ejection.
    pub outliers: OutlierPolicy,
    /// Retries.
    pub retry: RetryPolicy,
    /// TCP connect timeout to an endpoint.
    pub connect_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            concurrency_limit: 10_000,
            balance: BalancePolicy::default(),
            outliers: OutlierPolicy::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// The process's entry to the mesh: shared discovery and one balancer per target service.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

struct MeshInner {
    consul: ConsulClient,
    watch_options: WatchOptions,
    methods: Arc<MethodTable>,
    balancers: Mutex<HashMap<String, Balancer>>,
}

impl Mesh {
    /// A mesh client discovering through `consul`; methods' retry safety is read from
    /// `methods` (usually built from [`crate::proto::FILE_DESCRIPTOR_SET`]).
    pub fn new(consul: ConsulClient, methods: MethodTable) -> Self {
        Self {
            inner: Arc::new(MeshInner {
                consul,
                watch_options: WatchOptions::default(),
                methods: Arc::new(methods),
                balancers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A mesh client for the mesh's own protos.
    pub fn from_consul(consul: ConsulClient) -> Result<Self, methods::DescriptorError> {
        Ok(Self::new(
            consul,
            MethodTable::from_descriptor_sets(&[crate::proto::FILE_DESCRIPTOR_SET])?,
        ))
    }

    /// A channel to `service` with default options.
    pub fn channel(&self, service: &str) -> MeshChannel {
        self.channel_with(service, ChannelOptions::default())
    }

    /// A channel to `service`. Channels to the same service share its watcher and balancer (the
    /// balancing and ejection options of the first channel to a service apply to all).
    pub fn channel_with(&self, service: &str, options: ChannelOptions) -> MeshChannel {
        let balancer = self.balancer(service, &options);
        let stack = ServiceBuilder::new()
            .layer(deadline::DeadlineLayer::new(options.default_timeout))
            .concurrency_limit(options.concurrency_limit)
            .map_err(BoxError::from)
            .layer(retry::RetryLayer::new(
                options.retry,
                Arc::clone(&self.inner.methods),
            ))
            .service(balancer);
        MeshChannel {
            service: service.to_owned(),
            inner: BoxCloneSyncService::new(stack),
        }
    }

    /// The balancers of every service this process calls, for status views.
    pub fn balancers(&self) -> Vec<Balancer> {
        self.inner
            .balancers
            .lock()
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default()
    }

    fn balancer(&self, service: &str, options: &ChannelOptions) -> Balancer {
        let mut balancers = match self.inner.balancers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        balancers
            .entry(service.to_owned())
            .or_insert_with(|| {
                let watch: WatchHandle = HealthWatcher::spawn(
                    self.inner.consul.clone(),
                    service,
                    self.inner.watch_options.clone(),
                );
                Balancer::new(
                    watch,
                    options.balance,
                    options.outliers,
                    options.connect_timeout,
                )
            })
            .clone()
    }
}

/// A channel to a mesh service by name; cheap to clone; give it to a generated tonic client.
#[derive(Clone)]
pub struct MeshChannel {
    service: String,
    inner: BoxCloneSyncService<
        http::Request<tonic::body::Body>,
        http::Response<tonic::body::Body>,
        BoxError,
    >,
}

impl MeshChannel {
    /// The target service's name.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl Service<http::Request<tonic::body::Body>> for MeshChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = <BoxCloneSyncService<
        http::Request<tonic::body::Body>,
        http::Response<tonic::body::Body>,
        BoxError,
    > as Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.inner.call(request)
    }
}
