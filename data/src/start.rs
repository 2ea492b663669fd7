//! Why a service that keeps its data with this crate could not start: the error its `main`
//! returns to [`protomesh::service::Service::run`], which logs it with its causes.

use protomesh::server::ServeError;
use protomesh::service::MeshClientError;

use crate::page_token::PageTokenKeyError;
use crate::DataError;

/// Why a stateful service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its database or Redis cannot be prepared or reached.
    #[error("{0}")]
    Data(#[from] DataError),
    /// Its page-token key cannot be read or stored.
    #[error("{0}")]
    PageTokenKey(#[from] PageTokenKeyError),
    /// Its mesh client cannot be built.
    #[error(transparent)]
    Mesh(#[from] MeshClientError),
    /// It cannot be served.
    #[error(transparent)]
    Serve(#[from] ServeError),
}
