//! Serving a mesh service: one call adds gRPC health, server reflection (v1 and v1alpha), Consul
//! registration under a gRPC health check, and a lame-duck graceful shutdown to a tonic service.
//!
//! Lifecycle of [`MeshServer::serve`]:
//! 1. bind the listener (port 0 picks a free port) and mark every service SERVING;
//! 2. register with the local Consul agent (ID `<name>-<host>-<port>`, tag `grpc`, meta, one `GRPC`
//!    check per gRPC service; under mutual TLS one TTL check the process keeps passing while it is
//!    SERVING, see [`crate::tls`]) and keep the registration alive across agent restarts;
//! 3. on SIGTERM/SIGINT: NOT_SERVING at once, deregister, keep serving for the lame-duck period so
//!    watchers and balancers see the change, then stop accepting and send HTTP/2 GOAWAY, let
//!    in-flight calls finish within the drain timeout, cut what is left, return `Ok(())`.

mod authenticate;
mod cuttable;
pub mod message_limit;
mod reflection;
mod registration;
mod shutdown;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod validate;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::admin::{AdminServer, AdminState};
use crate::config::ServeConfig;
use crate::consul::{ConsulClient, ConsulError, Registrar, Registration};

pub use registration::instance_registration;
pub use shutdown::shutdown_signal;

/// Name of the standard gRPC health service.
/// Streams a connection may reset before this server has accepted them, before it closes the
/// connection (`GOAWAY ENHANCE_YOUR_CALM`). hyper's default, 20, bounds the memory a rapid-reset
/// flood holds; but a CPU-starved server with hundreds of calls in flight sees a caller's
/// deadline expiries (each a reset) arrive in one burst, and closing the connection then fails
/// every other call on it. Each such stream is a few hundred bytes.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 1024;

/// How often the server pings a connection over HTTP/2, and how long it waits for the answer
/// before closing it: a caller that went away without a word (a dead host, a half-open
/// connection) loses its calls, and long streams their resources, within 40 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Why a mesh server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (--listen / PROTOMESH_LISTEN): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The Consul settings are invalid.
    #[error("invalid Consul settings (CONSUL_HTTP_ADDR / --consul-addr, CONSUL_HTTP_TOKEN): {0}")]
    ConsulConfig(#[source] ConsulError),
    /// The first registration with the Consul agent failed.
    #[error("cannot register {service_id} with the Consul agent: {source}")]
    Register {
        /// The instance's service ID.
        service_id: String,
        /// What the agent (or the network) said.
        #[source]
        source: ConsulError,
    },
    /// The admin listener could not be bound.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The mutual-TLS files (`--tls-cert`, `--tls-key`, `--tls-ca`) cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A descriptor set given to [`MeshServer::descriptor_set`] does not decode, or the sets
    /// together do not make a consistent pool (an import missing).
    #[error("the served descriptor sets cannot be read: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// A served service is in none of the descriptor sets given to [`MeshServer::descriptor_set`]
    /// (its policies, rules and reflection would silently be missing).
    #[error("no descriptor for the served service {service}: give the server its crate's `proto::FILE_DESCRIPTOR_SET` (MeshServer::descriptor_set)")]
    MissingDescriptor {
        /// The service's full name.
        service: &'static str,
    },
    /// The credential flags (`--jwt-*`, `--jwks-*`, `--api-keys-file`) cannot be used.
    #[error(transparent)]
    Credentials(#[from] crate::auth::AuthConfigError),
    /// The mesh client's descriptors do not decode.
    #[error(transparent)]
    MeshDescriptors(#[from] crate::client::methods::DescriptorError),
    /// A request rule declared in the descriptors is not supported (see [`crate::rules`]).
    #[error("unsupported request rule: {0}")]
    Rules(#[from] crate::rules::RuleError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A tonic server with health, reflection, Consul registration and graceful shutdown.
pub struct MeshServer {
    name: String,
    version: String,
    config: ServeConfig,
    routes: Routes,
    grpc_services: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    health: HealthReporter,
    mesh: Option<crate::client::Mesh>,
    authenticator: Option<crate::auth::Authenticator>,
    metrics: crate::metrics::Metrics,
}

impl MeshServer {
    /// A server for the Consul service `name` (for example `priority`), configured by `config`.
    /// Give it the encoded descriptor set of the services it serves ([`MeshServer::descriptor_set`]):
    /// reflection, per-method policies, request rules and default deadlines are read from it.
    pub fn new(name: impl Into<String>, config: ServeConfig) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        Self {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config,
            routes: Routes::new(health_service),
            grpc_services: Vec::new(),
            descriptor_sets: vec![crate::proto::FILE_DESCRIPTOR_SET],
            health,
            mesh: None,
            authenticator: None,
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// Verifies callers with `authenticator` instead of the one the configuration's credential
    /// flags describe (the users service verifies its own tokens with its own keys).
    pub fn authenticator(mut self, authenticator: crate::auth::Authenticator) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// The mesh client the service's handlers call other services with; the admin listener's
    /// `/mesh` shows its state.
    pub fn with_mesh(mut self, mesh: crate::client::Mesh) -> Self {
        self.mesh = Some(mesh);
        self
    }

    /// The service's own version, put in its Consul meta (`version`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds a generated tonic service. Its health status follows the server's, reflection lists it,
    /// and Consul checks it with its own gRPC health check.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self.grpc_services.push(S::NAME);
        self
    }

    /// Adds an encoded descriptor set of the services served (the `FILE_DESCRIPTOR_SET` that
    /// [`include_protos!`](crate::include_protos) defines): reflection serves it, and per-method
    /// policies, request rules and default deadlines are read from it. The mesh client given to
    /// [`MeshServer::with_mesh`] learns from it which methods of the services it imports may be
    /// retried.
    pub fn descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// The process's metrics registry, served as `/metrics` on the admin listener; the binary
    /// may add its own metrics to it.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.metrics.clone()
    }

    /// A handle to change the health status of services while serving.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Loads the TLS files (when given: the mesh client, if any, then calls with them too) and
    /// the credential settings, and binds the listener; the returned server knows its real
    /// address.
    pub async fn bind(mut self) -> Result<BoundServer, ServeError> {
        let tls = self.config.tls.load()?;
        if let (Some(tls), Some(mesh)) = (&tls, &self.mesh) {
            mesh.use_tls(tls.clone());
        }
        // The served descriptors, decoded once (without comments) for everything but reflection.
        let descriptors = crate::descriptors::lean_pool(&self.descriptor_sets)?;
        if let Some(mesh) = &self.mesh {
            mesh.learn_pool(&descriptors);
        }
        if self.authenticator.is_none() {
            self.authenticator = Some(self.configured_authenticator(tls.as_ref())?);
        }
        let listener = TcpListener::bind(self.config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: self.config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: self.config.listen,
            source,
        })?;
        let admin = match self.config.admin {
            Some(addr) => Some(AdminServer::bind(addr).await?),
            None => None,
        };
        Ok(BoundServer {
            server: self,
            descriptors,
            listener,
            local_addr,
            admin,
            tls,
        })
    }

    /// The authenticator the configuration describes; a JWKS is fetched through the server's mesh
    /// client, or through one of its own when the service calls no other.
    fn configured_authenticator(
        &self,
        tls: Option<&crate::tls::MeshTls>,
    ) -> Result<crate::auth::Authenticator, ServeError> {
        let config = match &self.config.authenticate_with {
            Some(config) => config.clone(),
            None => self.config.credentials.auth_config()?,
        };
        if config.jwks.is_none() {
            return Ok(crate::auth::Authenticator::without_mesh(config));
        }
        let mesh = match &self.mesh {
            Some(mesh) => mesh.clone(),
            None => {
                let consul = self.config.consul().map_err(ServeError::ConsulConfig)?;
                let client = ConsulClient::new(consul).map_err(ServeError::ConsulConfig)?;
                let mesh = crate::client::Mesh::located(client, &[], &self.config.locality)?;
                if let Some(tls) = tls {
                    mesh.use_tls(tls.clone());
                }
                mesh
            }
        };
        Ok(crate::auth::Authenticator::new(config, &mesh))
    }

    /// Binds, registers and serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn serve(self) -> Result<(), ServeError> {
        self.bind().await?.run_until(shutdown_signal()).await
    }
}

/// A [`MeshServer`] whose listener is bound.
pub struct BoundServer {
    server: MeshServer,
    /// The served descriptor sets, decoded once (see [`crate::descriptors`]).
    descriptors: prost_reflect::DescriptorPool,
    listener: TcpListener,
    local_addr: SocketAddr,
    admin: Option<AdminServer>,
    tls: Option<crate::tls::MeshTls>,
}

impl BoundServer {
    /// The address the listener really bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The process's metrics registry (see [`MeshServer::metrics`]).
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.server.metrics.clone()
    }

    /// The address the admin listener really bound, if `--admin` was given.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Registers and serves until `signal` completes, then runs the graceful shutdown.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        let BoundServer {
            server,
            descriptors,
            listener,
            local_addr,
            admin,
            tls,
        } = self;
        let MeshServer {
            name,
            version,
            config,
            routes,
            grpc_services,
            descriptor_sets,
            health,
            mesh,
            authenticator,
            metrics,
        } = server;
        if let Some(service) = undescribed_service(&descriptors, &grpc_services) {
            return Err(ServeError::MissingDescriptor { service });
        }
        if let Some(mesh) = &mesh {
            metrics.watch_mesh(mesh.clone());
        }
        // Calls are measured only when the admin listener can show the numbers.
        let metrics_port = admin.as_ref().map(|admin| admin.local_addr().port());
        let metrics_layer = match metrics_port {
            Some(_) => metrics_layer(&metrics, &descriptors, &grpc_services),
            None => crate::metrics::GrpcServerMetricsLayer::disabled(),
        };
        // The methods' default deadlines (their policy's `default_timeout`), for calls that come
        // without `grpc-timeout` (the sets decoded in `bind`).
        let method_defaults =
            std::sync::Arc::new(crate::client::MethodTable::from_pool(&descriptors));
        let authentication = authenticate::AuthenticationLayer::new(
            authenticate::MethodRequirements::from_pool(
                &descriptors,
                config.default_auth.requirement(),
            ),
            authenticator.unwrap_or_else(|| {
                crate::auth::Authenticator::without_mesh(crate::auth::AuthConfig::default())
            }),
        );
        // The request rules of the served methods, compiled once; one not supported stops the
        // start, so no declared rule is silently left unenforced.
        let validation = validate::ValidationLayer::new(crate::rules::MethodRules::from_pool(
            &descriptors,
            &grpc_services,
        )?);
        let admin_state = AdminState::new(mesh).with_metrics(metrics);
        let stop_admin = CancellationToken::new();
        if let Some(admin) = admin {
            tracing::info!(admin = %admin.local_addr(), "admin listener: /healthz /readyz /mesh /metrics");
            let (state, stop) = (admin_state.clone(), stop_admin.clone());
            tokio::spawn(async move {
                if let Err(err) = admin.serve(state, stop).await {
                    tracing::error!(error = %err, "admin listener failed");
                }
            });
        }
        // However run_until ends, the admin listener ends with it.
        let _stop_admin = stop_admin.drop_guard();

        let advertised = advertised_names(&grpc_services);
        let routes = routes
            .add_service(reflection::v1(&descriptor_sets, &advertised))
            .add_service(reflection::v1alpha(&descriptor_sets, &advertised));
        for service in &grpc_services {
            health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }

        let (stop_accepting, stop_accepting_rx) = oneshot::channel::<()>();
        // Every connection is cuttable, so the drain timeout really bounds the shutdown.
        let cut_connections = CancellationToken::new();
        let cut = cut_connections.clone();
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(move |conn| conn.map(|stream| cuttable::CuttableStream::new(stream, cut.clone())));
        let builder = tonic::transport::Server::builder()
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        // TLS only, client certificates signed by the mesh CA required.
        #[cfg(feature = "tls")]
        let builder = match &tls {
            Some(tls) => builder.tls_config(tls.server_config())?,
            None => builder,
        };
        // Without the `tls` feature, `bind` has refused TLS settings: `tls` is `None`.
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        let mut serving = tokio::spawn(
            builder
                // Outermost: the call's server span (traceparent in, request id) covers all.
                .layer(crate::telemetry::GrpcServerTraceLayer)
                // Handlers' outgoing mesh calls inherit what is left of the incoming deadline.
                .layer(metrics_layer)
                .layer(crate::client::IncomingDeadlineLayer::new(method_defaults))
                // Caps grpc-message of every answer (handlers, tonic, reflection, refusals), so
                // neither the layers above nor the caller ever see echoed megabytes.
                .layer(crate::server::message_limit::MessageLimitLayer::default())
                // No handler runs for a caller its method's policy refuses; refusals are
                // measured and traced like any answer.
                .layer(authentication)
                // After authentication (a caller it refuses learns nothing of the rules): no
                // handler runs for a request that breaks its method's declared rules.
                .layer(validation)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_accepting_rx.await;
                }),
        );

        let registration = if config.no_register {
            tracing::info!(service = %name, %local_addr, "serving (not registered in Consul)");
            None
        } else {
            match register(
                &name,
                &version,
                &config,
                local_addr,
                &grpc_services,
                &health,
                metrics_port,
            )
            .await
            {
                Ok(registration) => Some(registration),
                Err(err) => {
                    serving.abort();
                    return Err(err);
                }
            }
        };

        tokio::select! {
            () = signal => {}
            result = &mut serving => {
                // The server stopped on its own: only an error can do that.
                return match result {
                    Ok(outcome) => outcome.map_err(ServeError::from),
                    Err(join) => {
                        tracing::error!(error = %join, "gRPC server task ended");
                        Ok(())
                    }
                };
            }
        }

        // Lame duck: tell health checkers and watchers first, keep answering meanwhile.
        tracing::info!(service = %name, lame_duck = ?config.lame_duck, "shutting down: NOT_SERVING");
        admin_state.set_ready(false);
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for service in &grpc_services {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        if let Some(registration) = registration {
            let service_id = registration.service_id().to_owned();
            match registration.deregister().await {
                Ok(()) => tracing::info!(%service_id, "deregistered from Consul"),
                Err(err) => tracing::warn!(%service_id, error = %err, "deregistration failed"),
            }
        }
        tokio::time::sleep(config.lame_duck).await;

        // Stop accepting, send GOAWAY, drain within the bound, cut what is left.
        let _ = stop_accepting.send(());
        match tokio::time::timeout(config.drain_timeout, &mut serving).await {
            Ok(Ok(outcome)) => {
                tracing::info!(service = %name, "drained; stopped");
                outcome.map_err(ServeError::from)
            }
            Ok(Err(join)) => {
                tracing::error!(error = %join, "gRPC server task ended");
                Ok(())
            }
            Err(_) => {
                cut_connections.cancel();
                serving.abort();
                tracing::warn!(
                    service = %name,
                    drain_timeout = ?config.drain_timeout,
                    "drain timeout reached; closing the remaining connections"
                );
                Ok(())
            }
        }
    }
}

/// Registers the instance with the Consul agent and keeps it registered.
async fn register(
    name: &str,
    version: &str,
    config: &ServeConfig,
    local_addr: SocketAddr,
    grpc_services: &[&'static str],
    health: &HealthReporter,
    metrics_port: Option<u16>,
) -> Result<Registration, ServeError> {
    let consul_config = config.consul().map_err(ServeError::ConsulConfig)?;
    let client = ConsulClient::new(consul_config).map_err(ServeError::ConsulConfig)?;
    let advertise = match config.advertise {
        Some(addr) => addr,
        None => registration::advertise_addr(local_addr, client.address()),
    };
    let mut registration = instance_registration(name, version, advertise, grpc_services, config);
    // Prometheus finds the admin listener (`/metrics`) by this meta.
    if let Some(port) = metrics_port {
        registration
            .meta
            .insert("metrics_port".to_owned(), port.to_string());
    }
    let service_id = registration.id.clone();
    let mut registrar = Registrar::new(client, registration);
    if config.tls.is_enabled() {
        // Consul cannot run gRPC checks against a port that requires client certificates.
        registrar = registrar.with_ttl_heartbeat(
            registration::ttl_check_id(&service_id),
            config.check_interval,
            registration::serving_probe(health, grpc_services),
        );
    }
    let handle = registrar
        .register()
        .await
        .map_err(|source| ServeError::Register {
            service_id: service_id.clone(),
            source,
        })?;
    tracing::info!(%service_id, %advertise, "registered in Consul");
    Ok(handle)
}

/// The metrics layer of the served services, health and reflection.
fn metrics_layer(
    metrics: &crate::metrics::Metrics,
    descriptors: &prost_reflect::DescriptorPool,
    grpc_services: &[&'static str],
) -> crate::metrics::GrpcServerMetricsLayer {
    let mut served = advertised_names(grpc_services);
    served.extend([
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    // The runtime's own services' descriptors (small, without comments to leave out).
    let own = crate::descriptors::lean_pool(&[
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    match own {
        Ok(own) => metrics.grpc_server_layer(&served, &[descriptors, &own]),
        Err(_) => metrics.grpc_server_layer(&served, &[descriptors]),
    }
}

/// Names advertised by reflection (each version adds its own): the mesh services and health.
fn advertised_names(grpc_services: &[&'static str]) -> Vec<&'static str> {
    let mut names = grpc_services.to_vec();
    names.push(HEALTH_SERVICE);
    names
}

/// The first of `grpc_services` that `descriptors` does not declare.
fn undescribed_service(
    descriptors: &prost_reflect::DescriptorPool,
    grpc_services: &[&'static str],
) -> Option<&'static str> {
    grpc_services
        .iter()
        .copied()
        .find(|service| descriptors.get_service_by_name(service).is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_service_without_a_descriptor_is_named() {
        let priority = "protomesh.priority.v1.PriorityService";
        let pool = crate::descriptors::lean_pool(crate::test_protos::SETS).unwrap();
        assert_eq!(undescribed_service(&pool, &[priority]), None);
        let shared = crate::descriptors::lean_pool(&[crate::proto::FILE_DESCRIPTOR_SET]).unwrap();
        assert_eq!(undescribed_service(&shared, &[priority]), Some(priority));
        assert_eq!(
            undescribed_service(&pool, &[priority, "acme.Unknown"]),
            Some("acme.Unknown")
        );
    }
}
