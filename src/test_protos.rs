//! For unit tests only: the descriptor sets of the workspace's services (each service crate owns
//! its protos'; the root crate has them as dev-dependencies).

use prost_reflect::DescriptorPool;

/// The encoded descriptor sets of the runtime's shared protos and of the services tests use.
pub(crate) const SETS: &[&[u8]] = &[
    crate::proto::FILE_DESCRIPTOR_SET,
    protomesh_priority::proto::FILE_DESCRIPTOR_SET,
    protomesh_probe::proto::FILE_DESCRIPTOR_SET,
    protomesh_tasks::proto::FILE_DESCRIPTOR_SET,
    protomesh_users::proto::FILE_DESCRIPTOR_SET,
];

/// One pool of every file of [`SETS`].
pub(crate) fn pool() -> DescriptorPool {
    crate::testing::descriptor_pool(SETS)
}
