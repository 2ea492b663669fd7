//! The protomesh transcoding gateway: it finds services in Consul, reads their descriptors over
//! server reflection, and serves their `google.api.http` routes as JSON/HTTP (and forwards native
//! gRPC by path).
//!
//! [`app`] builds the router (the request pipeline, composed in one place: `app.rs`);
//! [`listener::serve`] serves it; [`discovery::spawn`] keeps the state it routes by. The modules,
//! by job:
//! - the route table: [`template`] (`google.api.http` path templates), `routes` (the table built
//!   from every method's options);
//! - descriptors and discovery: [`reflection`] (a service's descriptors over server reflection,
//!   v1 then v1alpha), [`discovery`] (the services in Consul and their descriptors, followed at
//!   run time, as a [`discovery::GatewayState`]);
//! - the request's context: `resolve` (request id and target, resolved once per request);
//! - transcoding: `transcode` (HTTP request → request message, response message → JSON, by the
//!   proto3 JSON mapping), `well_known` (the well-known types with a JSON form of their own),
//!   [`codec`] (protobuf for messages known only at run time);
//! - handlers: `handlers` (the routed requests and the gateway's own endpoints);
//! - native gRPC: [`grpc_proxy`] (forwarding by path, and the gateway's own server reflection);
//! - the edge: `edge` (the policies in front of every routed request), `cors`, `access`,
//!   `ratelimit`, configured by flags ([`EdgeConfig`]);
//! - errors: `errors` (every refusal and error as an HTTP or gRPC answer);
//! - observability: `trace` (a server span per request), `metrics` (Prometheus, on the admin
//!   listener);
//! - [`listener`]: connections accepted and served (HTTP/1.1, h2c) under the edge's connection
//!   limits;
//! - OpenAPI: `openapi` (the live routes as an OpenAPI 3 document, `/openapi.json`).
#![forbid(unsafe_code)]

mod access;
mod app;
pub mod codec;
mod cors;
mod dashboard;
pub mod discovery;
mod edge;
mod edge_config;
mod errors;
mod gateway;
pub mod grpc_proxy;
mod grpc_web;
mod handlers;
pub mod listener;
mod metrics;
mod openapi;
mod ratelimit;
pub mod reflection;
mod resolve;
mod routes;
pub mod template;
#[cfg(test)]
mod test_support;
mod trace;
mod transcode;
mod upgrade;
mod well_known;

pub use access::AccessConfig;
pub use app::{admin_app, app, app_with_admin};
pub use cors::CorsConfig;
pub use edge::EdgeOptions;
pub use edge_config::EdgeConfig;
pub use gateway::{Gateway, GatewayOptions, WebSocketOptions};
pub use ratelimit::RateLimitConfig;
pub use transcode::JsonOptions;
