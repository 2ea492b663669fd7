//! Where the mesh client learns the instances of a service: the [`Discover`] trait, and its two
//! implementations — [`ConsulDiscovery`] (Consul's health endpoint followed with blocking
//! queries, what every service and the gateway use) and [`StaticDiscovery`] (a fixed list of
//! addresses, changed by hand: tests and set-ups without Consul).
//!
//! Datacenter failover, in the order Consul's prepared queries use: a [`ConsulDiscovery`] given
//! failover datacenters follows the service in each of them too (the local agent forwards the
//! queries over the WAN), and publishes the local datacenter's passing instances together with
//! those of the first failover datacenter in order that has any, marked with their datacenter
//! ([`ServiceInstance::datacenter`]) and keyed `<id>@<datacenter>`. The balancer calls them only
//! when no local instance is left to try: none passing in Consul, or every one ejected or
//! already tried by the call (a datacenter whose instances crashed a moment ago, before Consul
//! noticed, fails no call either). When the local datacenter has instances again, calls come
//! back to it.
//!
//! A balancer ([`super::Balancer`]) follows one [`WatchHandle`]: the newest [`WatchState`] of its
//! service, published whenever the set changes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protomesh_consul::{
    follow_sources, ConsulClient, HealthWatcher, ServiceInstance, WatchHandle, WatchOptions,
    WatchState,
};
use tokio::sync::watch;

/// A source of service instances.
pub trait Discover: Send + Sync + 'static {
    /// The instances of `service`, followed from now on.
    fn watch(&self, service: &str) -> WatchHandle;
}

/// Discovery through Consul: one [`HealthWatcher`] per service (passing instances only), and one
/// more per failover datacenter.
#[derive(Debug, Clone)]
pub struct ConsulDiscovery {
    consul: ConsulClient,
    options: WatchOptions,
    /// Datacenters whose instances are used, in this order, while the local one has none.
    failover: Arc<[String]>,
}

impl ConsulDiscovery {
    /// Follows services through `consul` with the default watch options.
    pub fn new(consul: ConsulClient) -> Self {
        Self {
            consul,
            options: WatchOptions::default(),
            failover: Arc::from([]),
        }
    }

    /// Fails over to `datacenters`, in this order, while the local datacenter has no passing
    /// instance of a service.
    pub fn with_failover(mut self, datacenters: &[String]) -> Self {
        let mut failover: Vec<String> = Vec::new();
        for dc in datacenters {
            if !dc.is_empty() && !failover.contains(dc) {
                failover.push(dc.clone());
            }
        }
        self.failover = failover.into();
        self
    }
}

impl Discover for ConsulDiscovery {
    fn watch(&self, service: &str) -> WatchHandle {
        let local = HealthWatcher::spawn(self.consul.clone(), service, self.options.clone());
        if self.failover.is_empty() {
            return local;
        }
        let failover = self
            .failover
            .iter()
            .map(|dc| {
                let options = self.options.clone().in_datacenter(dc.as_str());
                HealthWatcher::spawn(self.consul.clone(), service, options)
            })
            .collect();
        follow_with_failover(local, failover)
    }
}

/// A handle on the state [`with_failover`] makes of `local` and `failover`, kept up to date by a
/// task that is aborted (stopping the watchers) with the last clone of the handle.
fn follow_with_failover(local: WatchHandle, failover: Vec<WatchHandle>) -> WatchHandle {
    let sources: Vec<_> = std::iter::once(&local)
        .chain(&failover)
        .map(WatchHandle::subscribe)
        .collect();
    let (tx, rx) = watch::channel(with_failover(&local, &failover));
    let task = tokio::spawn(async move {
        follow_sources(sources, &tx, |current| {
            let chosen = with_failover(&local, &failover);
            if *current == chosen {
                return false;
            }
            let was_local = has_local(current);
            if was_local != has_local(&chosen) {
                if !was_local {
                    tracing::info!(service = %chosen.service, "the local datacenter has a passing instance again: calls come back");
                } else if !chosen.instances.is_empty() {
                    tracing::warn!(service = %chosen.service, "no passing instance in the local datacenter: calls fail over");
                } else {
                    tracing::warn!(service = %chosen.service, "no passing instance in the local datacenter, nor in a failover one");
                }
            }
            *current = chosen;
            true
        })
        .await;
    });
    WatchHandle::from_task(rx, task)
}

/// Whether `state` lists an instance of the local datacenter.
fn has_local(state: &WatchState) -> bool {
    state.instances.values().any(|i| i.datacenter.is_none())
}

/// The local state with, added to its instances, those of the first failover datacenter that
/// lists any (keyed `<id>@<datacenter>`). Until the local watcher answered, its state as it is:
/// calls wait for the local answer rather than fail over at start-up.
fn with_failover(local: &WatchHandle, failover: &[WatchHandle]) -> WatchState {
    let here = local.current();
    if !here.initialized {
        return here;
    }
    // A failover datacenter that answers the local instances is the local one, listed by
    // mistake: skipped (its instances would be the local ones twice).
    let is_here =
        |there: &WatchState| {
            there.instances.len() == here.instances.len()
                && there.instances.iter().zip(here.instances.iter()).all(
                    |((id, i), (here_id, h))| {
                        id == here_id && i.address == h.address && i.port == h.port
                    },
                )
        };
    let Some(there) = failover
        .iter()
        .map(WatchHandle::current)
        .find(|there| there.initialized && !there.instances.is_empty() && !is_here(there))
    else {
        return here;
    };
    let mut instances = (*here.instances).clone();
    for instance in there.instances.values() {
        let mut instance = instance.clone();
        instance.id = format!(
            "{}@{}",
            instance.id,
            instance.datacenter.as_deref().unwrap_or("failover")
        );
        instances.insert(instance.id.clone(), instance);
    }
    WatchState {
        instances: Arc::new(instances),
        ..here
    }
}

/// A fixed list of addresses per service, changed with [`StaticDiscovery::set`]. A service it
/// does not list has no instance (calls to it fail at once, as for a service Consul does not
/// know). Clones share the lists.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    services: Arc<Mutex<HashMap<String, watch::Sender<WatchState>>>>,
}

impl StaticDiscovery {
    /// No service listed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `service` at `addrs`.
    pub fn with(self, service: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.set(service, addrs);
        self
    }

    /// Replaces the addresses of `service`; balancers following it see the new set. An
    /// instance's id is its address, so an address kept keeps its endpoint (and connections).
    pub fn set(&self, service: &str, addrs: impl IntoIterator<Item = SocketAddr>) {
        let instances: BTreeMap<String, ServiceInstance> = addrs
            .into_iter()
            .map(|addr| {
                let instance = ServiceInstance {
                    id: addr.to_string(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    tags: Vec::new(),
                    meta: BTreeMap::new(),
                    datacenter: None,
                };
                (instance.id.clone(), instance)
            })
            .collect();
        let mut services = self.lock();
        let sender = services
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(static_state(service, 0, BTreeMap::new())).0);
        sender.send_modify(|state| {
            *state = static_state(service, state.index + 1, instances);
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<WatchState>>> {
        match self.services.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Discover for StaticDiscovery {
    fn watch(&self, service: &str) -> WatchHandle {
        let mut services = self.lock();
        let sender = services
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(static_state(service, 1, BTreeMap::new())).0);
        WatchHandle::from_receiver(sender.subscribe())
    }
}

/// An answered state listing `instances`.
fn static_state(
    service: &str,
    index: u64,
    instances: BTreeMap<String, ServiceInstance>,
) -> WatchState {
    WatchState {
        service: service.to_owned(),
        instances: Arc::new(instances),
        index,
        initialized: true,
        last_success: Some(Instant::now()),
        last_error: None,
        consecutive_errors: 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn the_first_failover_datacenter_with_instances_is_added_to_the_local_one() {
        let dc1 = StaticDiscovery::new().with("svc", [addr(1)]);
        let dc2 = StaticDiscovery::new();
        let dc3 = StaticDiscovery::new().with("svc", [addr(3)]);
        // A static list's states, as a watcher of datacenter `dc` publishes them.
        let in_dc = |discovery: &StaticDiscovery, dc: &str| {
            let mark = {
                let dc = dc.to_owned();
                move |state: WatchState| {
                    let instances = state
                        .instances
                        .iter()
                        .map(|(id, i)| {
                            let mut instance = i.clone();
                            instance.datacenter = Some(dc.clone());
                            (id.clone(), instance)
                        })
                        .collect();
                    WatchState {
                        instances: Arc::new(instances),
                        ..state
                    }
                }
            };
            let (tx, rx) = watch::channel(mark(discovery.watch("svc").current()));
            let mut source = discovery.watch("svc").subscribe();
            tokio::spawn(async move {
                while source.changed().await.is_ok() {
                    let state = source.borrow_and_update().clone();
                    let _ = tx.send(mark(state));
                }
            });
            WatchHandle::from_receiver(rx)
        };
        // dc1 listed among its own failover datacenters (a configuration shared by every
        // datacenter) is skipped while it has instances.
        let handle = follow_with_failover(
            dc1.watch("svc"),
            vec![in_dc(&dc1, "dc1"), in_dc(&dc2, "dc2"), in_dc(&dc3, "dc3")],
        );
        let ids = |state: &WatchState| -> Vec<String> { state.instances.keys().cloned().collect() };
        assert_eq!(ids(&handle.current()), ["127.0.0.1:1", "127.0.0.1:3@dc3"]);
        let failover = &handle.current().instances["127.0.0.1:3@dc3"];
        assert_eq!(
            (failover.datacenter.as_deref(), failover.port),
            (Some("dc3"), 3)
        );

        let mut updates = handle.subscribe();
        dc1.set("svc", []);
        let state = updates.wait_for(|s| !has_local(s)).await.unwrap().clone();
        assert_eq!(ids(&state), ["127.0.0.1:3@dc3"]);

        dc2.set("svc", [addr(2)]);
        let state = updates
            .wait_for(|s| s.instances.contains_key("127.0.0.1:2@dc2"))
            .await
            .unwrap()
            .clone();
        assert_eq!(ids(&state), ["127.0.0.1:2@dc2"], "in order");

        dc1.set("svc", [addr(4)]);
        let state = updates.wait_for(has_local).await.unwrap().clone();
        assert_eq!(ids(&state), ["127.0.0.1:2@dc2", "127.0.0.1:4"], "back home");

        // The follower stops with the last handle, though a receiver is still held.
        drop(handle);
        tokio::time::timeout(std::time::Duration::from_secs(5), updates.changed())
            .await
            .expect("the follower stopped")
            .unwrap_err();
    }

    #[tokio::test]
    async fn a_static_list_publishes_its_changes() {
        let discovery = StaticDiscovery::new().with("svc", [addr(1), addr(2)]);
        let watch = discovery.watch("svc");
        assert!(watch.is_initialized());
        let ids: Vec<String> = watch.current().instances.keys().cloned().collect();
        assert_eq!(ids, ["127.0.0.1:1", "127.0.0.1:2"]);

        let mut updates = watch.subscribe();
        discovery.set("svc", [addr(3)]);
        updates.changed().await.unwrap();
        let state = updates.borrow_and_update().clone();
        assert_eq!(state.instances.len(), 1);
        assert_eq!(state.instances["127.0.0.1:3"].port, 3);

        // An unlisted service has no instance, and is answered at once.
        let none = discovery.watch("other");
        let state = none
            .initialized(std::time::Duration::from_millis(10))
            .await
            .unwrap();
        assert!(state.instances.is_empty());
    }
}
