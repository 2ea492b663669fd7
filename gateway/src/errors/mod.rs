//! Every refusal and error of the gateway becomes an answer here, in the caller's transport:
//! - [`HttpError`] ([`http`]): HTTP/JSON errors — the gateway's own (no route 404, wrong method
//!   405 with `Allow`, body too large 413, body timeout 408, bad JSON 400) and upstream gRPC
//!   statuses by the standard table, details decoded to JSON;
//! - [`status_response`] ([`grpc`]): trailers-only gRPC answers, for native gRPC callers;
//! - [`Refusal`] ([`refusal`]): the edge policies' refusals (401, 403, 429), in either.
//!
//! Nothing else in the gateway builds an error response.

mod grpc;
mod http;
mod refusal;

pub(crate) use self::grpc::status_response;
pub(crate) use self::http::HttpError;
pub(crate) use self::refusal::Refusal;
