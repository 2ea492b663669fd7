//! Server reflection (`grpc.reflection.v1` and `v1alpha`), built for each call.
//!
//! tonic-reflection decodes every registered descriptor set, comments included, into its own
//! copy when it is built: about 0.75 MB of heap per version for a service of the workspace, the
//! largest part of an idle process's heap. Reflection calls are rare — a developer's grpcurl, the
//! gateway's descriptor fetch once per refresh period — and each is one stream that asks all it
//! needs, so [`OnDemand`] builds the version asked for when a call comes (a few milliseconds) and
//! lets it go when the call ends; an idle process holds neither copy. The sets are the ones
//! [`crate::descriptors::lean_pool`] has already decoded at start, so a build should not fail;
//! should it fail anyway, the call is answered `INTERNAL` and the reason logged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

/// A reflection service built for each call (module docs).
pub(super) struct OnDemand<S> {
    build: Arc<dyn Fn() -> Result<S, tonic_reflection::server::Error> + Send + Sync>,
}

impl<S> Clone for OnDemand<S> {
    fn clone(&self) -> Self {
        Self {
            build: Arc::clone(&self.build),
        }
    }
}

impl<S> OnDemand<S> {
    /// The service `build` makes, made for each call.
    fn new(
        build: impl Fn() -> Result<S, tonic_reflection::server::Error> + Send + Sync + 'static,
    ) -> Self {
        Self {
            build: Arc::new(build),
        }
    }

    /// A service for one call; the reason (logged) when it cannot be built.
    fn service(&self) -> Result<S, ()> {
        (self.build)().map_err(|err| {
            tracing::error!(error = %err, "server reflection cannot be built");
        })
    }
}

impl<S: NamedService> NamedService for OnDemand<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for OnDemand<S>
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
            Ok(service) => Box::pin(service.oneshot(request)),
            Err(()) => Box::pin(std::future::ready(Ok(tonic::Status::internal(
                "server reflection is unavailable on this instance",
            )
            .into_http()))),
        }
    }
}

/// The `grpc.reflection.v1` service over `descriptor_sets`, listing the `advertised` services
/// and itself.
pub(super) fn v1(
    descriptor_sets: &[&'static [u8]],
    advertised: &[&'static str],
) -> OnDemand<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    let (sets, names) = (descriptor_sets.to_vec(), advertised.to_vec());
    OnDemand::new(move || {
        builder(&sets, &names)
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .build_v1()
    })
}

/// The `grpc.reflection.v1alpha` service (grpcurl 1.8 asks only for this one).
pub(super) fn v1alpha(
    descriptor_sets: &[&'static [u8]],
    advertised: &[&'static str],
) -> OnDemand<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
> {
    let (sets, names) = (descriptor_sets.to_vec(), advertised.to_vec());
    OnDemand::new(move || {
        builder(&sets, &names)
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
            .build_v1alpha()
    })
}

/// The reflection builder both versions share: our descriptors, health's, the advertised names.
fn builder<'b>(
    descriptor_sets: &[&'b [u8]],
    advertised: &[&'static str],
) -> tonic_reflection::server::Builder<'b> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in descriptor_sets {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    for &name in advertised {
        builder = builder.with_service_name(name);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_call_builds_the_version_and_lets_it_go() {
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let service = OnDemand::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            builder(
                crate::test_protos::SETS,
                &["protomesh.priority.v1.PriorityService"],
            )
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .build_v1()
        });
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 0);
        for calls in 1..=2 {
            let listed = list_services(service.clone()).await;
            assert!(
                listed
                    .iter()
                    .any(|name| name == "protomesh.priority.v1.PriorityService"),
                "{listed:?}"
            );
            assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), calls);
        }
    }

    /// The services `service` lists, asked as grpcurl asks.
    async fn list_services<S>(service: OnDemand<S>) -> Vec<String>
    where
        OnDemand<S>: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        <OnDemand<S> as Service<http::Request<Body>>>::Future: Send,
        S: NamedService + Send + 'static,
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(tonic::service::Routes::new(service));
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_version_that_cannot_be_built_answers_internal() {
        let mut service =
            OnDemand::new(|| builder(&[b"\x0a\x05broken".as_slice()], &[]).build_v1());
        let request = http::Request::builder()
            .uri("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        let response = service.call(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("decod"), "{}", status.message());
    }
}
