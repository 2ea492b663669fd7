//! For tests of services: a [`MeshServer`] run in-process on a free loopback port and stopped
//! when dropped, and serve settings with short timings.
//!
//! ```no_run
//! # async fn run(server: protomesh::server::MeshServer) -> Result<(), protomesh::server::ServeError> {
//! use protomesh::server::testing::InProcessServer;
//! let served = InProcessServer::start(server).await?;
//! let url = format!("http://{}", served.addr);
//! # drop(url); Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{MeshServer, ServeError};
use crate::config::ServeConfig;

/// A server running in this process until dropped.
#[derive(Debug)]
pub struct InProcessServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl InProcessServer {
    /// Binds `server` and serves it in a task of its own.
    pub async fn start(server: MeshServer) -> Result<Self, ServeError> {
        let bound = server.bind().await?;
        let addr = bound.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = bound
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "in-process server stopped with an error");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Settings for a test server on a free loopback port: registered with the Consul agent at
/// `consul_addr` (checked every 200 ms), or not registered at all when `None`; no lame-duck wait
/// and a 1 s drain, so tests stop fast. Callers are verified with the test issuer's key
/// ([`crate::auth::testing`]): sign calls in with [`crate::auth::testing::SignedIn`].
pub fn quick_config(consul_addr: Option<&str>) -> ServeConfig {
    let mut config = ServeConfig::with_listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    match consul_addr {
        Some(addr) => {
            addr.clone_into(&mut config.consul_addr);
            config.check_interval = Duration::from_millis(200);
        }
        None => config.no_register = true,
    }
    config.lame_duck = Duration::ZERO;
    config.drain_timeout = Duration::from_secs(1);
    config.authenticate_with = Some(crate::auth::testing::auth_config());
    config
}
