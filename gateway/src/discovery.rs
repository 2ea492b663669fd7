//! How the gateway learns its routes at run time: it follows Consul's catalog (blocking queries)
//! for services carrying the gRPC tag, fetches each new service's descriptors over server
//! reflection through the mesh client, and publishes a new [`GatewayState`] (route table and
//! descriptor pools) whenever the set changes. A service that is in the catalog but not reachable
//! yet is retried every second; one that leaves the catalog loses its routes. Descriptors are
//! fetched again every refresh period, so a redeployed service's new methods appear too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::{DescriptorPool, MethodDescriptor};
use protomesh::client::Mesh;
use protomesh::proto::protomesh::options::v1::MethodPolicy;
use protomesh_consul::{ConsulClient, QueryOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reflection::{self, ServiceDescriptors};
use crate::routes::RouteTable;

/// How discovery behaves.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Only services with this Consul tag are routed.
    pub tag: String,
    /// Longest blocking query on the catalog.
    pub wait: Duration,
    /// How often every service's descriptors are fetched again.
    pub refresh: Duration,
    /// Bound on one descriptor fetch.
    pub fetch_timeout: Duration,
    /// Descriptors given up front, by Consul service name: used instead of reflection for those
    /// services (the fallback for services that do not serve reflection).
    pub static_descriptors: BTreeMap<String, Arc<ServiceDescriptors>>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            tag: "grpc".to_owned(),
            wait: Duration::from_secs(30),
            refresh: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            static_descriptors: BTreeMap::new(),
        }
    }
}

/// What the gateway serves from, replaced as a whole on every change.
#[derive(Debug, Default)]
pub struct GatewayState {
    /// HTTP routes.
    pub table: RouteTable,
    /// Each routed Consul service and its descriptors.
    pub services: BTreeMap<String, Arc<ServiceDescriptors>>,
    /// gRPC service full name (`pkg.Service`) → Consul service name, for native gRPC calls.
    pub grpc_services: HashMap<String, String>,
    /// The catalog was read at least once.
    pub ready: bool,
    /// Services in the catalog whose descriptors could not be fetched yet, with the reason.
    pub unreachable: BTreeMap<String, String>,
    /// The policy every routed method's descriptors declare, by gRPC path
    /// (`/package.Service/Method`): see [`crate::edge::declared_policies`].
    pub policies: HashMap<String, MethodPolicy>,
}

impl GatewayState {
    /// A pool that resolves any message of any routed service (for error details and Any):
    /// the first pool that knows the name.
    pub fn pools(&self) -> impl Iterator<Item = &DescriptorPool> {
        self.services.values().map(|s| &s.pool)
    }
}

/// Follows the catalog; the state receiver gives the latest [`GatewayState`].
pub fn spawn(
    consul: ConsulClient,
    mesh: Mesh,
    options: DiscoveryOptions,
) -> watch::Receiver<Arc<GatewayState>> {
    let (tx, rx) = watch::channel(Arc::new(GatewayState::default()));
    tokio::spawn(follow(consul, mesh, options, tx));
    rx
}

async fn follow(
    consul: ConsulClient,
    mesh: Mesh,
    options: DiscoveryOptions,
    tx: watch::Sender<Arc<GatewayState>>,
) {
    let mut index = 0u64;
    let mut errors = 0u32;
    let mut known: BTreeMap<String, (Arc<ServiceDescriptors>, Instant)> = BTreeMap::new();
    let mut unreachable: BTreeMap<String, String> = BTreeMap::new();
    let mut ready = false;
    loop {
        if tx.is_closed() {
            return;
        }
        // While some service waits to be reachable, come back every second.
        let wait = if unreachable.is_empty() {
            options.wait
        } else {
            Duration::from_secs(1)
        };
        let query = QueryOptions {
            index: (index > 0).then_some(index),
            wait: (index > 0).then_some(wait),
            ..QueryOptions::default()
        };
        let catalog = match consul.catalog_services(&query).await {
            Ok(answer) => {
                errors = 0;
                index = if answer.index < index {
                    0
                } else {
                    answer.index.max(1)
                };
                answer.value
            }
            Err(err) => {
                errors = errors.saturating_add(1);
                let backoff =
                    Duration::from_millis(100u64 << errors.min(6)).min(Duration::from_secs(5));
                tracing::warn!(error = %err, ?backoff, "gateway: cannot read the Consul catalog; keeping the current routes");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let wanted: BTreeSet<String> = catalog
            .into_iter()
            .filter(|(name, tags)| name != "consul" && tags.contains(&options.tag))
            .map(|(name, _)| name)
            .collect();

        let before: BTreeSet<String> = known.keys().cloned().collect();
        known.retain(|name, _| wanted.contains(name));
        unreachable.retain(|name, _| wanted.contains(name));
        let mut changed = before != known.keys().cloned().collect() || !ready;
        for name in &wanted {
            let stale = known
                .get(name)
                .is_none_or(|(_, fetched)| fetched.elapsed() >= options.refresh);
            if !stale {
                continue;
            }
            if let Some(fixed) = options.static_descriptors.get(name) {
                if !known.contains_key(name) {
                    tracing::info!(service = %name, grpc = ?fixed.services, "gateway: routes loaded from a descriptor-set file");
                    if let Err(err) = mesh.learn_methods(&[&fixed.pool.encode_to_vec()]) {
                        tracing::warn!(service = %name, error = %err, "gateway: cannot read the methods' idempotency levels");
                    }
                    changed = true;
                }
                known.insert(name.clone(), (Arc::clone(fixed), Instant::now()));
                continue;
            }
            let channel = mesh.channel(name);
            match reflection::fetch_with_timeout(channel, options.fetch_timeout).await {
                Ok(descriptors) => {
                    let fresh = Arc::new(descriptors);
                    let same = known.get(name).is_some_and(|(old, _)| {
                        old.services == fresh.services
                            && old.pool.files().count() == fresh.pool.files().count()
                    });
                    if !same {
                        tracing::info!(service = %name, grpc = ?fresh.services, "gateway: routes loaded");
                        changed = true;
                    }
                    // Retries follow each method's idempotency level from its own proto.
                    if let Err(err) = mesh.learn_methods(&[&fresh.pool.encode_to_vec()]) {
                        tracing::warn!(service = %name, error = %err, "gateway: cannot read the methods' idempotency levels");
                    }
                    known.insert(name.clone(), (fresh, Instant::now()));
                    unreachable.remove(name);
                }
                Err(err) => {
                    if known.contains_key(name) {
                        // Keep what we had; try again at the next refresh.
                        if let Some(entry) = known.get_mut(name) {
                            entry.1 = Instant::now();
                        }
                        tracing::debug!(service = %name, error = %err, "gateway: descriptor refresh failed; keeping the routes");
                    } else {
                        if unreachable.insert(name.clone(), err.to_string()).is_none() {
                            tracing::info!(service = %name, error = %err, "gateway: service not reachable yet; retrying every second");
                        }
                        changed = true;
                    }
                }
            }
        }
        if changed {
            ready = true;
            let state = build_state(&known, &unreachable);
            for conflict in state.table.conflicts() {
                tracing::warn!(%conflict, "gateway: conflicting route left out");
            }
            for error in state.table.errors() {
                tracing::warn!(%error, "gateway: http rule left out");
            }
            tracing::info!(
                routes = state.table.routes().len(),
                services = state.services.len(),
                "gateway: route table updated"
            );
            if tx.send(Arc::new(state)).is_err() {
                return;
            }
        }
    }
}

fn build_state(
    known: &BTreeMap<String, (Arc<ServiceDescriptors>, Instant)>,
    unreachable: &BTreeMap<String, String>,
) -> GatewayState {
    let mut grpc_services = HashMap::new();
    let mut methods: Vec<(&str, Vec<MethodDescriptor>)> = Vec::new();
    for (name, (descriptors, _)) in known {
        let mut of_service = Vec::new();
        for grpc in &descriptors.services {
            grpc_services
                .entry(grpc.clone())
                .or_insert_with(|| name.clone());
            if let Some(service) = descriptors.pool.get_service_by_name(grpc) {
                of_service.extend(service.methods());
            }
        }
        methods.push((name.as_str(), of_service));
    }
    let policies = crate::edge::declared_policies(methods.iter().flat_map(|(_, m)| m.iter()));
    GatewayState {
        table: RouteTable::build(methods),
        services: known
            .iter()
            .map(|(name, (d, _))| (name.clone(), Arc::clone(d)))
            .collect(),
        grpc_services,
        ready: true,
        unreachable: unreachable.clone(),
        policies,
    }
}
