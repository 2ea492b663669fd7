//! An update's `update_mask`, filled from the keys of its body (AIP-134), output-only fields left out.

use crate::well_known::is_well_known;

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value as ProtoValue,
};
use serde_json::{Map, Value};

use super::error::TranscodeError;
use super::fields::{find_field, join};
use super::options::JsonOptions;

/// The `update_mask` field and the paths for it, if the request qualifies: the body field is a
/// singular message, the request has a `google.protobuf.FieldMask update_mask` and the body is a
/// JSON object.
pub(super) fn update_mask_paths(
    input: &MessageDescriptor,
    body_field: &FieldDescriptor,
    body: &Value,
    options: &JsonOptions,
) -> Result<Option<(FieldDescriptor, Vec<String>)>, TranscodeError> {
    let resource = match body_field.kind() {
        Kind::Message(resource)
            if !body_field.is_list() && !body_field.is_map() && !is_well_known(&resource) =>
        {
            resource
        }
        _ => return Ok(None),
    };
    let Some(mask_field) = input.get_field_by_name("update_mask") else {
        return Ok(None);
    };
    let is_mask = matches!(
        mask_field.kind(),
        Kind::Message(mask) if mask.full_name() == "google.protobuf.FieldMask"
    );
    let Value::Object(object) = body else {
        return Ok(None);
    };
    if !is_mask || mask_field.is_list() {
        return Ok(None);
    }
    let mut paths = Vec::new();
    collect_mask_paths(
        &resource,
        object,
        "",
        body_field.name(),
        options.allow_unknown_fields,
        &mut paths,
    )?;
    paths.sort();
    paths.dedup();
    Ok(Some((mask_field, paths)))
}

/// Appends to `paths` the field paths of the keys of `object` (a `message`), under `prefix`;
/// `error_prefix` is where `object` is in the request, for errors.
pub(super) fn collect_mask_paths(
    message: &MessageDescriptor,
    object: &Map<String, Value>,
    prefix: &str,
    error_prefix: &str,
    allow_unknown: bool,
    paths: &mut Vec<String>,
) -> Result<(), TranscodeError> {
    for (key, value) in object {
        let Some(field) = find_field(message, key) else {
            if allow_unknown {
                continue;
            }
            return Err(TranscodeError::UnknownField {
                field: join(error_prefix, key),
            });
        };
        // An output-only field (the resource's id, its timestamps) cannot be updated: sent back
        // as it was read, it is ignored (AIP-203), not named in the mask.
        if protomesh::rules::is_output_only(&field) {
            continue;
        }
        let path = join(prefix, field.name());
        match (field.kind(), value) {
            (Kind::Message(inner), Value::Object(nested))
                if !field.is_list()
                    && !field.is_map()
                    && !is_well_known(&inner)
                    && !nested.is_empty() =>
            {
                collect_mask_paths(
                    &inner,
                    nested,
                    &path,
                    &join(error_prefix, field.name()),
                    allow_unknown,
                    paths,
                )?;
            }
            _ => paths.push(path),
        }
    }
    Ok(())
}

/// Sets `paths` as the `update_mask` of `message`, unless the request gave a non-empty one.
pub(super) fn fill_update_mask(
    message: &mut DynamicMessage,
    mask_field: &FieldDescriptor,
    paths: Vec<String>,
) -> Result<(), TranscodeError> {
    let given = message.get_field(mask_field);
    let Some(given) = given.as_message() else {
        return Ok(());
    };
    let already = given
        .get_field_by_name("paths")
        .is_some_and(|p| p.as_list().is_some_and(|list| !list.is_empty()));
    if already {
        return Ok(());
    }
    let mut mask = DynamicMessage::new(given.descriptor());
    let invalid = |err: prost_reflect::SetFieldError| TranscodeError::InvalidField {
        field: mask_field.name().to_owned(),
        reason: err.to_string(),
    };
    mask.try_set_field_by_name(
        "paths",
        ProtoValue::List(paths.into_iter().map(ProtoValue::String).collect()),
    )
    .map_err(invalid)?;
    message
        .try_set_field(mask_field, ProtoValue::Message(mask))
        .map_err(invalid)
}
