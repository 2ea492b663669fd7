//! Compiles `protomesh/priority/v1/priority.proto` (kept with the workspace's protos under `proto/`) with
//! the build helper every service uses: Rust code in `OUT_DIR`, included by `src/lib.rs` as
//! `proto`, and the descriptor set the runtime serves.

fn main() -> Result<(), protomesh_build::BuildError> {
    protomesh_build::Protos::new().compile(&["protomesh/priority/v1/priority.proto"])
}
