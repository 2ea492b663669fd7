//! The gateway's handlers: [`transcoded`] answers every routed request (transcoded HTTP, or
//! native gRPC handed to [`crate::grpc_proxy`], or a WebSocket bridged to a streaming method by
//! [`websocket`]); [`info`] answers the gateway's own endpoints.

pub(crate) mod info;
mod messages;
pub(crate) mod transcoded;
pub(crate) mod websocket;
