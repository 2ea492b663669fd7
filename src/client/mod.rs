//! The mesh client: callers name a service, never an address. [`Mesh::channel`] returns a
//! [`MeshChannel`] that a generated tonic client takes (`PriorityServiceClient::new(channel)`);
//! each call through it is discovered (by a [`Discover`] source: Consul blocking queries, one
//! watcher per service name per process, or a fixed list), balanced, bounded and retried.
//!
//! The layers of a channel, outermost first, and why they sit there:
//! 0. [`crate::credential::ForwardCredentialLayer`]: a call made while handling a call
//!    carries that call's credential (unless it has its own), so the service called verifies the
//!    end user itself; first, so that every retry carries it too;
//! 1. [`deadline::DeadlineLayer`]: resolves the call's deadline first, so everything below —
//!    waiting for a concurrency slot, retries, backoff — spends the same budget;
//! 2. [`breaker::BreakerLayer`]: the target service's circuit breaker; while open, calls fail at
//!    once instead of queueing for a service that is down (see [`with_fallback`]);
//! 3. [`limit::LimitLayer`]: caps calls in flight to the service, so a slow target cannot make this
//!    process pile up unbounded work; waiting for a slot counts against the deadline;
//! 4. [`retry::RetryLayer`]: retries safe methods on connection errors and `UNAVAILABLE`, within
//!    a budget; gives each of their attempts but the last a timeout derived from the method's
//!    observed latency and the budget left (an attempt stalled on a hung endpoint is abandoned
//!    and sent elsewhere, when there is an elsewhere); each retry goes back through the balancer, which picks an endpoint the
//!    call has not tried yet when there is one. Inside the limit, so attempts share the call's
//!    slot; outside the balancer, so every attempt is balanced anew;
//! 5. [`balance::Balancer`]: picks an endpoint (P2C over peak-EWMA by default; among the
//!    caller's zone's endpoints while they can take the call, see [`zone`]), ejects outliers
//!    (failures in a row, abandoned attempts included; an ejection also drops the endpoint's
//!    connections; after one, a single failure before a success ejects it again), and spreads calls over as many connections per endpoint as the load needs.
//!    Its connections find a silent peer by TCP keep-alive while idle and, when
//!    [`ChannelOptions::http2_keep_alive`] is set, by HTTP/2 pings.
//!
//! Where a caller runs ([`Locality`]) shapes two of them: its zone makes the
//! balancer prefer same-zone endpoints, and its failover datacenters make discovery
//! ([`ConsulDiscovery::with_failover`]) hand the balancer another datacenter's instances while
//! the local one has none.

mod attempt;
pub mod balance;
pub mod breaker;
pub mod deadline;
pub mod discovery;
pub mod grpc_timeout;
pub(crate) mod latency;
pub mod limit;
mod locality;
pub mod methods;
mod options;
pub mod retry;
pub mod status;
mod whole;
pub mod zone;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use protomesh_consul::{ConsulClient, WatchState};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

pub use balance::{BalancePolicy, Balancer, ConnectionPolicy, EndpointSnapshot, OutlierPolicy};
pub use breaker::{
    is_circuit_open, is_service_down, with_fallback, BreakerPolicy, BreakerState, CircuitBreaker,
};
pub use deadline::{incoming_deadline, IncomingDeadlineLayer};
pub use discovery::{ConsulDiscovery, Discover, StaticDiscovery};
pub use locality::Locality;
pub use methods::MethodTable;
pub use options::ZonePolicy;
pub use options::{BoxError, ChannelOptions};
pub use retry::RetryPolicy;
pub use zone::{ZoneStatus, ZONE_META};

/// The process's entry to the mesh: shared discovery and one balancer per target service.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

struct MeshInner {
    /// Where each target service's instances come from.
    discovery: Box<dyn Discover>,
    methods: Arc<MethodTable>,
    targets: Mutex<HashMap<String, Target>>,
    /// The default-option channel of each service, built once.
    channels: Mutex<HashMap<String, MeshChannel>>,
    /// Mutual TLS for the connections of services first called from now on (see
    /// [`Mesh::use_tls`]).
    tls: RwLock<Option<crate::tls::MeshTls>>,
    /// The zone this process runs in: its calls prefer endpoints in it.
    zone: Option<String>,
}

/// What the process shares about one target service: its balancer (with the discovery watch
/// behind it) and its circuit breaker.
#[derive(Clone)]
struct Target {
    balancer: Balancer,
    breaker: CircuitBreaker,
}

impl Mesh {
    /// A mesh client discovering through `consul`; methods' retry safety is read from
    /// `methods` (built from the callee services' descriptor sets).
    pub fn new(consul: ConsulClient, methods: MethodTable) -> Self {
        Self::with_discovery(ConsulDiscovery::new(consul), methods)
    }

    /// A mesh client whose services' instances come from `discovery` (a [`StaticDiscovery`]
    /// calls fixed addresses, with no Consul agent); otherwise as [`Mesh::new`].
    pub fn with_discovery(discovery: impl Discover, methods: MethodTable) -> Self {
        Self::in_zone(discovery, methods, None)
    }

    /// Like [`Mesh::with_discovery`], for a process running in `zone` (its calls prefer the
    /// endpoints whose Consul meta `zone` is the same; see [`zone`]).
    pub fn in_zone(discovery: impl Discover, methods: MethodTable, zone: Option<&str>) -> Self {
        Self {
            inner: Arc::new(MeshInner {
                discovery: Box::new(discovery),
                methods: Arc::new(methods),
                targets: Mutex::new(HashMap::new()),
                channels: Mutex::new(HashMap::new()),
                tls: RwLock::new(None),
                zone: zone.filter(|z| !z.is_empty()).map(str::to_owned),
            }),
        }
    }

    /// A mesh client discovering through `consul` for a process at `locality`: its calls prefer
    /// its zone's endpoints and fail over to its failover datacenters in order while the local
    /// datacenter has no passing instance; otherwise as [`Mesh::from_consul`].
    pub fn located(
        consul: ConsulClient,
        descriptor_sets: &[&[u8]],
        locality: &Locality,
    ) -> Result<Self, methods::DescriptorError> {
        Ok(Self::in_zone(
            ConsulDiscovery::new(consul).with_failover(&locality.failover_datacenters),
            MethodTable::from_descriptor_sets(descriptor_sets)?,
            locality.zone.as_deref(),
        ))
    }

    /// The zone this process runs in, if it was given one.
    pub fn zone(&self) -> Option<&str> {
        self.inner.zone.as_deref()
    }

    /// Makes this client call with mutual TLS: `https://`, presenting `tls`'s certificate and
    /// verifying servers against its CA. It applies to every service first called after it, so
    /// set it before the first call ([`crate::server::MeshServer::bind`] sets it on the mesh given
    /// to [`crate::server::MeshServer::with_mesh`] when the server's TLS flags are set).
    pub fn use_tls(&self, tls: crate::tls::MeshTls) {
        match self.inner.tls.write() {
            Ok(mut guard) => *guard = Some(tls),
            Err(poisoned) => *poisoned.into_inner() = Some(tls),
        }
    }

    /// A mesh client discovering through `consul` that knows the methods of the services in
    /// `descriptor_sets` (encoded; for a service crate, its `proto::FILE_DESCRIPTOR_SET`, which
    /// holds the protos it imports too): which may be retried, their default deadlines. More can
    /// be learnt later ([`Mesh::learn_methods`]).
    pub fn from_consul(
        consul: ConsulClient,
        descriptor_sets: &[&[u8]],
    ) -> Result<Self, methods::DescriptorError> {
        Ok(Self::new(
            consul,
            MethodTable::from_descriptor_sets(descriptor_sets)?,
        ))
    }

    /// A channel to `service` with default options; the same one (clones of it) on every call,
    /// so callers may ask for it per request.
    pub fn channel(&self, service: &str) -> MeshChannel {
        let mut channels = match self.inner.channels.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        channels
            .entry(service.to_owned())
            .or_insert_with(|| self.channel_with(service, ChannelOptions::default()))
            .clone()
    }

    /// Learns which methods of more services may be retried (encoded descriptor sets), for
    /// services whose protos this process was not built with (the gateway learns them over
    /// reflection). Applies to existing channels too.
    pub fn learn_methods(&self, sets: &[&[u8]]) -> Result<(), methods::DescriptorError> {
        self.inner.methods.learn(sets)
    }

    /// Like [`Mesh::learn_methods`], from a decoded pool.
    pub fn learn_pool(&self, pool: &prost_reflect::DescriptorPool) {
        self.inner.methods.learn_pool(pool);
    }

    /// A channel to `service`. Channels to the same service share its watcher, balancer and
    /// circuit breaker (the balancing, connection, ejection and breaker options of the first
    /// channel to a service apply to all).
    pub fn channel_with(&self, service: &str, options: ChannelOptions) -> MeshChannel {
        let Target { balancer, breaker } = self.target(service, &options);
        let stack = ServiceBuilder::new()
            // Outermost: one client span per call, retries included; its context goes out.
            .layer(crate::telemetry::GrpcClientTraceLayer::new(service))
            .layer(crate::credential::ForwardCredentialLayer)
            .layer(deadline::DeadlineLayer::new(
                options.default_timeout,
                Arc::clone(&self.inner.methods),
            ))
            .layer(breaker::BreakerLayer::new(breaker))
            .layer(limit::LimitLayer::new(options.concurrency_limit))
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

    /// The healthy instances of `service` as Consul reports them, from the same watcher its
    /// channels balance over (started if this process has no channel to it yet). `changed()`
    /// resolves at the next change of the set.
    pub fn instance_updates(&self, service: &str) -> tokio::sync::watch::Receiver<WatchState> {
        self.target(service, &ChannelOptions::default())
            .balancer
            .instance_updates()
    }

    /// The balancers of every service this process calls.
    pub fn balancers(&self) -> Vec<Balancer> {
        self.targets().into_iter().map(|t| t.balancer).collect()
    }

    /// The circuit breaker of `service`, if this process has a channel to it.
    pub fn breaker(&self, service: &str) -> Option<CircuitBreaker> {
        self.targets()
            .into_iter()
            .find(|t| t.balancer.service() == service)
            .map(|t| t.breaker)
    }

    /// What this process knows about every service it calls, sorted by service name.
    pub fn status(&self) -> status::ClientStatus {
        let mut targets: Vec<_> = self
            .targets()
            .iter()
            .map(|t| status::TargetStatus::of(&t.balancer, &t.breaker))
            .collect();
        targets.sort_by(|a, b| a.service.cmp(&b.service));
        status::ClientStatus(targets)
    }

    fn targets(&self) -> Vec<Target> {
        match self.inner.targets.lock() {
            Ok(targets) => targets.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        }
    }

    fn target(&self, service: &str, options: &ChannelOptions) -> Target {
        let mut targets = match self.inner.targets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        targets
            .entry(service.to_owned())
            .or_insert_with(|| {
                let watch = self.inner.discovery.watch(service);
                let tls = match self.inner.tls.read() {
                    Ok(guard) => guard.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                Target {
                    balancer: Balancer::located(
                        watch,
                        options,
                        tls.as_ref(),
                        self.inner.zone.as_deref(),
                    ),
                    breaker: CircuitBreaker::new(service, options.breaker),
                }
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
