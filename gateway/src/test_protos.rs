//! For unit tests only: the descriptors of the workspace's services as one pool (each service
//! crate owns its protos' descriptor set).

use prost_reflect::DescriptorPool;

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
    let mut pool = DescriptorPool::new();
    for set in SETS {
        pool.decode_file_descriptor_set(*set)
            .expect("a service's descriptor set");
    }
    pool
}
