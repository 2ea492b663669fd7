//! protomesh: a Rust gRPC service mesh runtime.
//!
//! A mesh service is a tonic service served by one call, [`server::MeshServer::serve`], which adds
//! gRPC health, server reflection (v1 and v1alpha), per-method policies and request rules read
//! from the service's descriptors, logs and traces, registration with the local Consul agent
//! under a gRPC health check, and a lame-duck graceful shutdown. A binary's whole `main` is
//! [`service::Service::run`]:
//!
//! ```no_run
//! use protomesh::service::Service;
//! use protomesh_priority::proto::{self, protomesh::priority::v1::priority_service_server::*};
//! # use protomesh_priority::proto::protomesh::priority::v1::*;
//! # struct Priority;
//! # #[tonic::async_trait] impl PriorityService for Priority {
//! #   async fn score(&self, _: tonic::Request<ScoreRequest>) -> Result<tonic::Response<ScoreResponse>, tonic::Status> { todo!() }
//! #   async fn prioritize(&self, _: tonic::Request<PrioritizeRequest>) -> Result<tonic::Response<PrioritizeResponse>, tonic::Status> { todo!() }
//! # }
//!
//! fn main() -> std::process::ExitCode {
//!     Service::new("priority", env!("CARGO_PKG_VERSION")).run(|ctx| async move {
//!         ctx.server()
//!             .descriptor_set(proto::FILE_DESCRIPTOR_SET)
//!             .add_service(PriorityServiceServer::new(Priority))
//!             .serve()
//!             .await
//!     })
//! }
//! ```
//!
//! A service's generated code and descriptor set come from its own `build.rs`
//! (`protomesh_build`) and [`include_protos!`]. The data layer is `protomesh_data`, the Consul
//! client `protomesh_consul` (re-exported as [`consul`]); `docs/ARCHITECTURE.md` shows how they
//! fit.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod credential;
pub mod descriptors;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod rules;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
#[cfg(test)]
mod test_protos;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tls;

pub use protomesh_consul as consul;
