//! A running gRPC server's descriptors, fetched over server reflection.
//!
//! [`fetch`] opens one bidirectional `ServerReflectionInfo` stream on `grpc.reflection.v1` (or on
//! `grpc.reflection.v1alpha`, the only version grpcurl 1.8 era servers have, when the server
//! answers `UNIMPLEMENTED`) and asks on that one stream, in rounds (each round's requests are
//! sent together, and the answers come back in order):
//! 1. `list_services` (the `grpc.reflection.*` and `grpc.health.*` services are left out);
//! 2. `file_containing_symbol` for every listed service;
//! 3. `file_by_filename` for every imported file not received yet, until none is missing.
//!
//! Every file of every answer is kept (a server may send a file's imports along with it), as the
//! bytes the server sent: the pool is decoded from them with [`DescriptorPool::decode`], which,
//! unlike building from `prost_types`, keeps extension options such as `google.api.http`.
//!
//! A fetch is bounded in time ([`FetchOptions::timeout`], 5 s by default, for the whole exchange
//! including the connection) and in size ([`FetchOptions::max_files`],
//! [`FetchOptions::max_bytes`]), so a slow, silent or hostile server cannot hold the gateway or
//! fill its memory.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use futures::stream::BoxStream;
use prost::Message;
use prost_reflect::{DescriptorPool, ServiceDescriptor};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::codegen::{Body, Bytes, StdError};
use tonic::{Code, Status};

/// Default bound on a whole fetch, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on the number of distinct files a fetch accepts.
pub const DEFAULT_MAX_FILES: usize = 10_000;
/// Default cap on the descriptor bytes a fetch accepts (all files together).
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Services that reflection lists but that are plumbing, not routes.
const EXCLUDED_PREFIXES: [&str; 2] = ["grpc.reflection.", "grpc.health."];

/// Which server reflection protocol answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReflectionVersion {
    /// `grpc.reflection.v1.ServerReflection`.
    V1,
    /// `grpc.reflection.v1alpha.ServerReflection` (older servers, grpcurl 1.8 era).
    V1Alpha,
}

impl ReflectionVersion {
    /// The full name of the reflection service of this version.
    pub fn service_name(self) -> &'static str {
        match self {
            Self::V1 => "grpc.reflection.v1.ServerReflection",
            Self::V1Alpha => "grpc.reflection.v1alpha.ServerReflection",
        }
    }
}

impl fmt::Display for ReflectionVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.service_name())
    }
}

/// What a server serves, as read over reflection.
#[derive(Debug, Clone)]
pub struct ServiceDescriptors {
    /// Full names of the served services, sorted, without `grpc.reflection.*` and
    /// `grpc.health.*`. Each one is in [`ServiceDescriptors::pool`].
    pub services: Vec<String>,
    /// Every file the services need (their files and, transitively, the files those import),
    /// with options kept: `google.api.http` is readable from a method's options.
    pub pool: DescriptorPool,
    /// Where the descriptors came from.
    pub source: DescriptorSource,
}

/// Where a service's descriptors came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorSource {
    /// Server reflection, in this protocol version.
    Reflection(ReflectionVersion),
    /// A descriptor-set file given to the gateway (the fallback for services without reflection).
    File(std::path::PathBuf),
}

impl ServiceDescriptors {
    /// The services of an encoded `FileDescriptorSet` file (with imports included, e.g.
    /// `protoc --include_imports --descriptor_set_out`): every service it defines except
    /// `grpc.*` ones.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ReflectionError> {
        let file_error = |reason: String| ReflectionError::File {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|err| file_error(err.to_string()))?;
        let pool =
            DescriptorPool::decode(bytes.as_slice()).map_err(|err| file_error(err.to_string()))?;
        let mut services: Vec<String> = pool
            .services()
            .map(|s| s.full_name().to_owned())
            .filter(|name| !name.starts_with("grpc."))
            .collect();
        services.sort();
        if services.is_empty() {
            return Err(file_error("it defines no service".to_owned()));
        }
        Ok(Self {
            services,
            pool,
            source: DescriptorSource::File(path.to_path_buf()),
        })
    }
}

impl ServiceDescriptors {
    /// The descriptors of [`ServiceDescriptors::services`], in the same order.
    pub fn service_descriptors(&self) -> impl Iterator<Item = ServiceDescriptor> + '_ {
        self.services
            .iter()
            .filter_map(|name| self.pool.get_service_by_name(name))
    }
}

/// Bounds on one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// The whole fetch (connecting, every request and answer) must end within this.
    pub timeout: Duration,
    /// Most distinct files accepted (received or still to ask for).
    pub max_files: usize,
    /// Most descriptor bytes accepted, all answers together (duplicates included).
    pub max_bytes: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_files: DEFAULT_MAX_FILES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Why a server's descriptors could not be fetched. Each variant names what was being asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReflectionError {
    /// A descriptor-set file could not be read or decoded.
    #[error("descriptor set file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The reflection call failed: no connection, a reset stream, or a gRPC status that ended it
    /// (a tonic server ends the stream with `NOT_FOUND` for an unknown file or symbol).
    #[error("{version} failed at {request}: {status}")]
    Transport {
        /// The protocol that was being spoken.
        version: ReflectionVersion,
        /// The request that was waiting for its answer (`list_services`, `file_by_filename x`, …).
        request: String,
        /// The status the call ended with.
        #[source]
        status: Status,
    },
    /// The server implements neither `grpc.reflection.v1` nor `grpc.reflection.v1alpha`.
    #[error(
        "the server does not implement server reflection: grpc.reflection.v1 and \
         grpc.reflection.v1alpha both answered UNIMPLEMENTED{}",
        said(.v1, .v1alpha)
    )]
    Unimplemented {
        /// The message of the server's answer to v1 (often empty).
        v1: String,
        /// The message of the server's answer to v1alpha (often empty).
        v1alpha: String,
    },
    /// The server answered a request with an `ErrorResponse`.
    #[error("{version}: the server answered {request} with {code:?} ({message})")]
    Server {
        /// The protocol that was being spoken.
        version: ReflectionVersion,
        /// The request it refused.
        request: String,
        /// The gRPC code it gave.
        code: Code,
        /// Its message.
        message: String,
    },
    /// A file descriptor in an answer is not a valid `FileDescriptorProto`.
    #[error("undecodable file descriptor in the answer to {request}: {source}")]
    Decode {
        /// The request it answered.
        request: String,
        /// Why it does not decode.
        #[source]
        source: prost::DecodeError,
    },
    /// The server broke the protocol: an answer of the wrong kind, a missing answer, a file
    /// without a name, or not the file asked for.
    #[error("{version}: unexpected answer to {request}: {detail}")]
    Protocol {
        /// The protocol that was being spoken.
        version: ReflectionVersion,
        /// The request concerned.
        request: String,
        /// What was wrong.
        detail: String,
    },
    /// The files received do not form a consistent pool (an unresolved type or import, a
    /// duplicate definition, an option that does not decode as its declared extension, …).
    #[error(
        "the descriptors do not form a consistent pool (in {}): {source}",
        .file.as_deref().unwrap_or("a file prost-reflect does not name")
    )]
    Pool {
        /// The file the first problem is in, if prost-reflect could tell.
        file: Option<String>,
        /// What prost-reflect found.
        #[source]
        source: prost_reflect::DescriptorError,
    },
    /// A listed service is in none of the files received.
    #[error("service {service} is listed but no file received defines it")]
    MissingService {
        /// The service's full name.
        service: String,
    },
    /// The server would need more files than [`FetchOptions::max_files`] (or lists more services).
    #[error("more than {limit} files needed (at {request}); refusing to fetch more")]
    TooManyFiles {
        /// The cap.
        limit: usize,
        /// The request at which the cap was reached.
        request: String,
    },
    /// The answers exceed [`FetchOptions::max_bytes`].
    #[error("more than {limit} bytes of descriptors (at {request}); refusing to fetch more")]
    TooLarge {
        /// The cap.
        limit: usize,
        /// The request at which the cap was reached.
        request: String,
    },
    /// The fetch did not end within [`FetchOptions::timeout`].
    #[error("server reflection timed out after {timeout:?} waiting for {waiting_for}")]
    Timeout {
        /// The bound.
        timeout: Duration,
        /// What had not come (`the grpc.reflection.v1.ServerReflection stream to open`,
        /// `the answer to list_services`, …).
        waiting_for: String,
    },
}

/// The messages of [`ReflectionError::Unimplemented`], when the server gave any.
fn said(v1: &str, v1alpha: &str) -> String {
    match (v1.is_empty(), v1alpha.is_empty()) {
        (true, true) => String::new(),
        _ => format!(" (v1: {v1:?}; v1alpha: {v1alpha:?})"),
    }
}

/// Fetches the descriptors served at `channel` with the default bounds ([`FetchOptions`]).
///
/// `channel` is any tonic transport: a `tonic::transport::Channel`, the mesh client's
/// `MeshChannel`, ….
pub async fn fetch<T>(channel: T) -> Result<ServiceDescriptors, ReflectionError>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<StdError>,
    T::Future: Send,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    fetch_with(channel, FetchOptions::default()).await
}

/// Fetches the descriptors served at `channel`, within `timeout` (other bounds as by default).
pub async fn fetch_with_timeout<T>(
    channel: T,
    timeout: Duration,
) -> Result<ServiceDescriptors, ReflectionError>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<StdError>,
    T::Future: Send,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    fetch_with(
        channel,
        FetchOptions {
            timeout,
            ..FetchOptions::default()
        },
    )
    .await
}

/// Fetches the descriptors served at `channel` within `options`' bounds.
pub async fn fetch_with<T>(
    channel: T,
    options: FetchOptions,
) -> Result<ServiceDescriptors, ReflectionError>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<StdError>,
    T::Future: Send,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let now = Instant::now();
    // A timeout too large to add is as good as none (a year).
    let deadline = now
        .checked_add(options.timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
    let (mut session, listed) =
        match Session::start(channel.clone(), ReflectionVersion::V1, deadline, options).await {
            Err(ReflectionError::Transport { status: v1, .. })
                if v1.code() == Code::Unimplemented =>
            {
                match Session::start(channel, ReflectionVersion::V1Alpha, deadline, options).await {
                    Err(ReflectionError::Transport {
                        status: v1alpha, ..
                    }) if v1alpha.code() == Code::Unimplemented => {
                        return Err(ReflectionError::Unimplemented {
                            v1: v1.message().to_owned(),
                            v1alpha: v1alpha.message().to_owned(),
                        });
                    }
                    started => started?,
                }
            }
            started => started?,
        };

    let mut services: Vec<String> = listed
        .into_iter()
        .filter(|name| !EXCLUDED_PREFIXES.iter().any(|p| name.starts_with(p)))
        .collect();
    services.sort();
    services.dedup();
    if services.len() > options.max_files {
        return Err(ReflectionError::TooManyFiles {
            limit: options.max_files,
            request: Ask::ListServices.to_string(),
        });
    }

    let files = session.collect_files(&services).await?;
    let version = session.version;
    drop(session);

    let pool = build_pool(&files)?;
    if let Some(missing) = services
        .iter()
        .find(|name| pool.get_service_by_name(name).is_none())
    {
        return Err(ReflectionError::MissingService {
            service: missing.clone(),
        });
    }
    Ok(ServiceDescriptors {
        services,
        pool,
        source: DescriptorSource::Reflection(version),
    })
}

/// An encoded `google.protobuf.FileDescriptorSet` whose files stay raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawFileSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

/// Decodes the raw files (in any order) into one pool, keeping extension options.
fn build_pool(files: &BTreeMap<String, File>) -> Result<DescriptorPool, ReflectionError> {
    let set = RawFileSet {
        file: files.values().map(|file| file.raw.clone()).collect(),
    }
    .encode_to_vec();
    DescriptorPool::decode(set.as_slice()).map_err(|source| ReflectionError::Pool {
        file: source
            .file()
            .map(str::to_owned)
            .or_else(|| first_bad_file(files)),
        source,
    })
}

/// The first file, in dependency order, that does not decode into a pool holding its imports:
/// names the culprit when prost-reflect's error does not (an option that does not decode as the
/// extension declared for it, for example).
fn first_bad_file(files: &BTreeMap<String, File>) -> Option<String> {
    let mut pool = DescriptorPool::new();
    dependency_order(files)
        .into_iter()
        .find(|name| {
            files.get(*name).is_some_and(|file| {
                pool.decode_file_descriptor_proto(file.raw.as_slice())
                    .is_err()
            })
        })
        .map(str::to_owned)
}

/// The names of `files`, every file after the files it imports (iterative: import chains may be
/// as long as the file cap; a cycle is cut where it closes).
fn dependency_order(files: &BTreeMap<String, File>) -> Vec<&str> {
    let mut order = Vec::with_capacity(files.len());
    let mut entered: HashSet<&str> = HashSet::with_capacity(files.len());
    for root in files.keys() {
        if !entered.insert(root.as_str()) {
            continue;
        }
        // (file, index of the next import to visit)
        let mut stack: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        while let Some(&(name, next)) = stack.last() {
            match files.get(name).and_then(|file| file.dependencies.get(next)) {
                Some(dependency) => {
                    if let Some(top) = stack.last_mut() {
                        top.1 += 1;
                    }
                    if files.contains_key(dependency) && entered.insert(dependency.as_str()) {
                        stack.push((dependency.as_str(), 0));
                    }
                }
                None => {
                    order.push(name);
                    stack.pop();
                }
            }
        }
    }
    order
}

/// A request, independent of the protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ask {
    /// `list_services`.
    ListServices,
    /// `file_containing_symbol` for a service.
    Symbol(String),
    /// `file_by_filename` for a file another imports.
    File {
        /// The file asked for.
        name: String,
        /// The first file found importing it (for error messages).
        imported_by: String,
    },
}

impl fmt::Display for Ask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ListServices => f.write_str("list_services"),
            Self::Symbol(symbol) => write!(f, "file_containing_symbol {symbol}"),
            Self::File { name, imported_by } => {
                write!(f, "file_by_filename {name} (imported by {imported_by})")
            }
        }
    }
}

/// An answer, independent of the protocol version.
#[derive(Debug)]
enum Answer {
    /// `list_services_response`: the services' full names.
    Services(Vec<String>),
    /// `file_descriptor_response`: encoded `FileDescriptorProto`s.
    Files(Vec<Vec<u8>>),
    /// `error_response`.
    Error { code: i32, message: String },
    /// Another kind of answer, or none.
    Other(&'static str),
}

/// A file received: its raw bytes (kept for the pool) and its imports.
struct File {
    raw: Vec<u8>,
    dependencies: Vec<String>,
}

/// One open `ServerReflectionInfo` stream.
struct Session {
    version: ReflectionVersion,
    options: FetchOptions,
    deadline: Instant,
    requests: mpsc::UnboundedSender<Ask>,
    answers: BoxStream<'static, Result<Answer, Status>>,
}

impl Session {
    /// Opens the stream of `version` and lists the services; an `UNIMPLEMENTED` reflection
    /// service shows as [`ReflectionError::Transport`] with that code.
    async fn start<T>(
        channel: T,
        version: ReflectionVersion,
        deadline: Instant,
        options: FetchOptions,
    ) -> Result<(Self, Vec<String>), ReflectionError>
    where
        T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
        T::Error: Into<StdError>,
        T::Future: Send,
        T::ResponseBody: Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + Send,
    {
        let (requests, queued) = mpsc::unbounded_channel();
        // Queued before opening, so the server has something to answer whatever it waits for.
        let _ = requests.send(Ask::ListServices);
        let opening = async move {
            match version {
                ReflectionVersion::V1 => wire_v1::open(channel, queued).await,
                ReflectionVersion::V1Alpha => wire_v1alpha::open(channel, queued).await,
            }
        };
        let answers = tokio::time::timeout_at(deadline, opening)
            .await
            .map_err(|_| ReflectionError::Timeout {
                timeout: options.timeout,
                waiting_for: format!("the {version} stream to open"),
            })?
            .map_err(|status| ReflectionError::Transport {
                version,
                request: Ask::ListServices.to_string(),
                status,
            })?;
        let mut session = Self {
            version,
            options,
            deadline,
            requests,
            answers,
        };
        let ask = Ask::ListServices;
        match session.recv(&ask).await? {
            Answer::Services(services) => Ok((session, services)),
            answer => Err(session.unexpected(&ask, answer)),
        }
    }

    /// Asks for the files of `services` and, transitively, their imports.
    async fn collect_files(
        &mut self,
        services: &[String],
    ) -> Result<BTreeMap<String, File>, ReflectionError> {
        let mut files: BTreeMap<String, File> = BTreeMap::new();
        // Every file name received or asked for: what `max_files` bounds.
        let mut known: HashSet<String> = HashSet::new();
        let mut bytes = 0usize;
        let mut round: Vec<Ask> = services.iter().cloned().map(Ask::Symbol).collect();
        while !round.is_empty() {
            // The whole round is pipelined on the stream; answers come back in order.
            for ask in &round {
                // A closed request side shows as the stream's end or status at `recv`.
                let _ = self.requests.send(ask.clone());
            }
            let mut new_files = Vec::new();
            for ask in &round {
                let raws = match self.recv(ask).await? {
                    Answer::Files(raws) => raws,
                    answer => return Err(self.unexpected(ask, answer)),
                };
                for raw in raws {
                    bytes = bytes.saturating_add(raw.len());
                    if bytes > self.options.max_bytes {
                        return Err(ReflectionError::TooLarge {
                            limit: self.options.max_bytes,
                            request: ask.to_string(),
                        });
                    }
                    let decoded = prost_types::FileDescriptorProto::decode(raw.as_slice())
                        .map_err(|source| ReflectionError::Decode {
                            request: ask.to_string(),
                            source,
                        })?;
                    let name = decoded.name().to_owned();
                    if name.is_empty() {
                        return Err(self.protocol(ask, "a file descriptor without a name"));
                    }
                    if files.contains_key(&name) {
                        continue;
                    }
                    self.count(&mut known, &name, ask)?;
                    let file = File {
                        raw,
                        dependencies: decoded.dependency,
                    };
                    files.insert(name.clone(), file);
                    new_files.push(name);
                }
                if let Ask::File { name, .. } = ask {
                    if !files.contains_key(name) {
                        return Err(self.protocol(ask, "the answer does not contain that file"));
                    }
                }
            }

            // Next round: what the new files import that is neither here nor asked for already.
            round = Vec::new();
            for importer in &new_files {
                let Some(file) = files.get(importer) else {
                    continue;
                };
                for dependency in &file.dependencies {
                    if known.contains(dependency) {
                        continue;
                    }
                    let ask = Ask::File {
                        name: dependency.clone(),
                        imported_by: importer.clone(),
                    };
                    self.count(&mut known, dependency, &ask)?;
                    round.push(ask);
                }
            }
        }
        Ok(files)
    }

    /// Adds `name` to the files received or asked for, within [`FetchOptions::max_files`].
    fn count(
        &self,
        known: &mut HashSet<String>,
        name: &str,
        ask: &Ask,
    ) -> Result<(), ReflectionError> {
        if known.contains(name) {
            return Ok(());
        }
        if known.len() >= self.options.max_files {
            return Err(ReflectionError::TooManyFiles {
                limit: self.options.max_files,
                request: ask.to_string(),
            });
        }
        known.insert(name.to_owned());
        Ok(())
    }

    /// The answer to `ask`, the next on the stream.
    async fn recv(&mut self, ask: &Ask) -> Result<Answer, ReflectionError> {
        let next = tokio::time::timeout_at(self.deadline, self.answers.next())
            .await
            .map_err(|_| ReflectionError::Timeout {
                timeout: self.options.timeout,
                waiting_for: format!("the answer to {ask}"),
            })?;
        match next {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(status)) => Err(ReflectionError::Transport {
                version: self.version,
                request: ask.to_string(),
                status,
            }),
            None => Err(self.protocol(ask, "the stream ended before answering")),
        }
    }

    fn unexpected(&self, ask: &Ask, answer: Answer) -> ReflectionError {
        let detail = match answer {
            Answer::Services(_) => "a list of services",
            Answer::Files(_) => "file descriptors",
            Answer::Error { code, message } => {
                return ReflectionError::Server {
                    version: self.version,
                    request: ask.to_string(),
                    code: Code::from_i32(code),
                    message,
                };
            }
            Answer::Other(what) => what,
        };
        self.protocol(ask, &format!("got {detail}"))
    }

    fn protocol(&self, ask: &Ask, detail: &str) -> ReflectionError {
        ReflectionError::Protocol {
            version: self.version,
            request: ask.to_string(),
            detail: detail.to_owned(),
        }
    }
}

/// The wire side of one protocol version: the generated client, and conversions between its
/// messages and [`Ask`] / [`Answer`]. Both versions have the same messages under other names.
macro_rules! wire {
    ($module:ident, $pb:path) => {
        mod $module {
            use futures::stream::BoxStream;
            use tokio::sync::mpsc;
            use tokio_stream::wrappers::UnboundedReceiverStream;
            use tokio_stream::StreamExt;
            use tonic::codegen::{Body, Bytes, StdError};
            use tonic::Status;

            use super::{Answer, Ask};
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;

            /// Opens the stream; `requests` feeds it.
            pub(super) async fn open<T>(
                channel: T,
                requests: mpsc::UnboundedReceiver<Ask>,
            ) -> Result<BoxStream<'static, Result<Answer, Status>>, Status>
            where
                T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
                T::Error: Into<StdError>,
                T::Future: Send,
                T::ResponseBody: Body<Data = Bytes> + Send + 'static,
                <T::ResponseBody as Body>::Error: Into<StdError> + Send,
            {
                let mut client = pb::server_reflection_client::ServerReflectionClient::new(channel);
                let requests = UnboundedReceiverStream::new(requests).map(request);
                let answers = client.server_reflection_info(requests).await?.into_inner();
                Ok(Box::pin(answers.map(|response| response.map(answer))))
            }

            fn request(ask: Ask) -> pb::ServerReflectionRequest {
                let message = match ask {
                    Ask::ListServices => MessageRequest::ListServices(String::new()),
                    Ask::Symbol(symbol) => MessageRequest::FileContainingSymbol(symbol),
                    Ask::File { name, .. } => MessageRequest::FileByFilename(name),
                };
                pb::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(message),
                }
            }

            fn answer(response: pb::ServerReflectionResponse) -> Answer {
                match response.message_response {
                    Some(MessageResponse::ListServicesResponse(list)) => {
                        Answer::Services(list.service.into_iter().map(|s| s.name).collect())
                    }
                    Some(MessageResponse::FileDescriptorResponse(files)) => {
                        Answer::Files(files.file_descriptor_proto)
                    }
                    Some(MessageResponse::ErrorResponse(error)) => Answer::Error {
                        code: error.error_code,
                        message: error.error_message,
                    },
                    Some(MessageResponse::AllExtensionNumbersResponse(_)) => {
                        Answer::Other("extension numbers")
                    }
                    None => Answer::Other("an empty answer"),
                }
            }
        }
    };
}

wire!(wire_v1, tonic_reflection::pb::v1);
wire!(wire_v1alpha, tonic_reflection::pb::v1alpha);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn build_pool_takes_files_in_any_order_and_keeps_their_options() {
        // Raw bytes straight from the encoded set (re-encoding through prost_types would drop
        // the extension options).
        let raws = RawFileSet::decode(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
            .unwrap()
            .file;
        assert!(raws.len() > 2);
        // Keyed by reversed names: build_pool sees the files in an order unrelated to imports.
        let files: BTreeMap<String, File> = raws
            .into_iter()
            .map(|raw| {
                let decoded = prost_types::FileDescriptorProto::decode(raw.as_slice()).unwrap();
                let key: String = decoded.name().chars().rev().collect();
                let file = File {
                    raw,
                    dependencies: decoded.dependency,
                };
                (key, file)
            })
            .collect();
        let pool = build_pool(&files).unwrap();
        let method = pool
            .get_service_by_name("protomesh.priority.v1.PriorityService")
            .and_then(|s| s.methods().find(|m| m.name() == "Score"))
            .unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        let options = method.options();
        let rule = options.get_extension(&http);
        let post = rule
            .as_message()
            .unwrap()
            .get_field_by_name("post")
            .unwrap();
        assert_eq!(post.as_str(), Some("/v1/priority:score"));
    }

    #[test]
    fn dependency_order_puts_imports_first_and_survives_cycles() {
        let file = |deps: &[&str]| File {
            raw: Vec::new(),
            dependencies: deps.iter().map(|d| (*d).to_owned()).collect(),
        };
        let files = BTreeMap::from([
            ("a".to_owned(), file(&["c", "b"])),
            ("b".to_owned(), file(&["c", "elsewhere"])),
            ("c".to_owned(), file(&[])),
            ("x".to_owned(), file(&["y"])),
            ("y".to_owned(), file(&["x"])),
        ]);
        assert_eq!(dependency_order(&files), ["c", "b", "a", "y", "x"]);
    }

    #[test]
    fn a_missing_import_is_a_pool_error() {
        let file = prost_types::FileDescriptorProto {
            name: Some("a.proto".into()),
            dependency: vec!["b.proto".into()],
            ..Default::default()
        };
        let files = BTreeMap::from([(
            "a.proto".to_owned(),
            File {
                raw: file.encode_to_vec(),
                dependencies: vec!["b.proto".into()],
            },
        )]);
        let err = build_pool(&files).err();
        assert!(
            matches!(&err, Some(ReflectionError::Pool { file: Some(file), source })
                if file == "a.proto" && source.to_string().contains("b.proto")),
            "{err:?}"
        );
    }
}
