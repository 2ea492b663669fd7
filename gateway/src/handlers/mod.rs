//! The gateway's handlers: [`transcoded`] answers every routed request (transcoded HTTP, or
//! native gRPC handed to [`crate::grpc_proxy`]); [`info`] answers the gateway's own endpoints.

pub(crate) mod info;
pub(crate) mod transcoded;
