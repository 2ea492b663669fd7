//! What the crate's unit tests share: the descriptors of the workspace's services (each service
//! crate owns its protos' descriptor set; they are dev-dependencies), the priority service's as if
//! fetched over reflection, and gateway states built from descriptors, with no Consul and no
//! reflection call.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use prost_reflect::DescriptorPool;

use crate::discovery::GatewayState;
use crate::reflection::{DescriptorSource, ReflectionVersion, ServiceDescriptors};

/// The encoded descriptor sets of the services the unit tests route to.
pub(crate) const SETS: &[&[u8]] = &[
    protomesh::proto::FILE_DESCRIPTOR_SET,
    protomesh_priority::proto::FILE_DESCRIPTOR_SET,
    protomesh_probe::proto::FILE_DESCRIPTOR_SET,
    protomesh_tasks::proto::FILE_DESCRIPTOR_SET,
    protomesh_users::proto::FILE_DESCRIPTOR_SET,
];

/// One pool of every file of [`SETS`].
pub(crate) fn pool() -> DescriptorPool {
    protomesh::testing::descriptor_pool(SETS)
}

/// The priority service's full name.
pub(crate) const PRIORITY: &str = "protomesh.priority.v1.PriorityService";

/// The priority service's descriptors, as if fetched over reflection (new ones at each call).
pub(crate) fn priority_descriptors() -> Arc<ServiceDescriptors> {
    Arc::new(ServiceDescriptors {
        services: vec![PRIORITY.to_owned()],
        pool: DescriptorPool::decode(protomesh_priority::proto::FILE_DESCRIPTOR_SET).unwrap(),
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
