//! Where the mesh client learns the instances of a service: the [`Discover`] trait, and its two
//! implementations — [`ConsulDiscovery`] (Consul's health endpoint followed with blocking
//! queries, what every service and the gateway use) and [`StaticDiscovery`] (a fixed list of
//! addresses, changed by hand: tests and set-ups without Consul).
//!
//! A balancer ([`super::Balancer`]) follows one [`WatchHandle`]: the newest [`WatchState`] of its
//! service, published whenever the set changes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protomesh_consul::{
    ConsulClient, HealthWatcher, ServiceInstance, WatchHandle, WatchOptions, WatchState,
};
use tokio::sync::watch;

/// A source of service instances.
pub trait Discover: Send + Sync + 'static {
    /// The instances of `service`, followed from now on.
    fn watch(&self, service: &str) -> WatchHandle;
}

/// Discovery through Consul: one [`HealthWatcher`] per service (passing instances only).
#[derive(Debug, Clone)]
pub struct ConsulDiscovery {
    consul: ConsulClient,
    options: WatchOptions,
}

impl ConsulDiscovery {
    /// Follows services through `consul` with the default watch options.
    pub fn new(consul: ConsulClient) -> Self {
        Self {
            consul,
            options: WatchOptions::default(),
        }
    }
}

impl Discover for ConsulDiscovery {
    fn watch(&self, service: &str) -> WatchHandle {
        HealthWatcher::spawn(self.consul.clone(), service, self.options.clone())
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
