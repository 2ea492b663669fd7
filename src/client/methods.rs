//! What the mesh client knows of each method from its descriptors, looked up by gRPC path
//! (`/pkg.Svc/Method`): whether it may be retried (its proto says `idempotency_level =
//! NO_SIDE_EFFECTS` or `IDEMPOTENT`) and its default deadline (the `default_timeout` of its
//! `(protomesh.options.v1.policy)`, see [`crate::policy`]), and, for retryable methods, the
//! observed latency the retry layer derives attempt timeouts from. A table can learn more
//! descriptor sets while in use (the gateway learns every service's over reflection); clones
//! share what they learn.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message;
use prost_types::{method_options::IdempotencyLevel, FileDescriptorSet};

use super::latency::PeakEwma;

/// Error reading a descriptor set.
#[derive(Debug, thiserror::Error)]
#[error("invalid encoded FileDescriptorSet: {0}")]
pub struct DescriptorError(#[from] prost::DecodeError);

/// What is known of one method.
#[derive(Debug, Clone)]
struct MethodInfo {
    level: IdempotencyLevel,
    default_timeout: Option<Duration>,
    /// Latency of its successful attempts (all endpoints together).
    latency: Arc<PeakEwma>,
    /// One request, one answer (no stream either way).
    unary: bool,
}

/// Idempotency and default deadline of every method in some descriptor sets; clones share one
/// table.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    methods: Arc<RwLock<HashMap<String, MethodInfo>>>,
}

impl MethodTable {
    /// The methods of every service in the encoded `sets`.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, DescriptorError> {
        let table = Self::default();
        table.learn(sets)?;
        Ok(table)
    }

    /// The methods of every service in `pool`.
    pub fn from_pool(pool: &prost_reflect::DescriptorPool) -> Self {
        let table = Self::default();
        table.learn_pool(pool);
        table
    }

    /// Adds (or updates) the methods of every service in the encoded `sets`.
    pub fn learn(&self, sets: &[&[u8]]) -> Result<(), DescriptorError> {
        let mut methods = HashMap::new();
        for set in sets {
            // Policies need the options' extensions, which only a reflective pool keeps; a set
            // that does not make a consistent pool (missing imports) just has no timeouts.
            match crate::descriptors::lean_pool(&[*set]) {
                Ok(pool) => methods.extend(methods_of_pool(&pool)),
                Err(_) => methods.extend(methods_of_set(&FileDescriptorSet::decode(*set)?)),
            }
        }
        self.merge(methods);
        Ok(())
    }

    /// Adds (or updates) the methods of every service in `pool`.
    pub fn learn_pool(&self, pool: &prost_reflect::DescriptorPool) {
        self.merge(methods_of_pool(pool));
    }

    /// Puts `methods` in the table, keeping what was observed of a method learned again.
    fn merge(&self, methods: HashMap<String, MethodInfo>) {
        let mut table = match self.methods.write() {
            Ok(table) => table,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (path, mut info) in methods {
            if let Some(known) = table.get(&path) {
                info.latency = Arc::clone(&known.latency);
            }
            table.insert(path, info);
        }
    }

    /// Whether a call to `path` may be sent again after a failure (unknown methods may not).
    pub fn is_retryable(&self, path: &str) -> bool {
        self.methods.read().is_ok_and(|methods| {
            matches!(
                methods.get(path).map(|m| m.level),
                Some(IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent)
            )
        })
    }

    /// The latency estimate of `path` and whether it is unary, when a call to it may be sent
    /// again (see [`MethodTable::is_retryable`]); `None` otherwise. One lookup for the retry
    /// layer.
    pub(crate) fn retry_latency(&self, path: &str) -> Option<(Arc<PeakEwma>, bool)> {
        let methods = self.methods.read().ok()?;
        let info = methods.get(path)?;
        matches!(
            info.level,
            IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent
        )
        .then(|| (Arc::clone(&info.latency), info.unary))
    }

    /// The deadline a call to `path` gets when its caller sets none, if its policy names one.
    pub fn default_timeout(&self, path: &str) -> Option<Duration> {
        self.methods
            .read()
            .ok()
            .and_then(|methods| methods.get(path).and_then(|m| m.default_timeout))
    }
}

/// A method's entry, before anything is observed of it.
fn method_info(
    level: IdempotencyLevel,
    default_timeout: Option<Duration>,
    unary: bool,
) -> MethodInfo {
    MethodInfo {
        level,
        default_timeout,
        latency: Arc::new(PeakEwma::new(Duration::ZERO)),
        unary,
    }
}

/// The methods of `pool`, by path, with their idempotency and their policy's default deadline.
fn methods_of_pool(pool: &prost_reflect::DescriptorPool) -> HashMap<String, MethodInfo> {
    let mut methods = HashMap::new();
    for service in pool.services() {
        for method in service.methods() {
            let level = method
                .method_descriptor_proto()
                .options
                .as_ref()
                .map_or(IdempotencyLevel::IdempotencyUnknown, |o| {
                    o.idempotency_level()
                });
            let timeout = crate::policy::declared(&method)
                .ok()
                .and_then(|policy| policy.default_timeout)
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero());
            let path = format!("/{}/{}", service.full_name(), method.name());
            let unary = !method.is_client_streaming() && !method.is_server_streaming();
            methods.insert(path, method_info(level, timeout, unary));
        }
    }
    methods
}

/// The methods of a set that makes no consistent pool: their idempotency only.
fn methods_of_set(set: &FileDescriptorSet) -> HashMap<String, MethodInfo> {
    let mut methods = HashMap::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                let path = if package.is_empty() {
                    format!("/{}/{}", service.name(), method.name())
                } else {
                    format!("/{package}.{}/{}", service.name(), method.name())
                };
                let level = method
                    .options
                    .as_ref()
                    .map_or(IdempotencyLevel::IdempotencyUnknown, |o| {
                        o.idempotency_level()
                    });
                let unary = !method.client_streaming() && !method.server_streaming();
                methods.insert(path, method_info(level, None, unary));
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_methods_are_retryable_and_unknown_ones_are_not() {
        let table = MethodTable::from_descriptor_sets(crate::test_protos::SETS)
            .expect("our descriptor set decodes");
        assert!(table.is_retryable("/protomesh.priority.v1.PriorityService/Score"));
        assert!(table.is_retryable("/protomesh.priority.v1.PriorityService/Prioritize"));
        assert!(!table.is_retryable("/protomesh.priority.v1.PriorityService/Nope"));
        assert!(!table.is_retryable("/grpc.health.v1.Health/Check"));
    }

    #[test]
    fn default_timeouts_come_from_the_method_policy() {
        let table = MethodTable::from_descriptor_sets(crate::test_protos::SETS)
            .expect("our descriptor set decodes");
        // priority.proto's service-level policy says 2 s; tasks.proto names no timeout.
        assert_eq!(
            table.default_timeout("/protomesh.priority.v1.PriorityService/Score"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            table.default_timeout("/protomesh.tasks.v1.TasksService/GetTask"),
            None
        );
        assert_eq!(table.default_timeout("/nope.Svc/M"), None);
    }

    #[test]
    fn a_table_learns_more_sets_and_clones_share_them() {
        let table = MethodTable::default();
        let clone = table.clone();
        assert!(!clone.is_retryable("/protomesh.priority.v1.PriorityService/Score"));
        table.learn(crate::test_protos::SETS).expect("decodes");
        assert!(clone.is_retryable("/protomesh.priority.v1.PriorityService/Score"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(MethodTable::from_descriptor_sets(&[b"\xff\xff\xff"]).is_err());
    }
}
