//! protomesh's own small typed client of the Consul HTTP API (plain HTTP on hyper), the
//! [`Registrar`] that keeps a service registered, the [`HealthWatcher`] that follows a
//! service's healthy instances for discovery, and [`DevAgent`], a `consul agent -dev`
//! launcher for development and tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), protomesh_consul::ConsulError> {
//! use std::time::Duration;
//! use protomesh_consul::{
//!     CheckRegistration, ConsulClient, ConsulConfig, QueryOptions, Registrar, ServiceRegistration,
//! };
//!
//! let client = ConsulClient::new(ConsulConfig::from_env()?)?;
//! let registration = ServiceRegistration::new("greeter-1", "greeter")
//!     .with_address("127.0.0.1", 50051)
//!     .with_check(CheckRegistration::grpc(
//!         "gRPC health",
//!         "127.0.0.1:50051/helloworld.Greeter",
//!         Duration::from_secs(2),
//!     ));
//! let registered = Registrar::new(client.clone(), registration).register().await?;
//! let healthy = client
//!     .health_service("greeter", &QueryOptions::default().with_passing(true))
//!     .await?;
//! println!("{} healthy instance(s)", healthy.value.len());
//! registered.deregister().await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod client;
mod config;
pub mod dev_agent;
pub mod duration;
pub mod error;
pub mod registrar;
pub mod request;
pub mod types;
pub mod watcher;

pub use client::{ConsulClient, ConsulConfig, QueryOptions, QueryResponse};
pub use dev_agent::{DevAgent, DevAgentOptions, DevAgentPorts};
pub use error::{error_chain, ConsulError};
pub use registrar::{Registrar, Registration, TtlReport};
pub use types::{
    AgentSelf, AgentService, CheckRegistration, CheckStatus, HealthCheck, Node, ServiceEntry,
    ServiceRegistration,
};
pub use watcher::{
    diff, follow_sources, HealthWatcher, InstanceChange, InstanceChanges, ServiceInstance,
    WatchError, WatchHandle, WatchOptions, WatchState,
};
