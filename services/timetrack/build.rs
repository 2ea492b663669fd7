//! Compiles `protomesh/timetrack/v1/timetrack.proto` (kept with the workspace's protos under `proto/`) with
//! the build helper every service uses: Rust code in `OUT_DIR`, included by `src/lib.rs` as
//! `proto`, and the descriptor set the runtime serves.
//! It also compiles the protos of the services it calls (`protomesh/tasks/v1/tasks.proto`), for their clients.

fn main() -> Result<(), protomesh_build::BuildError> {
    protomesh_build::Protos::new().compile(&[
        "protomesh/timetrack/v1/timetrack.proto",
        "protomesh/tasks/v1/tasks.proto",
    ])
}
