//! Server reflection (`grpc.reflection.v1` and `v1alpha`), built on its first call.
//!
//! tonic-reflection decodes every registered descriptor set, comments included, into its own
//! copy when it is built: about 0.75 MB of heap per version for a service of the workspace, the
//! largest part of an idle process's heap. Most processes are never asked for reflection, so
//! [`Lazy`] builds each version on the first call to it and keeps it from then on. The sets are
//! the ones [`crate::descriptors::lean_pool`] has already decoded at start, so a build cannot
//! fail on them; should it fail anyway, the call is answered `INTERNAL` and the reason logged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

/// A reflection service built when first called (module docs).
pub(super) struct Lazy<S> {
    shared: Arc<Shared<S>>,
}

/// What every clone of one [`Lazy`] shares.
struct Shared<S> {
    service: OnceLock<Result<S, String>>,
    build: Box<dyn Fn() -> Result<S, tonic_reflection::server::Error> + Send + Sync>,
}

impl<S> Clone for Lazy<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Lazy<S> {
    /// The service `build` makes, once, when it is first called.
    fn new(
        build: impl Fn() -> Result<S, tonic_reflection::server::Error> + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                service: OnceLock::new(),
                build: Box::new(build),
            }),
        }
    }

    /// The built service, building it on the first call.
    fn service(&self) -> &Result<S, String> {
        self.shared.service.get_or_init(|| {
            (self.shared.build)().map_err(|err| {
                tracing::error!(error = %err, "server reflection cannot be built");
                err.to_string()
            })
        })
    }
}

impl<S: NamedService> NamedService for Lazy<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Lazy<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.service() {
            Ok(service) => Box::pin(service.clone().oneshot(request)),
            Err(_) => Box::pin(std::future::ready(Ok(tonic::Status::internal(
                "server reflection is unavailable on this instance",
            )
            .into_http()))),
        }
    }
}

/// The `grpc.reflection.v1` service over `descriptor_sets`, listing only served services.
pub(super) fn v1(
    descriptor_sets: &[&'static [u8]],
    grpc_services: &[&'static str],
) -> Lazy<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    let (sets, names) = (descriptor_sets.to_vec(), grpc_services.to_vec());
    Lazy::new(move || {
        builder(&sets, &names)
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .build_v1()
    })
}

/// The `grpc.reflection.v1alpha` service (grpcurl 1.8 asks only for this one).
pub(super) fn v1alpha(
    descriptor_sets: &[&'static [u8]],
    grpc_services: &[&'static str],
) -> Lazy<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
> {
    let (sets, names) = (descriptor_sets.to_vec(), grpc_services.to_vec());
    Lazy::new(move || {
        builder(&sets, &names)
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
            .build_v1alpha()
    })
}

/// The reflection builder both versions share: our descriptors, health's, the served names.
fn builder<'b>(
    descriptor_sets: &[&'b [u8]],
    grpc_services: &[&'static str],
) -> tonic_reflection::server::Builder<'b> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in descriptor_sets {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    for name in super::advertised_names(grpc_services) {
        builder = builder.with_service_name(name);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_built_once_on_its_first_call() {
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let lazy = Lazy::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            builder(crate::test_protos::SETS, &[]).build_v1()
        });
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 0);
        let clone = lazy.clone();
        assert!(lazy.service().is_ok());
        assert!(clone.service().is_ok());
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_version_that_cannot_be_built_answers_internal() {
        let mut lazy = Lazy::new(|| builder(&[b"\x0a\x05broken".as_slice()], &[]).build_v1());
        let request = http::Request::builder()
            .uri("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        let response = lazy.call(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("decod"), "{}", status.message());
    }
}
