//! The gateway's own server reflection (v1 and v1alpha): one combined view of every service of
//! the mesh, built from the descriptors discovery fetched (each file once, with its options such
//! as `google.api.http` kept), so that `grpcurl -plaintext GATEWAY list` lists them all and
//! grpcurl can call any of them. The reflection service is built once per set of descriptors and
//! kept in a [`ReflectionCache`].

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;
use protomesh::server::message_limit::{limit_response, MAX_GRPC_MESSAGE};
use tonic::service::Routes;
use tonic::Status;
use tower::ServiceExt;

use crate::discovery::GatewayState;
use crate::errors::status_response;
use crate::reflection::ServiceDescriptors;
use crate::resolve::REFLECTION_SERVICES;

/// Why the combined reflection service could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the gateway's server reflection: {0}")]
pub(crate) struct ReflectionBuildError(#[from] tonic_reflection::server::Error);

/// The reflection services (v1 and v1alpha) over every service of `state`: each file of every
/// service's descriptor pool once (the first pool to have a file name wins), listing every gRPC
/// service of [`GatewayState::grpc_services`] whose descriptor is known, sorted, then the two
/// reflection services. Serve the returned routes, or call them as a tower service.
fn reflection_routes(state: &GatewayState) -> Result<Routes, ReflectionBuildError> {
    let (files, listed) = combined_files(state);
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(&files)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in listed.iter().map(String::as_str).chain(REFLECTION_SERVICES) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    Ok(Routes::new(builder().build_v1()?).add_service(builder().build_v1alpha()?))
}

/// The encoded `FileDescriptorSet` of every file of every pool of `state` (each name once, as
/// the pool encodes it, so options are kept), and the gRPC services to list.
fn combined_files(state: &GatewayState) -> (Vec<u8>, BTreeSet<String>) {
    let mut seen = HashSet::new();
    let mut set = Vec::new();
    for pool in state.pools() {
        for file in pool.files() {
            if seen.insert(file.name().to_owned()) {
                // `FileDescriptorSet.file` is field 1.
                prost::encoding::bytes::encode(1, &file.encode_to_vec(), &mut set);
            }
        }
    }
    let listed = state
        .grpc_services
        .keys()
        .filter(|name| state.pools().any(|p| p.get_service_by_name(name).is_some()))
        .cloned()
        .collect();
    (set, listed)
}

/// What a built reflection service was built from: the descriptors (held, so that their
/// addresses cannot be reused by others while the entry lives) and the gRPC service names.
struct CacheKey {
    services: Vec<(String, Arc<ServiceDescriptors>)>,
    grpc: BTreeSet<String>,
}

impl CacheKey {
    fn of(state: &GatewayState) -> Self {
        Self {
            services: state
                .services
                .iter()
                .map(|(name, descriptors)| (name.clone(), Arc::clone(descriptors)))
                .collect(),
            grpc: state.grpc_services.keys().cloned().collect(),
        }
    }

    fn matches(&self, state: &GatewayState) -> bool {
        self.services.len() == state.services.len()
            && self
                .services
                .iter()
                .zip(&state.services)
                .all(|((name, held), (other, current))| name == other && Arc::ptr_eq(held, current))
            && self.grpc.len() == state.grpc_services.len()
            && state.grpc_services.keys().all(|k| self.grpc.contains(k))
    }
}

/// The last reflection service built, and what it was built from. States that share their
/// descriptors (the same `Arc<ServiceDescriptors>` values and gRPC service names) share the
/// build; any other state builds anew and replaces it.
#[derive(Default)]
pub struct ReflectionCache {
    entry: Mutex<Option<(CacheKey, Routes)>>,
}

impl std::fmt::Debug for ReflectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services = match self.entry.lock() {
            Ok(entry) => entry.as_ref().map(|(key, _)| key.grpc.len()),
            Err(poisoned) => poisoned.get_ref().as_ref().map(|(key, _)| key.grpc.len()),
        };
        f.debug_struct("ReflectionCache")
            .field("grpc_services", &services)
            .finish()
    }
}

impl ReflectionCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            entry: Mutex::new(None),
        }
    }

    /// The cache [`forward`] uses, shared by the whole process.
    pub fn global() -> &'static ReflectionCache {
        static GLOBAL: ReflectionCache = ReflectionCache::new();
        &GLOBAL
    }

    /// The reflection routes of `state` ([`reflection_routes`]), built at the first call for its
    /// descriptors and cloned from the cache afterwards.
    pub(crate) fn get(&self, state: &GatewayState) -> Result<Routes, ReflectionBuildError> {
        let mut entry = match self.entry.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((key, routes)) = entry.as_ref() {
            if key.matches(state) {
                return Ok(routes.clone());
            }
        }
        let routes = reflection_routes(state)?;
        *entry = Some((CacheKey::of(state), routes.clone()));
        Ok(routes)
    }
}

/// Answers a reflection call with the combined reflection service.
pub(super) async fn reflect(
    state: &GatewayState,
    reflection: &ReflectionCache,
    request: http::Request<Body>,
) -> Response {
    let routes = match reflection.get(state) {
        Ok(routes) => routes,
        Err(err) => {
            tracing::warn!(error = %err, "gateway: server reflection unavailable");
            return status_response(&Status::internal(err.to_string()));
        }
    };
    match routes.oneshot(request).await {
        // Reflection's NOT_FOUND repeats the symbol asked for, whatever its length.
        Ok(response) => limit_response(response, MAX_GRPC_MESSAGE).map(Body::new),
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_reflect::DescriptorPool;

    use super::*;

    use crate::test_support::{priority_descriptors, state_with, PRIORITY};

    #[test]
    fn combined_files_hold_each_file_once_with_its_options() {
        // Two services with the same descriptors: every file appears once.
        let descriptors = priority_descriptors();
        let state = state_with(&[
            ("priority", Arc::clone(&descriptors)),
            ("priority-copy", Arc::clone(&descriptors)),
        ]);
        let (encoded, listed) = combined_files(&state);
        let set = prost_types::FileDescriptorSet::decode(encoded.as_slice()).unwrap();
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        assert_eq!(names.len(), descriptors.pool.files().count());
        assert_eq!(listed.into_iter().collect::<Vec<_>>(), vec![PRIORITY]);

        // `google.api.http` survives: the transcoding routes can be rebuilt from the set.
        let pool = DescriptorPool::decode(encoded.as_slice()).unwrap();
        let score = pool
            .get_service_by_name(PRIORITY)
            .and_then(|s| s.methods().find(|m| m.name() == "Score"))
            .unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        assert!(score.options().has_extension(&http));
    }

    #[test]
    fn reflection_is_built_once_per_set_of_descriptors() {
        let cache = ReflectionCache::new();
        let descriptors = priority_descriptors();
        let first = state_with(&[("priority", Arc::clone(&descriptors))]);
        cache.get(&first).unwrap();
        let key = |cache: &ReflectionCache| {
            cache
                .entry
                .lock()
                .unwrap()
                .as_ref()
                .map(|(k, _)| (k.services.len(), k.grpc.len()))
        };
        assert_eq!(key(&cache), Some((1, 1)));

        // Another state over the same descriptors matches; new descriptors or names do not.
        let same = state_with(&[("priority", Arc::clone(&descriptors))]);
        let guard = cache.entry.lock().unwrap();
        let (held, _) = guard.as_ref().unwrap();
        assert!(held.matches(&same));
        assert!(!held.matches(&state_with(&[("priority", priority_descriptors())])));
        assert!(!held.matches(&state_with(&[("other", Arc::clone(&descriptors))])));
        assert!(!held.matches(&GatewayState::default()));
        let mut renamed = state_with(&[("priority", Arc::clone(&descriptors))]);
        renamed
            .grpc_services
            .insert("acme.Extra".to_owned(), "priority".to_owned());
        assert!(!held.matches(&renamed));
        drop(guard);

        cache.get(&GatewayState::default()).unwrap();
        assert_eq!(key(&cache), Some((0, 0)));
    }
}
