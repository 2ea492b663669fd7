//! The JSON body: parsed strictly (no repeated key), checked for unknown fields, merged with the
//! path and query values, decoded into the request message; a decoding error located at its field.

use crate::well_known::is_well_known;

use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use super::error::TranscodeError;
use super::fields::{find_field, join, json_type};

/// The body as JSON, refusing repeated keys (their paths start with `prefix`).
pub(super) fn parse_body(body: &[u8], prefix: &str) -> Result<Value, TranscodeError> {
    super::strict_json::from_slice(body, prefix).map_err(|err| {
        let err = match err {
            super::strict_json::StrictJsonError::DuplicateKey(field) => {
                return TranscodeError::DuplicateKey { field }
            }
            super::strict_json::StrictJsonError::Syntax(err) => err,
        };
        let (line, column) = (err.line(), err.column());
        let text = err.to_string();
        let reason = text
            .strip_suffix(&format!(" at line {line} column {column}"))
            .unwrap_or(&text)
            .to_owned();
        TranscodeError::MalformedJson {
            line,
            column,
            reason,
        }
    })
}

/// Refuses an object that names one field twice, under its JSON and its proto name
/// (`{"projectId": "a", "project_id": "b"}`): the JSON mapping accepts both, and would keep the
/// last. Nested messages (and lists and maps of them) are checked too; key paths start with
/// `prefix`.
pub(super) fn check_field_names(
    message: &MessageDescriptor,
    value: &Value,
    prefix: &str,
) -> Result<(), TranscodeError> {
    // Free-form well-known types (`Struct`, `Value`, `Any`…) have keys of their own.
    if message.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    let Value::Object(object) = value else {
        return Ok(());
    };
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    let mut seen = std::collections::HashSet::new();
    for (key, value) in object {
        let Some(field) = message
            .get_field_by_json_name(key)
            .or_else(|| message.get_field_by_name(key))
        else {
            continue;
        };
        if !seen.insert(field.number()) {
            return Err(TranscodeError::DuplicateKey { field: join(key) });
        }
        let prost_reflect::Kind::Message(nested) = field.kind() else {
            continue;
        };
        match value {
            Value::Array(items) if field.is_list() => {
                for (i, item) in items.iter().enumerate() {
                    check_field_names(&nested, item, &format!("{}[{i}]", join(key)))?;
                }
            }
            Value::Object(entries) if field.is_map() => {
                let map_value = nested.map_entry_value_field();
                if let prost_reflect::Kind::Message(values) = map_value.kind() {
                    for (entry, item) in entries {
                        check_field_names(&values, item, &format!("{}.{entry}", join(key)))?;
                    }
                }
            }
            _ if !field.is_list() && !field.is_map() => {
                check_field_names(&nested, value, &join(key))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `value` as a JSON object, `null` becoming an empty one; `path` names it in the error.
pub(super) fn object_mut<'v>(
    value: &'v mut Value,
    path: &str,
) -> Result<&'v mut Map<String, Value>, TranscodeError> {
    if value.is_null() {
        *value = Value::Object(Map::new());
    }
    let found = json_type(value);
    value.as_object_mut().ok_or_else(|| {
        let reason = format!("expected a JSON object, got {found}");
        if path.is_empty() {
            TranscodeError::InvalidBody { reason }
        } else {
            TranscodeError::InvalidField {
                field: path.to_owned(),
                reason,
            }
        }
    })
}

/// Sets `value` at the field path `fields` in the JSON object `root`, replacing what is there
/// (under the proto name or the JSON name) and creating the objects on the way.
pub(super) fn insert_at(
    root: &mut Value,
    fields: &[FieldDescriptor],
    value: Value,
) -> Result<(), TranscodeError> {
    let Some((leaf, parents)) = fields.split_last() else {
        return Ok(());
    };
    let mut current = root;
    let mut path = String::new();
    for field in parents {
        let object = object_mut(current, &path)?;
        let existing = take_field_entries(object, field);
        path = join(&path, field.name());
        current = object
            .entry(field.name().to_owned())
            .or_insert(existing.unwrap_or_else(|| Value::Object(Map::new())));
    }
    let object = object_mut(current, &path)?;
    take_field_entries(object, leaf);
    object.insert(leaf.name().to_owned(), value);
    Ok(())
}

/// Removes the entries of `field` (by proto name and JSON name) from `object`; returns the value
/// of the last one prost-reflect would have read.
pub(super) fn take_field_entries(
    object: &mut Map<String, Value>,
    field: &FieldDescriptor,
) -> Option<Value> {
    let by_name = object.remove(field.name());
    let by_json = object.remove(field.json_name());
    by_json.or(by_name)
}

// ---------------------------------------------------------------------------------------------
// Deserializing, with errors that name the field
pub(super) fn deserialize(
    input: &MessageDescriptor,
    root: &Value,
    allow_unknown: bool,
) -> Result<DynamicMessage, TranscodeError> {
    let options = DeserializeOptions::new().deny_unknown_fields(!allow_unknown);
    DynamicMessage::deserialize_with_options(input.clone(), root, &options).map_err(|err| {
        locate(input, root, "", &options, allow_unknown).unwrap_or_else(|| at_path("", &err))
    })
}

pub(super) fn try_deserialize(
    message: &MessageDescriptor,
    value: &Value,
    options: &DeserializeOptions,
) -> Result<(), serde_json::Error> {
    DynamicMessage::deserialize_with_options(message.clone(), value, options).map(drop)
}

pub(super) fn at_path(path: &str, err: &serde_json::Error) -> TranscodeError {
    if path.is_empty() {
        TranscodeError::InvalidBody {
            reason: err.to_string(),
        }
    } else {
        TranscodeError::InvalidField {
            field: path.to_owned(),
            reason: err.to_string(),
        }
    }
}

/// Finds the innermost field of `value` (a `message` at `path`) that fails to deserialize, by
/// deserializing one field at a time. Only runs once deserialization has failed.
pub(super) fn locate(
    message: &MessageDescriptor,
    value: &Value,
    path: &str,
    options: &DeserializeOptions,
    allow_unknown: bool,
) -> Option<TranscodeError> {
    let Value::Object(object) = value else {
        return try_deserialize(message, value, options)
            .err()
            .map(|err| at_path(path, &err));
    };
    if is_well_known(message) {
        return try_deserialize(message, value, options)
            .err()
            .map(|err| at_path(path, &err));
    }
    for (key, entry) in object {
        let Some(field) = find_field(message, key) else {
            if message.get_extension_by_json_name(key).is_none() && !allow_unknown {
                return Some(TranscodeError::UnknownField {
                    field: join(path, key),
                });
            }
            continue;
        };
        let field_path = join(path, field.name());
        let single = Value::Object(Map::from_iter([(key.clone(), entry.clone())]));
        if let Err(err) = try_deserialize(message, &single, options) {
            return Some(
                locate_in_field(
                    message,
                    &field,
                    key,
                    entry,
                    &field_path,
                    options,
                    allow_unknown,
                )
                .unwrap_or_else(|| at_path(&field_path, &err)),
            );
        }
    }
    // Every field reads alone: two members of a oneof, then?
    for oneof in message.oneofs() {
        let set: Vec<String> = oneof
            .fields()
            .filter(|field| {
                [field.name(), field.json_name()]
                    .iter()
                    .any(|name| object.get(*name).is_some_and(|v| !v.is_null()))
            })
            .map(|field| field.name().to_owned())
            .collect();
        if set.len() > 1 {
            return Some(TranscodeError::InvalidField {
                field: join(path, oneof.name()),
                reason: format!(
                    "only one field of the oneof may be set, got {}",
                    set.join(", ")
                ),
            });
        }
    }
    None
}

/// [`locate`] inside the value `entry` of `field` (given under `key` in a `parent` message).
pub(super) fn locate_in_field(
    parent: &MessageDescriptor,
    field: &FieldDescriptor,
    key: &str,
    entry: &Value,
    field_path: &str,
    options: &DeserializeOptions,
    allow_unknown: bool,
) -> Option<TranscodeError> {
    let single = |inner: Value| Value::Object(Map::from_iter([(key.to_owned(), inner)]));
    match (entry, field.kind()) {
        (Value::Object(entries), Kind::Message(entry_type)) if field.is_map() => {
            let value_kind = entry_type.map_entry_value_field().kind();
            for (map_key, map_value) in entries {
                let one = Value::Object(Map::from_iter([(map_key.clone(), map_value.clone())]));
                if let Err(err) = try_deserialize(parent, &single(one), options) {
                    let entry_path = format!("{field_path}[{}]", Value::String(map_key.clone()));
                    let inner = match &value_kind {
                        Kind::Message(value_type) => {
                            locate(value_type, map_value, &entry_path, options, allow_unknown)
                        }
                        _ => None,
                    };
                    return Some(inner.unwrap_or_else(|| at_path(&entry_path, &err)));
                }
            }
            None
        }
        (Value::Array(items), kind) if field.is_list() => {
            for (i, item) in items.iter().enumerate() {
                let one = Value::Array(vec![item.clone()]);
                if let Err(err) = try_deserialize(parent, &single(one), options) {
                    let item_path = format!("{field_path}[{i}]");
                    let inner = match &kind {
                        Kind::Message(item_type) => {
                            locate(item_type, item, &item_path, options, allow_unknown)
                        }
                        _ => None,
                    };
                    return Some(inner.unwrap_or_else(|| at_path(&item_path, &err)));
                }
            }
            None
        }
        (Value::Object(_), Kind::Message(inner)) if !field.is_list() && !field.is_map() => {
            locate(&inner, entry, field_path, options, allow_unknown)
        }
        _ => None,
    }
}
