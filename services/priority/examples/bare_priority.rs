//! The priority handler on a bare tonic server: none of the runtime's layers (trace span,
//! metrics, deadline, message limit, authentication, request rules, cuttable connections), no
//! health, reflection or Consul registration. For benchmarks only: the baseline the runtime's own
//! cost is measured against (`cargo bench --bench peer`).
//!
//! Usage: `bare_priority ADDR` (default `127.0.0.1:50152`); serves until killed.

use protomesh_priority::{PriorityHandler, PriorityServiceServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50152".to_owned())
        .parse()?;
    // TCP_NODELAY, as the runtime and grpc-go set it.
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(PriorityServiceServer::new(PriorityHandler))
        .serve(addr)
        .await?;
    Ok(())
}
