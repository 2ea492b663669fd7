//! A response message (or its `response_body` field) as compact JSON.

use prost_reflect::{DynamicMessage, Kind, ReflectMessage, SerializeOptions, Value as ProtoValue};
use serde_json::Value;

use super::error::TranscodeError;
use super::fields::find_field;
use super::options::JsonOptions;

/// Writes `message` as compact JSON; with `response_body` (a top-level field name; empty means
/// none) only that field's value (a message, an array, a map, a scalar; its default if unset).
///
/// # Errors
///
/// [`TranscodeError::Response`] if `response_body` names no field of the message, or if the
/// message cannot be serialized.
pub(crate) fn response_json(
    message: &DynamicMessage,
    response_body: Option<&str>,
    options: &JsonOptions,
) -> Result<Vec<u8>, TranscodeError> {
    let serialize = SerializeOptions::new()
        .use_proto_field_name(options.use_proto_names)
        .skip_default_fields(!options.emit_defaults)
        .stringify_64_bit_integers(true)
        .use_enum_numbers(false);
    let Some(name) = response_body.filter(|name| !name.is_empty()) else {
        return to_json_bytes(message, &serialize);
    };
    let descriptor = message.descriptor();
    let field = find_field(&descriptor, name).ok_or_else(|| TranscodeError::Response {
        reason: format!(
            "the route's response_body `{name}` is not a field of {}",
            descriptor.full_name()
        ),
    })?;
    let value = message.get_field(&field);
    let mismatch = || TranscodeError::Response {
        reason: format!("field `{name}` holds a value of the wrong type"),
    };
    // Messages (alone, in lists, in maps) are serialized one by one, with the options as given.
    match value.as_ref() {
        ProtoValue::Message(inner) => return to_json_bytes(inner, &serialize),
        ProtoValue::List(items) if matches!(field.kind(), Kind::Message(_)) => {
            let mut out = b"[".to_vec();
            for (i, item) in items.iter().enumerate() {
                let ProtoValue::Message(item) = item else {
                    return Err(mismatch());
                };
                if i > 0 {
                    out.push(b',');
                }
                out.extend(to_json_bytes(item, &serialize)?);
            }
            out.push(b']');
            return Ok(out);
        }
        ProtoValue::Map(entries)
            if field.kind().as_message().is_some_and(|entry| {
                matches!(entry.map_entry_value_field().kind(), Kind::Message(_))
            }) =>
        {
            let mut sorted: Vec<(String, &ProtoValue)> = entries
                .iter()
                .map(|(key, value)| (map_key_text(key), value))
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = b"{".to_vec();
            for (i, (key, value)) in sorted.into_iter().enumerate() {
                let ProtoValue::Message(value) = value else {
                    return Err(mismatch());
                };
                if i > 0 {
                    out.push(b',');
                }
                out.extend(Value::String(key).to_string().into_bytes());
                out.push(b':');
                out.extend(to_json_bytes(value, &serialize)?);
            }
            out.push(b'}');
            return Ok(out);
        }
        _ => {}
    }
    // Scalars, and lists and maps of them: serialize a message holding that field alone (default
    // values left out, so that it is the only entry) and keep the value.
    let key = if options.use_proto_names {
        field.name()
    } else {
        field.json_name()
    };
    let mut alone = DynamicMessage::new(descriptor);
    alone
        .try_set_field(&field, value.into_owned())
        .map_err(|err| TranscodeError::Response {
            reason: err.to_string(),
        })?;
    if let Some(json) = sole_entry(&alone, key, &serialize.clone().skip_default_fields(true))? {
        return Ok(json);
    }
    // Left out as a default value.
    if field.is_list() {
        return Ok(b"[]".to_vec());
    }
    if field.is_map() {
        return Ok(b"{}".to_vec());
    }
    let every = alone
        .serialize_with_options(
            serde_json::value::Serializer,
            &serialize.skip_default_fields(false),
        )
        .map_err(|err| TranscodeError::Response {
            reason: err.to_string(),
        })?;
    every
        .get(key)
        .map(|value| value.to_string().into_bytes())
        .ok_or_else(|| TranscodeError::Response {
            reason: format!("field `{name}` was not serialized"),
        })
}

/// A map key as the JSON object key the proto3 JSON mapping writes.
pub(super) fn map_key_text(key: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

pub(super) fn to_json_bytes(
    message: &DynamicMessage,
    options: &SerializeOptions,
) -> Result<Vec<u8>, TranscodeError> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut serializer, options)
        .map_err(|err| TranscodeError::Response {
            reason: err.to_string(),
        })?;
    Ok(out)
}

/// The JSON of the only entry (`key`) of `alone` serialized with `options`, or `None` if it was
/// left out. (Serialized straight to text, not through `serde_json::Value`, so that 32-bit floats
/// keep their short form.)
pub(super) fn sole_entry(
    alone: &DynamicMessage,
    key: &str,
    options: &SerializeOptions,
) -> Result<Option<Vec<u8>>, TranscodeError> {
    let json = to_json_bytes(alone, options)?;
    if json == b"{}" {
        return Ok(None);
    }
    let prefix = format!("{{{}:", Value::String(key.to_owned()));
    json.strip_prefix(prefix.as_bytes())
        .and_then(|rest| rest.strip_suffix(b"}"))
        .map(|value| Some(value.to_vec()))
        .ok_or_else(|| TranscodeError::Response {
            reason: format!("unexpected serialization of field `{key}`"),
        })
}
