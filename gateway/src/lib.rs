//! The protomesh transcoding gateway: it finds services in Consul, reads their descriptors over
//! server reflection, and serves their `google.api.http` routes as JSON/HTTP (and forwards native
//! gRPC by path).
//!
//! The pieces, in the order a request meets them:
//! - [`listener`]: connections accepted and served (HTTP/1.1, h2c) under the edge's connection
//!   limits (cap, head and idle timeouts, URI and header sizes, HTTP/2 limits);
//! - [`template`]: `google.api.http` path templates, parsed and matched against request paths;
//! - [`reflection`]: a service's descriptors, fetched over server reflection (v1, then v1alpha);
//! - [`transcode`]: an HTTP request (path bindings, query string, body) into a request message,
//!   and a response message back into JSON, by the proto3 JSON mapping;
//! - [`routes`]: the route table built from the `google.api.http` options of every method;
//! - [`discovery`]: the services in Consul and their descriptors, followed at run time;
//! - [`server`]: the HTTP handlers; [`codec`]: protobuf for messages known only at run time;
//! - [`errors`]: gRPC statuses (and the gateway's own errors) as HTTP codes and JSON bodies;
//! - [`edge`]: the edge policies in front of every routed request — CORS ([`cors`]),
//!   authentication ([`protomesh::auth`], shared with the services), authorization ([`access`]) and rate limits ([`ratelimit`]),
//!   configured by flags ([`edge_config`]).
//! - [`trace`]: a server span per request (W3C `traceparent` in, request ids), for OTLP traces.
#![forbid(unsafe_code)]

pub mod access;
pub mod codec;
pub mod cors;
pub mod discovery;
pub mod edge;
pub mod edge_config;
pub mod errors;
pub mod grpc_proxy;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod reflection;
pub mod routes;
pub mod server;
pub mod template;
#[cfg(test)]
mod test_protos;
pub mod trace;
pub mod transcode;
