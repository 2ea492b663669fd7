//! Compiles `protomesh/hub/v1/hub.proto` (kept with the workspace's protos under `proto/`) with the
//! build helper every service uses: Rust code in `OUT_DIR`, included by `src/lib.rs` as `proto`,
//! and the descriptor set the runtime serves.
//! It also compiles the protos of the service it asks who may see a topic
//! (`protomesh/tasks/v1/tasks.proto`), for its client. Its services use the runtime's codec with
//! small buffers (`protomesh::codec::SmallBuffers`).

fn main() -> Result<(), protomesh_build::BuildError> {
    // Thousands of subscriptions stay open: a small encode buffer each.
    protomesh_build::Protos::new()
        .codec_path("::protomesh::codec::SmallBuffers")
        .compile(&[
            "protomesh/hub/v1/hub.proto",
            "protomesh/tasks/v1/tasks.proto",
        ])
}
