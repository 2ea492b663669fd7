//! Which methods may be retried: those whose proto says `idempotency_level = NO_SIDE_EFFECTS` or
//! `IDEMPOTENT`, read from encoded descriptor sets and looked up by gRPC path (`/pkg.Svc/Method`).
//! A table can learn more descriptor sets while in use (the gateway learns every service's over
//! reflection); clones share what they learn.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prost::Message;
use prost_types::{method_options::IdempotencyLevel, FileDescriptorSet};

/// Error reading a descriptor set.
#[derive(Debug, thiserror::Error)]
#[error("invalid encoded FileDescriptorSet: {0}")]
pub struct DescriptorError(#[from] prost::DecodeError);

/// Idempotency of every method in some descriptor sets; clones share one table.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    levels: Arc<RwLock<HashMap<String, IdempotencyLevel>>>,
}

impl MethodTable {
    /// The methods of every service in the encoded `sets`.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, DescriptorError> {
        let table = Self::default();
        table.learn(sets)?;
        Ok(table)
    }

    /// Adds (or updates) the methods of every service in the encoded `sets`.
    pub fn learn(&self, sets: &[&[u8]]) -> Result<(), DescriptorError> {
        let mut levels = HashMap::new();
        for set in sets {
            let set = FileDescriptorSet::decode(*set)?;
            for file in set.file {
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
                            .map(|o| o.idempotency_level())
                            .unwrap_or(IdempotencyLevel::IdempotencyUnknown);
                        levels.insert(path, level);
                    }
                }
            }
        }
        match self.levels.write() {
            Ok(mut table) => table.extend(levels),
            Err(poisoned) => poisoned.into_inner().extend(levels),
        }
        Ok(())
    }

    /// Whether a call to `path` may be sent again after a failure (unknown methods may not).
    pub fn is_retryable(&self, path: &str) -> bool {
        self.levels.read().is_ok_and(|levels| {
            matches!(
                levels.get(path),
                Some(IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_methods_are_retryable_and_unknown_ones_are_not() {
        let table = MethodTable::from_descriptor_sets(&[crate::proto::FILE_DESCRIPTOR_SET])
            .expect("our descriptor set decodes");
        assert!(table.is_retryable("/protomesh.priority.v1.PriorityService/Score"));
        assert!(table.is_retryable("/protomesh.priority.v1.PriorityService/Prioritize"));
        assert!(!table.is_retryable("/protomesh.priority.v1.PriorityService/Nope"));
        assert!(!table.is_retryable("/grpc.health.v1.Health/Check"));
    }

    #[test]
    fn a_table_learns_more_sets_and_clones_share_them() {
        let table = MethodTable::default();
        let clone = table.clone();
        assert!(!clone.is_retryable("/protomesh.priority.v1.PriorityService/Score"));
        table
            .learn(&[crate::proto::FILE_DESCRIPTOR_SET])
            .expect("decodes");
        assert!(clone.is_retryable("/protomesh.priority.v1.PriorityService/Score"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(MethodTable::from_descriptor_sets(&[b"\xff\xff\xff"]).is_err());
    }
}
