//! The protomesh transcoding gateway: it will find services in Consul, read their descriptors over
//! server reflection and serve their `google.api.http` routes as JSON/HTTP.
//!
//! This crate is a placeholder until the gateway issue; it exists so the workspace layout is final.
#![forbid(unsafe_code)]
