//! Compiles protomesh's shared protos (`google/api`, `google/rpc`, `protomesh/options`,
//! `buf/validate`) with the build helper every service uses (`protomesh-build`), into the
//! runtime's `protomesh::proto` and its descriptor set. Services compile their own protos in their
//! own crates; these shared types are what their generated code refers to.

fn main() -> Result<(), protomesh_build::BuildError> {
    protomesh_build::Protos::new()
        .generate_shared_types()
        .compile(&[
            "google/api/annotations.proto",
            "google/api/field_behavior.proto",
            "google/rpc/code.proto",
            "google/rpc/error_details.proto",
            "google/rpc/status.proto",
            "protomesh/options/v1/options.proto",
            "buf/validate/validate.proto",
        ])
}
