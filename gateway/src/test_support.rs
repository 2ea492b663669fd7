//! What the crate's unit tests share: the priority service's descriptors (from the mesh's own
//! protos) and gateway states built from descriptors, with no Consul and no reflection call.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use prost_reflect::DescriptorPool;

use crate::discovery::GatewayState;
use crate::reflection::{DescriptorSource, ReflectionVersion, ServiceDescriptors};

/// The priority service's full name.
pub(crate) const PRIORITY: &str = "protomesh.priority.v1.PriorityService";

/// The priority service's descriptors, as if fetched over reflection (new ones at each call).
pub(crate) fn priority_descriptors() -> Arc<ServiceDescriptors> {
    Arc::new(ServiceDescriptors {
        services: vec![PRIORITY.to_owned()],
        pool: DescriptorPool::decode(protomesh::proto::FILE_DESCRIPTOR_SET).unwrap(),
        source: DescriptorSource::Reflection(ReflectionVersion::V1),
    })
}

/// A ready state routing `services` (Consul service name, descriptors).
pub(crate) fn state_with(services: &[(&str, Arc<ServiceDescriptors>)]) -> GatewayState {
    GatewayState {
        ready: true,
        ..GatewayState::build(
            services
                .iter()
                .map(|(name, d)| ((*name).to_owned(), Arc::clone(d)))
                .collect(),
        )
    }
}
