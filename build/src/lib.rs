//! protomesh-build: compiles a service's `.proto` files from its `build.rs`, with
//! [protox](https://docs.rs/protox) (pure Rust, no system `protoc`), into
//! - Rust code (prost messages, tonic clients and servers) for the files asked for and the
//!   service protos they import, and
//! - one encoded `FileDescriptorSet` of them and everything they import, with source info and
//!   custom options kept (`google.api.http`, `protomesh.options.v1.*`, `buf.validate.*`): what
//!   the runtime serves over reflection and reads policies, request rules and deadlines from, and
//!   what the gateway learns routes from.
//!
//! protomesh's shared protos (`google/api`, `google/rpc`, `protomesh/options`, `buf/validate`, and
//! the workspace's own service protos such as `protomesh/priority/v1/priority.proto`, to call
//! them) are always importable; their Rust types come from the runtime (`protomesh::proto`), so
//! only the service's own messages are generated.
//!
//! A service crate's `build.rs`:
//!
//! ```no_run
//! fn main() -> Result<(), protomesh_build::BuildError> {
//!     protomesh_build::Protos::new()
//!         .include("proto")
//!         .compile(&["acme/greeter/v1/greeter.proto"])
//! }
//! ```
//!
//! and its `lib.rs` includes the result with `::protomesh::include_protos!()` (in a module, say `proto`), which defines the
//! generated modules and `FILE_DESCRIPTOR_SET`.

use std::path::{Path, PathBuf};

/// Where protomesh's shared protos are (the workspace's `proto/` folder).
const SHARED_PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");

/// The generated Rust code's file in `OUT_DIR` (what `protomesh::include_protos!` includes).
pub const GENERATED_FILE: &str = "protomesh_protos.rs";

/// The encoded descriptor set's file in `OUT_DIR`.
pub const DESCRIPTOR_SET_FILE: &str = "protomesh_descriptor.bin";

/// Packages whose Rust types the runtime crate has generated already (`protomesh::proto::…`).
const RUNTIME_PACKAGES: &[(&str, &str)] = &[
    (".google.api", "::protomesh::proto::google::api"),
    (".google.rpc", "::protomesh::proto::google::rpc"),
    (
        ".protomesh.options",
        "::protomesh::proto::protomesh::options",
    ),
    (".buf.validate", "::protomesh::proto::buf::validate"),
];

/// Why the protos could not be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A `.proto` file could not be read or parsed, or an import was not found.
    #[error("{0}")]
    Compile(#[from] Box<protox::Error>),
    /// `OUT_DIR` was not set (not run by cargo as a build script).
    #[error("OUT_DIR is not set: protomesh_build runs from a build script")]
    NoOutDir,
    /// Writing the outputs failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The `.proto` files of one crate, and where their imports are found.
#[derive(Debug, Clone)]
pub struct Protos {
    includes: Vec<PathBuf>,
    runtime_types: bool,
    /// Packages (with a leading dot) whose Rust types another crate has generated, and where.
    extern_packages: Vec<(String, String)>,
    /// The services' codec, when not tonic-prost's.
    codec_path: Option<String>,
}

impl Default for Protos {
    fn default() -> Self {
        Self::new()
    }
}

impl Protos {
    /// Nothing to compile yet; protomesh's shared protos importable, their types taken from
    /// the runtime.
    pub fn new() -> Self {
        Self {
            includes: Vec::new(),
            runtime_types: true,
            extern_packages: Vec::new(),
            codec_path: None,
        }
    }

    /// Generates the services with the codec at `path` (a `Codec + Default` generic over the
    /// request and answer types, like `tonic_prost::ProstCodec`, the default), for example
    /// `::protomesh::codec::SmallBuffers`: a service holding thousands of streams open keeps a
    /// small buffer per stream.
    pub fn codec_path(mut self, path: &str) -> Self {
        self.codec_path = Some(path.to_owned());
        self
    }

    /// Adds a folder that `.proto` paths (and imports) are relative to, before the shared protos.
    pub fn include(mut self, dir: impl Into<PathBuf>) -> Self {
        self.includes.push(dir.into());
        self
    }

    /// Takes the Rust types of the proto package `package` (for example
    /// `protomesh.priority.v1`) from `rust_path` (for example
    /// `::protomesh_priority::proto::protomesh::priority::v1`) instead of generating them: for a
    /// crate that imports another service's protos and shares types with that service's crate.
    pub fn extern_package(mut self, package: &str, rust_path: &str) -> Self {
        self.extern_packages.push((
            format!(".{}", package.trim_start_matches('.')),
            rust_path.to_owned(),
        ));
        self
    }

    /// For the runtime crate itself: generates the shared packages too, instead of referring to
    /// `protomesh::proto`.
    #[doc(hidden)]
    pub fn generate_shared_types(mut self) -> Self {
        self.runtime_types = false;
        self
    }

    /// Compiles `files` (paths relative to an include folder) and what they import, writes
    /// [`GENERATED_FILE`] and [`DESCRIPTOR_SET_FILE`] into `OUT_DIR`, and tells cargo to run the
    /// build script again when any of those `.proto` files changes.
    pub fn compile(self, files: &[impl AsRef<Path>]) -> Result<(), BuildError> {
        let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or(BuildError::NoOutDir)?);
        let mut includes = self.includes.clone();
        includes.push(PathBuf::from(SHARED_PROTOS));
        let mut compiler = protox::Compiler::new(&includes).map_err(Box::new)?;
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(files).map_err(Box::new)?;
        for file in compiler.files() {
            if let Some(path) = file.path() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }

        // The encoded set straight from protox keeps extension options as they are.
        let descriptor_path = out_dir.join(DESCRIPTOR_SET_FILE);
        std::fs::write(&descriptor_path, compiler.encode_file_descriptor_set()).map_err(
            |source| BuildError::Write {
                path: descriptor_path,
                source,
            },
        )?;

        let set = compiler.file_descriptor_set();
        let mut config = tonic_prost_build::configure()
            .include_file(GENERATED_FILE)
            .emit_rerun_if_changed(false);
        // prost generates no types for extern packages (it needs their descriptors all the same).
        let mut externs: Vec<(String, String)> = self.extern_packages.clone();
        if self.runtime_types {
            // The shared packages' types are the runtime's.
            externs.extend(
                RUNTIME_PACKAGES
                    .iter()
                    .map(|(package, path)| ((*package).to_owned(), (*path).to_owned())),
            );
        }
        for (package, path) in &externs {
            config = config.extern_path(package, path);
        }
        if let Some(path) = &self.codec_path {
            config = config.codec_path(path);
        }
        config.compile_fds(set).map_err(|source| BuildError::Write {
            path: out_dir.join(GENERATED_FILE),
            source,
        })
    }
}
