//! protomesh: a Rust gRPC service mesh runtime.
//!
//! A mesh service is a tonic service served by one call, [`server::MeshServer::serve`], which adds
//! gRPC health, server reflection (v1 and v1alpha), logs, registration with the local Consul agent
//! under a gRPC health check, and a lame-duck graceful shutdown:
//!
//! ```no_run
//! use clap::Parser;
//! use protomesh::{config::ServeConfig, server::MeshServer};
//! # use protomesh::proto::protomesh::priority::v1::{*, priority_service_server::*};
//! # #[derive(Default)] struct Priority;
//! # #[tonic::async_trait] impl PriorityService for Priority {
//! #   async fn score(&self, _: tonic::Request<ScoreRequest>) -> Result<tonic::Response<ScoreResponse>, tonic::Status> { todo!() }
//! #   async fn prioritize(&self, _: tonic::Request<PrioritizeRequest>) -> Result<tonic::Response<PrioritizeResponse>, tonic::Status> { todo!() }
//! # }
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     serve: ServeConfig,
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let cli = Cli::parse();
//! let _telemetry = protomesh::telemetry::init(cli.serve.log_format, "priority")?;
//! MeshServer::new("priority", cli.serve)
//!     .add_service(PriorityServiceServer::new(Priority))
//!     .serve()
//!     .await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod identity;
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
