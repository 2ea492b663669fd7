//! Compiles the service's own proto; protomesh's shared protos (`google/api`,
//! `protomesh/options`, `buf/validate`) are importable without copying them.

fn main() -> Result<(), protomesh_build::BuildError> {
    protomesh_build::Protos::new()
        .include("proto")
        .compile(&["acme/greeter/v1/greeter.proto"])
}
