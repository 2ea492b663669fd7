//! An HTTP request (path bindings, query string, body) into the method's request message.

use crate::well_known::is_well_known;

use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Map, Value};

use super::body::{check_field_names, deserialize, insert_at, object_mut, parse_body};
use super::error::TranscodeError;
use super::fields::{find_field, json_type, leaf_value, resolve, Source};
use super::options::{BodyRule, JsonOptions, RequestParts};
use super::query::query_values;
use super::update_mask::{fill_update_mask, update_mask_paths};

/// Builds the request message of type `input` from the parts of an HTTP request, by the rules in
/// the [module documentation](self).
///
/// # Errors
///
/// A [`TranscodeError`] naming the field (or the JSON position) that is wrong.
pub(crate) fn request_message(
    input: &MessageDescriptor,
    parts: &RequestParts<'_>,
    options: &JsonOptions,
) -> Result<DynamicMessage, TranscodeError> {
    let bindings = parts
        .path_bindings
        .iter()
        .map(|(path, raw)| {
            let path = resolve(input, path.iter().map(String::as_str))?;
            let value = leaf_value(&path, Source::Path, std::slice::from_ref(raw), options)?;
            Ok((path, value))
        })
        .collect::<Result<Vec<_>, TranscodeError>>()?;

    let blank = parts
        .body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let mut root = Value::Object(Map::new());
    let mut body_field = None;
    let mut mask = None;
    match parts.body_rule {
        BodyRule::None => {
            if !blank {
                return Err(TranscodeError::UnexpectedBody);
            }
        }
        BodyRule::Whole => {
            if !blank {
                root = parse_body(parts.body, "")?;
                check_field_names(input, &root, "")?;
                if !root.is_object() && !is_well_known(input) {
                    return Err(TranscodeError::InvalidBody {
                        reason: format!(
                            "expected a JSON object for {}, got {}",
                            input.full_name(),
                            json_type(&root)
                        ),
                    });
                }
            }
        }
        BodyRule::Field(name) => {
            let field = find_field(input, name).ok_or_else(|| TranscodeError::InvalidField {
                field: name.clone(),
                reason: format!(
                    "the route's body field is not a field of {}",
                    input.full_name()
                ),
            })?;
            if !blank {
                let value = parse_body(parts.body, name)?;
                if let prost_reflect::Kind::Message(message) = field.kind() {
                    if !field.is_list() && !field.is_map() {
                        check_field_names(&message, &value, name)?;
                    }
                }
                if parts.fill_update_mask {
                    mask = update_mask_paths(input, &field, &value, options)?;
                }
                object_mut(&mut root, "")?.insert(field.name().to_owned(), value);
            }
            body_field = Some(field);
        }
    }

    if let Some(query) = parts
        .query
        .filter(|q| !q.trim_start_matches('?').is_empty())
    {
        if *parts.body_rule == BodyRule::Whole {
            tracing::debug!(
                "query string ignored: the route's body is \"*\", so every field is in the body"
            );
        } else {
            for (path, value) in
                query_values(input, query, &bindings, body_field.as_ref(), options)?
            {
                insert_at(&mut root, &path.fields, value)?;
            }
        }
    }
    for (path, value) in bindings {
        insert_at(&mut root, &path.fields, value)?;
    }

    if root.as_object().is_some_and(Map::is_empty) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    let mut message = deserialize(input, &root, options.allow_unknown_fields)?;
    if let Some((mask_field, paths)) = mask {
        fill_update_mask(&mut message, &mask_field, paths)?;
    }
    Ok(message)
}
