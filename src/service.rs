//! A service binary's whole `main`: [`Service::run`] parses the command line (the common
//! [`ServeConfig`] flags and the service's own), starts telemetry, builds the tokio runtime,
//! runs the service's start-up and serving, logs the error that ended it with its causes, exports
//! the last spans, and turns the outcome into the exit code.
//!
//! ```no_run
//! # use protomesh::service::Service;
//! # mod proto { pub const FILE_DESCRIPTOR_SET: &[u8] = &[]; }
//! # #[derive(Clone)] struct Greeter;
//! # impl tonic::server::NamedService for Greeter { const NAME: &'static str = "acme.Greeter"; }
//! # impl tower::Service<http::Request<tonic::body::Body>> for Greeter {
//! #     type Response = http::Response<tonic::body::Body>;
//! #     type Error = std::convert::Infallible;
//! #     type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
//! #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> { todo!() }
//! #     fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future { todo!() }
//! # }
//! fn main() -> std::process::ExitCode {
//!     Service::new("greeter", env!("CARGO_PKG_VERSION"))
//!         .about("Greets over gRPC")
//!         .run(|ctx| async move {
//!             ctx.server()
//!                 .descriptor_set(proto::FILE_DESCRIPTOR_SET)
//!                 .add_service(Greeter)
//!                 .serve()
//!                 .await
//!         })
//! }
//! ```
//!
//! A service with flags of its own declares them as a `clap::Args` struct and asks for it with
//! [`Service::flags`]; they arrive as [`Context::flags`].

use std::future::Future;
use std::marker::PhantomData;
use std::process::ExitCode;

use clap::{Args, FromArgMatches};

use crate::client::{methods::DescriptorError, Mesh};
use crate::config::ServeConfig;
use crate::consul::{ConsulClient, ConsulError};
use crate::server::MeshServer;

/// A service binary: its Consul name, version, help text and flags.
#[derive(Debug, Clone)]
pub struct Service<F = NoFlags> {
    name: &'static str,
    version: &'static str,
    about: Option<&'static str>,
    flags: PhantomData<fn() -> F>,
}

/// No flags beyond the common ones.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct NoFlags {}

/// What a service's start-up gets: its name and version, the common serving configuration, and
/// its own flags.
#[derive(Debug, Clone)]
pub struct Context<F = NoFlags> {
    /// The Consul service name.
    pub name: &'static str,
    /// The service's version (its Consul meta `version`).
    pub version: &'static str,
    /// The common flags: listen address, Consul, TLS, credentials, logs, admin listener.
    pub serve: ServeConfig,
    /// The service's own flags.
    pub flags: F,
}

/// Why a service's mesh client could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshClientError {
    /// The Consul flags are invalid.
    #[error("invalid Consul settings (CONSUL_HTTP_ADDR / --consul-addr, CONSUL_HTTP_TOKEN): {0}")]
    Consul(#[from] ConsulError),
    /// A descriptor set does not decode.
    #[error("mesh client: {0}")]
    Descriptors(#[from] DescriptorError),
}

impl Service<NoFlags> {
    /// The service `name` (its Consul name and the binary's) at `version` (pass
    /// `env!("CARGO_PKG_VERSION")`).
    pub fn new(name: &'static str, version: &'static str) -> Self {
        Self {
            name,
            version,
            about: None,
            flags: PhantomData,
        }
    }
}

impl<F: Args + FromArgMatches> Service<F> {
    /// The one-line description `--help` shows.
    pub fn about(mut self, about: &'static str) -> Self {
        self.about = Some(about);
        self
    }

    /// Adds the service's own flags, parsed into `G`.
    pub fn flags<G: Args + FromArgMatches>(self) -> Service<G> {
        Service {
            name: self.name,
            version: self.version,
            about: self.about,
            flags: PhantomData,
        }
    }

    /// Parses the command line, starts telemetry, and runs `main` on a multi-threaded tokio
    /// runtime (beside the task that gives freed memory back: [`crate::memory`]) until it returns (for a server: after a graceful shutdown on SIGTERM/SIGINT). An
    /// error is logged with its causes and makes the exit code a failure; the last spans are
    /// exported either way.
    pub fn run<M, Fut, E>(self, main: M) -> ExitCode
    where
        M: FnOnce(Context<F>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error + 'static,
    {
        let context = match self.parse(std::env::args_os()) {
            Ok(context) => context,
            Err(err) => err.exit(),
        };
        let telemetry = match crate::telemetry::init(context.serve.log_format, self.name) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("{}: {err}", self.name);
                return ExitCode::FAILURE;
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("{}: cannot start the tokio runtime: {err}", self.name);
                return ExitCode::FAILURE;
            }
        };
        let code = crate::telemetry::exit_code(runtime.block_on(async {
            // Ends with the runtime.
            tokio::spawn(crate::memory::release_freed_memory());
            main(context).await
        }));
        // Export the last spans before the process ends.
        telemetry.shutdown();
        code
    }

    /// The context the command line `args` (the binary's name first) describe.
    fn parse<I, T>(&self, args: I) -> Result<Context<F>, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = clap::Command::new(self.name).version(self.version);
        if let Some(about) = self.about {
            command = command.about(about);
        }
        let command = F::augment_args(ServeConfig::augment_args(command));
        let matches = command.try_get_matches_from(args)?;
        Ok(Context {
            name: self.name,
            version: self.version,
            serve: ServeConfig::from_arg_matches(&matches)?,
            flags: F::from_arg_matches(&matches)?,
        })
    }
}

impl<F> Context<F> {
    /// A server for this service: its name, version and serving configuration.
    pub fn server(&self) -> MeshServer {
        MeshServer::new(self.name, self.serve.clone()).version(self.version)
    }

    /// A mesh client through the configured Consul agent, for this instance's zone and failover
    /// datacenters. Handed to the server
    /// ([`MeshServer::with_mesh`]), it learns the methods it calls (their retry and deadline
    /// policies) from the server's descriptor sets when the server binds: a service's own
    /// `proto::FILE_DESCRIPTOR_SET` holds the protos it imports, so the services it calls.
    /// [`Mesh::learn_methods`] teaches it others.
    pub fn mesh(&self) -> Result<Mesh, MeshClientError> {
        Ok(Mesh::located(
            ConsulClient::new(self.serve.consul()?)?,
            &[],
            &self.serve.locality,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Args)]
    struct Flags {
        /// A flag of the service's own.
        #[arg(long, default_value = "60s")]
        cache_ttl: String,
    }

    #[test]
    fn parses_the_common_flags_and_the_service_own() {
        let service = Service::new("greeter", "1.2.3").flags::<Flags>();
        let context = service
            .parse(["greeter", "--listen", "127.0.0.1:7", "--cache-ttl", "5s"])
            .unwrap();
        assert_eq!(context.serve.listen.to_string(), "127.0.0.1:7");
        assert_eq!(context.flags.cache_ttl, "5s");
        assert_eq!((context.name, context.version), ("greeter", "1.2.3"));
        let unknown = service.parse(["greeter", "--no-such-flag"]).unwrap_err();
        assert_eq!(unknown.kind(), clap::error::ErrorKind::UnknownArgument);
        let version = Service::new("greeter", "1.2.3").parse(["greeter", "--version"]);
        assert_eq!(
            version.unwrap_err().kind(),
            clap::error::ErrorKind::DisplayVersion
        );
    }
}
