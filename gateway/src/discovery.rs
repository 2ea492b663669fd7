//! How the gateway learns its routes at run time: it follows Consul's catalog (blocking queries)
//! for services carrying the gRPC tag, fetches each service's descriptors over server reflection
//! through the mesh client, and publishes a new [`GatewayState`] (route table and descriptor
//! pools) whenever what it knows changes.
//!
//! One slow or broken service never holds up another's routes:
//! - the catalog is followed by its own task, so a service that leaves the catalog loses its
//!   routes as soon as Consul answers the blocking query (within a second or so);
//! - each service's descriptors are fetched by its own task, within its own time budget
//!   ([`DiscoveryOptions::fetch_timeout`]); its routes are published the moment they arrive;
//! - a service whose fetch fails is tried again after a growing, jittered backoff
//!   ([`DiscoveryOptions::retry_min`] doubling up to [`DiscoveryOptions::retry_max`]), or sooner
//!   when its set of healthy instances changes (an instance that just started passing is worth
//!   asking at once), never more often than every [`MIN_RETRY_SPACING`].
//!
//! A service that answered once keeps its routes while a later fetch fails (its calls then fail
//! with `503` if no instance is healthy); its descriptors are fetched again every
//! [`DiscoveryOptions::refresh`], so a redeployed service's new methods appear too.
//!
//! With failover datacenters ([`DiscoveryOptions::failover_datacenters`]), the catalog routed is
//! the union of the local datacenter's and theirs: a service whose every instance left the local
//! datacenter keeps its routes, and the mesh client sends its calls to the failover datacenter.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::{DescriptorPool, MethodDescriptor};
use protomesh::client::Mesh;
use protomesh::proto::protomesh::options::v1::{AuthRequirement, MethodPolicy};
use protomesh_consul::{follow_sources, ConsulClient, QueryOptions};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::reflection::{self, ServiceDescriptors};
use crate::routes::RouteTable;

/// Shortest time between two fetches of one failing service, however often its instances change.
pub const MIN_RETRY_SPACING: Duration = Duration::from_millis(250);

/// How discovery behaves.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Only services with this Consul tag are routed.
    pub tag: String,
    /// Longest blocking query on the catalog.
    pub wait: Duration,
    /// How often every service's descriptors are fetched again.
    pub refresh: Duration,
    /// Bound on one descriptor fetch (each service has its own).
    pub fetch_timeout: Duration,
    /// First wait before fetching again from a service whose fetch failed; it doubles (with
    /// jitter) with each failure in a row.
    pub retry_min: Duration,
    /// Longest wait before fetching again from a failing service.
    pub retry_max: Duration,
    /// Descriptors given up front, by Consul service name: used instead of reflection for those
    /// services (the fallback for services that do not serve reflection).
    pub static_descriptors: BTreeMap<String, Arc<ServiceDescriptors>>,
    /// Datacenters whose catalogs are routed too (their services reached through the mesh
    /// client's failover).
    pub failover_datacenters: Vec<String>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            tag: "grpc".to_owned(),
            wait: Duration::from_secs(30),
            refresh: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            static_descriptors: BTreeMap::new(),
            failover_datacenters: Vec::new(),
        }
    }
}

/// What the gateway serves from, replaced as a whole on every change.
#[derive(Debug, Default)]
pub struct GatewayState {
    /// HTTP routes.
    pub(crate) table: RouteTable,
    /// Each routed Consul service and its descriptors.
    pub services: BTreeMap<String, Arc<ServiceDescriptors>>,
    /// gRPC service full name (`pkg.Service`) → Consul service name, for native gRPC calls.
    pub grpc_services: HashMap<String, String>,
    /// The catalog was read, and every service it listed then was asked for its descriptors
    /// once (each within its own fetch budget).
    pub ready: bool,
    /// Services in the catalog whose descriptors could not be fetched yet, with the reason.
    pub unreachable: BTreeMap<String, String>,
    /// The policy every routed method's descriptors declare, by gRPC path
    /// (`/package.Service/Method`); one that cannot be read is `authenticated` (fails closed).
    pub(crate) policies: HashMap<String, MethodPolicy>,
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

/// The outcome of one fetch, sent by a service's task.
struct Fetched {
    service: String,
    /// Which task of the service sent it (a removed and re-added service gets a new one).
    generation: u64,
    result: Result<Arc<ServiceDescriptors>, String>,
}

/// What the follower knows of one service in the catalog.
struct Followed {
    generation: u64,
    /// Its fetching task (none for services with static descriptors).
    task: Option<AbortHandle>,
    descriptors: Option<Arc<ServiceDescriptors>>,
    /// Why its descriptors could not be fetched, while it has none.
    unreachable: Option<String>,
}

impl Drop for Followed {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn follow(
    consul: ConsulClient,
    mesh: Mesh,
    options: DiscoveryOptions,
    tx: watch::Sender<Arc<GatewayState>>,
) {
    let (catalog_tx, mut catalog) = watch::channel(None::<BTreeSet<String>>);
    let mut tasks = JoinSet::new();
    tasks.spawn(follow_catalogs(
        consul,
        options.tag.clone(),
        options.wait,
        options.failover_datacenters.clone(),
        catalog_tx,
    ));
    let (fetched_tx, mut fetched) = mpsc::channel::<Fetched>(64);
    let mut services: BTreeMap<String, Followed> = BTreeMap::new();
    let mut generations = 0u64;
    // Services of the first catalog answer not asked once yet: the state is ready when none is.
    let mut first_round: Option<BTreeSet<String>> = None;
    loop {
        let mut changed = false;
        tokio::select! {
            () = tx.closed() => return,
            read = catalog.changed() => {
                if read.is_err() {
                    return;
                }
                let Some(wanted) = catalog.borrow_and_update().clone() else {
                    continue;
                };
                let before = services.len();
                services.retain(|name, followed| {
                    let keep = wanted.contains(name);
                    if !keep {
                        tracing::info!(service = %name, routed = followed.descriptors.is_some(), "gateway: service left the catalog; its routes go");
                    }
                    keep
                });
                changed |= services.len() != before;
                for name in &wanted {
                    if services.contains_key(name) {
                        continue;
                    }
                    generations += 1;
                    let followed = start(name, generations, &mesh, &options, &fetched_tx, &mut tasks);
                    changed |= followed.descriptors.is_some();
                    services.insert(name.clone(), followed);
                }
                if first_round.is_none() {
                    first_round = Some(
                        wanted
                            .iter()
                            .filter(|name| services.get(*name).is_some_and(|s| s.descriptors.is_none()))
                            .cloned()
                            .collect(),
                    );
                    changed = true;
                }
            }
            Some(outcome) = fetched.recv() => {
                changed |= record(&mut services, &mut first_round, outcome);
            }
        }
        // Several answers may be waiting: take them all before building one state.
        while let Ok(outcome) = fetched.try_recv() {
            changed |= record(&mut services, &mut first_round, outcome);
        }
        // Forget finished tasks (a removed service's aborted one).
        while tasks.try_join_next().is_some() {}
        if let Some(pending) = &mut first_round {
            let before = pending.len();
            pending.retain(|name| services.contains_key(name));
            changed |= pending.len() != before;
        }
        if changed {
            let ready = first_round.as_ref().is_some_and(BTreeSet::is_empty);
            let state = build_state(&services, ready);
            for conflict in state.table.conflicts() {
                tracing::warn!(%conflict, "gateway: conflicting route left out");
            }
            for error in state.table.errors() {
                tracing::warn!(%error, "gateway: http rule left out");
            }
            tracing::info!(
                routes = state.table.routes().len(),
                services = state.services.len(),
                unreachable = state.unreachable.len(),
                "gateway: route table updated"
            );
            if tx.send(Arc::new(state)).is_err() {
                return;
            }
        }
    }
}

/// Starts following a service that entered the catalog: its static descriptors, or a task
/// fetching them.
fn start(
    name: &str,
    generation: u64,
    mesh: &Mesh,
    options: &DiscoveryOptions,
    fetched: &mpsc::Sender<Fetched>,
    tasks: &mut JoinSet<()>,
) -> Followed {
    if let Some(fixed) = options.static_descriptors.get(name) {
        tracing::info!(service = %name, grpc = ?fixed.services, "gateway: routes loaded from a descriptor-set file");
        mesh.learn_pool(&fixed.pool);
        return Followed {
            generation,
            task: None,
            descriptors: Some(Arc::clone(fixed)),
            unreachable: None,
        };
    }
    let task = tasks.spawn(follow_service(
        name.to_owned(),
        generation,
        mesh.clone(),
        options.clone(),
        fetched.clone(),
    ));
    Followed {
        generation,
        task: Some(task),
        descriptors: None,
        unreachable: None,
    }
}

/// Takes in one fetch's outcome; true when the published state must change.
fn record(
    services: &mut BTreeMap<String, Followed>,
    first_round: &mut Option<BTreeSet<String>>,
    outcome: Fetched,
) -> bool {
    let Some(followed) = services.get_mut(&outcome.service) else {
        return false;
    };
    if followed.generation != outcome.generation {
        return false;
    }
    let asked_first = first_round
        .as_mut()
        .is_some_and(|pending| pending.remove(&outcome.service));
    match outcome.result {
        Ok(fresh) => {
            let same = followed.descriptors.as_ref().is_some_and(|old| {
                // Every file compared whole: a redeploy may add methods to a file it had.
                old.services == fresh.services
                    && old
                        .pool
                        .file_descriptor_protos()
                        .eq(fresh.pool.file_descriptor_protos())
            });
            let was_unreachable = followed.unreachable.take().is_some();
            if !same {
                tracing::info!(service = %outcome.service, grpc = ?fresh.services, "gateway: routes loaded");
            }
            followed.descriptors = Some(fresh);
            !same || was_unreachable || asked_first
        }
        Err(reason) => {
            if followed.descriptors.is_some() {
                // Keep what we had; its task tries again.
                tracing::debug!(service = %outcome.service, error = %reason, "gateway: descriptor refresh failed; keeping the routes");
                return asked_first;
            }
            let new = followed.unreachable.as_deref() != Some(reason.as_str());
            if followed.unreachable.is_none() {
                tracing::info!(service = %outcome.service, error = %reason, "gateway: service not reachable yet; retrying with backoff");
            }
            followed.unreachable = Some(reason);
            new || asked_first
        }
    }
}

/// Follows the local catalog and the failover datacenters' (see [`follow_catalog`]), publishing
/// the union of the services they list once the local one answered.
async fn follow_catalogs(
    consul: ConsulClient,
    tag: String,
    wait: Duration,
    failover: Vec<String>,
    tx: watch::Sender<Option<BTreeSet<String>>>,
) {
    if failover.is_empty() {
        return follow_catalog(consul, tag, wait, None, tx).await;
    }
    let mut catalogs = JoinSet::new();
    let receivers: Vec<_> = std::iter::once(None)
        .chain(failover.into_iter().map(Some))
        .map(|datacenter| {
            let (catalog_tx, catalog) = watch::channel(None);
            catalogs.spawn(follow_catalog(
                consul.clone(),
                tag.clone(),
                wait,
                datacenter,
                catalog_tx,
            ));
            catalog
        })
        .collect();
    follow_sources(receivers.clone(), &tx, |current| {
        let Some(mut union) = receivers[0].borrow().clone() else {
            return false;
        };
        for catalog in &receivers[1..] {
            union.extend(catalog.borrow().iter().flatten().cloned());
        }
        if current.as_ref() == Some(&union) {
            return false;
        }
        *current = Some(union);
        true
    })
    .await;
}

/// Follows the set of catalog services carrying `tag` in `datacenter` (the agent's own when
/// `None`) with blocking queries, publishing each new answer; Consul errors are retried with
/// backoff, keeping the last set.
async fn follow_catalog(
    consul: ConsulClient,
    tag: String,
    wait: Duration,
    datacenter: Option<String>,
    tx: watch::Sender<Option<BTreeSet<String>>>,
) {
    let mut index = 0u64;
    let mut errors = 0u32;
    while !tx.is_closed() {
        let query = QueryOptions {
            index: (index > 0).then_some(index),
            wait: (index > 0).then_some(wait),
            datacenter: datacenter.clone(),
            ..QueryOptions::default()
        };
        match consul.catalog_services(&query).await {
            Ok(answer) => {
                errors = 0;
                // An index that went back (an agent restarted) starts over.
                index = if answer.index < index {
                    0
                } else {
                    answer.index.max(1)
                };
                let wanted: BTreeSet<String> = answer
                    .value
                    .into_iter()
                    .filter(|(name, tags)| name != "consul" && tags.contains(&tag))
                    .map(|(name, _)| name)
                    .collect();
                tx.send_if_modified(|current| {
                    if current.as_ref() == Some(&wanted) {
                        return false;
                    }
                    *current = Some(wanted);
                    true
                });
            }
            Err(err) => {
                errors = errors.saturating_add(1);
                let backoff = backoff(Duration::from_millis(100), Duration::from_secs(5), errors);
                tracing::warn!(error = %err, ?backoff, datacenter = datacenter.as_deref().unwrap_or("local"), "gateway: cannot read the Consul catalog; keeping the current routes");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Fetches one service's descriptors, again every refresh period, or after a backoff (or a
/// change of its healthy instances) while it fails; sends every outcome to the follower.
async fn follow_service(
    name: String,
    generation: u64,
    mesh: Mesh,
    options: DiscoveryOptions,
    out: mpsc::Sender<Fetched>,
) {
    let channel = mesh.channel(&name);
    let mut instances = mesh.instance_updates(&name);
    let mut failures = 0u32;
    loop {
        let result = reflection::fetch_with_timeout(channel.clone(), options.fetch_timeout).await;
        let attempt_ended = Instant::now();
        let wait = match &result {
            Ok(descriptors) => {
                failures = 0;
                // Retries follow each method's idempotency level from its own proto.
                mesh.learn_pool(&descriptors.pool);
                options.refresh
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let wait = backoff(options.retry_min, options.retry_max, failures);
                tracing::debug!(service = %name, error = %err, ?wait, failures, "gateway: descriptor fetch failed");
                wait
            }
        };
        let failing = result.is_err();
        let outcome = Fetched {
            service: name.clone(),
            generation,
            result: result.map(Arc::new).map_err(|err| err.to_string()),
        };
        if out.send(outcome).await.is_err() {
            return;
        }
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                // A failing service is asked again as soon as its instances change (a new one
                // passing), at most every MIN_RETRY_SPACING.
                changed = instances.changed(), if failing => {
                    if changed.is_err() {
                        // The watcher is gone: the backoff alone decides.
                        (&mut sleep).await;
                        break;
                    }
                    let earliest = attempt_ended + MIN_RETRY_SPACING;
                    if sleep.deadline() > earliest {
                        sleep.as_mut().reset(earliest.max(Instant::now()));
                    }
                }
            }
        }
    }
}

/// `min × 2^(failures-1)`, capped at `max`, times a random factor in [0.5, 1] so that services
/// failing together do not retry together.
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let base = min.saturating_mul(1u32 << doublings).min(max.max(min));
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn build_state(services: &BTreeMap<String, Followed>, ready: bool) -> GatewayState {
    let mut routed = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    for (name, followed) in services {
        if let Some(reason) = &followed.unreachable {
            unreachable.insert(name.clone(), reason.clone());
        }
        if let Some(descriptors) = &followed.descriptors {
            routed.insert(name.clone(), Arc::clone(descriptors));
        }
    }
    GatewayState {
        ready,
        unreachable,
        ..GatewayState::build(routed)
    }
}

impl GatewayState {
    /// The state routing `services` (Consul service name → its descriptors): their routes, the
    /// gRPC services they serve and their methods' declared policies; not ready, nothing
    /// unreachable.
    pub(crate) fn build(services: BTreeMap<String, Arc<ServiceDescriptors>>) -> Self {
        let mut grpc_services = HashMap::new();
        let mut methods: Vec<(&str, Vec<MethodDescriptor>)> = Vec::new();
        for (name, descriptors) in &services {
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
        let policies = declared_policies(methods.iter().flat_map(|(_, m)| m.iter()));
        let table = RouteTable::build(methods);
        Self {
            table,
            services,
            grpc_services,
            policies,
            ..Self::default()
        }
    }
}

/// The declared policy of every method of `services`, by gRPC path: what
/// [`GatewayState::policies`] holds. A policy option that cannot be read fails closed
/// (authenticated).
fn declared_policies<'a>(
    methods: impl IntoIterator<Item = &'a prost_reflect::MethodDescriptor>,
) -> HashMap<String, MethodPolicy> {
    methods
        .into_iter()
        .map(|method| {
            let path = format!(
                "/{}/{}",
                method.parent_service().full_name(),
                method.name()
            );
            let declared = protomesh::policy::declared(method).unwrap_or_else(|err| {
                tracing::warn!(method = %path, error = %err, "gateway: unreadable policy option; requiring authentication");
                MethodPolicy {
                    auth: AuthRequirement::Authenticated as i32,
                    ..MethodPolicy::default()
                }
            });
            (path, declared)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        for failures in 1..40 {
            let ceiling = min.saturating_mul(1u32 << (failures - 1).min(20)).min(max);
            for _ in 0..20 {
                let wait = backoff(min, max, failures);
                assert!(
                    wait <= ceiling && wait >= ceiling / 2,
                    "{failures}: {wait:?}"
                );
            }
        }
        assert!(backoff(min, max, 1) <= min);
        assert!(backoff(min, max, 39) >= max / 2);
    }
}
