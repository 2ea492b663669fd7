//! The query string: its parameters, percent-decoded, set on the fields they name.

use std::collections::HashMap;

use prost_reflect::{FieldDescriptor, MessageDescriptor};
use protomesh::status::echo;
use serde_json::Value;

use super::error::TranscodeError;
use super::fields::{leaf_value, resolve, FieldPath, Source};
use super::options::JsonOptions;

/// The query parameters as (field path, JSON value), grouped by field in order of first
/// appearance; parameters for path-bound fields and the body field are left out.
pub(super) fn query_values(
    input: &MessageDescriptor,
    query: &str,
    bindings: &[(FieldPath, Value)],
    body_field: Option<&FieldDescriptor>,
    options: &JsonOptions,
) -> Result<Vec<(FieldPath, Value)>, TranscodeError> {
    let mut grouped: Vec<(FieldPath, Vec<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for pair in query.trim_start_matches('?').split('&') {
        if pair.is_empty() {
            continue;
        }
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode_component(raw_key)?;
        if key.is_empty() {
            continue;
        }
        let value = decode_component(raw_value)?;
        let path = match resolve(input, key.split('.')) {
            Ok(path) => path,
            Err(TranscodeError::UnknownField { .. }) if options.allow_unknown_fields => {
                tracing::debug!(parameter = %key, "unknown query parameter skipped");
                continue;
            }
            Err(TranscodeError::UnknownField { field }) if field.is_empty() => {
                return Err(TranscodeError::UnknownField { field: key });
            }
            Err(err) => return Err(err),
        };
        if bindings
            .iter()
            .any(|(bound, _)| bound.dotted == path.dotted)
        {
            tracing::debug!(parameter = %key, "query parameter ignored: the path binds the field");
            continue;
        }
        if let (Some(body), Some(first)) = (body_field, path.fields.first()) {
            if body.number() == first.number() {
                tracing::debug!(parameter = %key, "query parameter ignored: the body sets it");
                continue;
            }
        }
        match index.get(&path.dotted) {
            Some(&i) => grouped[i].1.push(value),
            None => {
                index.insert(path.dotted.clone(), grouped.len());
                grouped.push((path, vec![value]));
            }
        }
    }
    grouped
        .into_iter()
        .map(|(path, raws)| {
            let value = leaf_value(&path, Source::Query, &raws, options)?;
            Ok((path, value))
        })
        .collect()
}

/// A query string key or value, percent-decoded with `+` as a space.
pub(super) fn decode_component(raw: &str) -> Result<String, TranscodeError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| TranscodeError::MalformedQuery {
            reason: format!("{:?} is not UTF-8 once percent-decoded", echo(raw)),
        })
}
