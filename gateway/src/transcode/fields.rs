//! Fields by path (`a.b.c`, proto or JSON names) in a request message, and the values a path
//! binding or a query parameter gives them (read as text by the field's type).

use crate::well_known::{has_text_form, is_well_known, WellKnown};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use protomesh::status::echo;
use serde_json::Value;

use super::error::TranscodeError;
use super::options::JsonOptions;

/// A field path resolved against the request message.
#[derive(Debug, Clone)]
pub(super) struct FieldPath {
    /// The fields, from the top of the request message.
    pub(super) fields: Vec<FieldDescriptor>,
    /// Their proto names, joined by dots.
    pub(super) dotted: String,
}

impl FieldPath {
    fn leaf(&self) -> Option<&FieldDescriptor> {
        self.fields.last()
    }
}

/// Where a value given as text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Path,
    Query,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Self::Path => "the URL path",
            Self::Query => "query parameters",
        }
    }
}

/// A field of `message` by JSON name or proto name (JSON name first, as prost-reflect reads).
pub(super) fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_json_name(name)
        .or_else(|| message.get_field_by_name(name))
}

pub(super) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Follows `segments` (proto or JSON names) from `input`: every field but the last must be a
/// singular message field (not a map, not a well-known type).
pub(super) fn resolve<'s>(
    input: &MessageDescriptor,
    segments: impl IntoIterator<Item = &'s str>,
) -> Result<FieldPath, TranscodeError> {
    let mut message = input.clone();
    let mut fields = Vec::new();
    let mut dotted = String::new();
    let mut segments = segments.into_iter().peekable();
    if segments.peek().is_none() {
        return Err(TranscodeError::UnknownField {
            field: String::new(),
        });
    }
    while let Some(segment) = segments.next() {
        let field = find_field(&message, segment).ok_or_else(|| TranscodeError::UnknownField {
            field: join(&dotted, segment),
        })?;
        dotted = join(&dotted, field.name());
        if segments.peek().is_some() {
            message = container(&field).map_err(|reason| TranscodeError::InvalidField {
                field: dotted.clone(),
                reason,
            })?;
        }
        fields.push(field);
    }
    Ok(FieldPath { fields, dotted })
}

/// The message type of `field` if a field path can go on through it.
pub(super) fn container(field: &FieldDescriptor) -> Result<MessageDescriptor, String> {
    if field.is_map() {
        return Err("a map field cannot be followed by a sub-field name (unsupported)".to_owned());
    }
    if field.is_list() {
        return Err(
            "a repeated field cannot be followed by a sub-field name: its elements cannot be \
             addressed"
                .to_owned(),
        );
    }
    match field.kind() {
        Kind::Message(message) if is_well_known(&message) => Err(format!(
            "a {} is given whole, in its JSON form; its fields cannot be set one by one",
            message.full_name()
        )),
        Kind::Message(message) => Ok(message),
        kind => Err(format!(
            "not a message (it is {}), so it has no sub-fields",
            kind_name(&kind)
        )),
    }
}

pub(super) fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "a double".to_owned(),
        Kind::Float => "a float".to_owned(),
        Kind::Int32 => "an int32".to_owned(),
        Kind::Int64 => "an int64".to_owned(),
        Kind::Uint32 => "a uint32".to_owned(),
        Kind::Uint64 => "a uint64".to_owned(),
        Kind::Sint32 => "a sint32".to_owned(),
        Kind::Sint64 => "a sint64".to_owned(),
        Kind::Fixed32 => "a fixed32".to_owned(),
        Kind::Fixed64 => "a fixed64".to_owned(),
        Kind::Sfixed32 => "an sfixed32".to_owned(),
        Kind::Sfixed64 => "an sfixed64".to_owned(),
        Kind::Bool => "a bool".to_owned(),
        Kind::String => "a string".to_owned(),
        Kind::Bytes => "bytes".to_owned(),
        Kind::Message(message) => format!("a {}", message.full_name()),
        Kind::Enum(enumeration) => format!("an enum {}", enumeration.full_name()),
    }
}

// ---------------------------------------------------------------------------------------------
// Text values (path and query) into JSON values
/// The JSON value for the field at `path` given `raws` (one per occurrence) from `source`.
pub(super) fn leaf_value(
    path: &FieldPath,
    source: Source,
    raws: &[String],
    options: &JsonOptions,
) -> Result<Value, TranscodeError> {
    let Some(field) = path.leaf() else {
        return Err(TranscodeError::UnknownField {
            field: String::new(),
        });
    };
    let invalid = |field: String, reason: String| TranscodeError::InvalidField { field, reason };
    if field.is_map() {
        return Err(invalid(
            path.dotted.clone(),
            format!(
                "map fields cannot be set from {} (unsupported)",
                source.describe()
            ),
        ));
    }
    if field.is_list() && source == Source::Path {
        return Err(invalid(
            path.dotted.clone(),
            "repeated fields cannot be bound to the URL path".to_owned(),
        ));
    }
    let kind = field.kind();
    if let Kind::Message(message) = &kind {
        if !has_text_form(message) {
            let reason = if is_well_known(message) {
                format!(
                    "a {} cannot be set from {}",
                    message.full_name(),
                    source.describe()
                )
            } else if field.is_list() {
                "repeated message fields cannot be set from query parameters".to_owned()
            } else if source == Source::Path {
                format!(
                    "a message ({}) cannot be bound to the URL path",
                    message.full_name()
                )
            } else {
                format!(
                    "a message ({}) is set one field at a time, as `{}.<field>=...`",
                    message.full_name(),
                    path.dotted
                )
            };
            return Err(invalid(path.dotted.clone(), reason));
        }
    }
    let allow_unknown = options.allow_unknown_fields;
    if field.is_list() {
        return raws
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                text_to_json(&kind, raw, allow_unknown)
                    .map_err(|reason| invalid(format!("{}[{i}]", path.dotted), reason))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    match raws {
        [raw] => text_to_json(&kind, raw, allow_unknown)
            .map_err(|reason| invalid(path.dotted.clone(), reason)),
        _ => Err(invalid(
            path.dotted.clone(),
            format!("given {} times, but it is not a repeated field", raws.len()),
        )),
    }
}

/// The JSON value for `raw` read as a value of `kind`; the error is the reason.
pub(super) fn text_to_json(kind: &Kind, raw: &str, allow_unknown: bool) -> Result<Value, String> {
    fn integer<T>(raw: &str, what: &str) -> Result<Value, String>
    where
        T: std::str::FromStr + Into<Value>,
    {
        raw.parse::<T>()
            .map(Into::into)
            .map_err(|_| format!("expected {what}, got {:?}", echo(raw)))
    }
    match kind {
        Kind::String => Ok(Value::String(raw.to_owned())),
        Kind::Bool => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {:?}", echo(raw))),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => integer::<i32>(raw, "a 32-bit integer"),
        Kind::Uint32 | Kind::Fixed32 => integer::<u32>(raw, "a 32-bit unsigned integer"),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => integer::<i64>(raw, "a 64-bit integer"),
        Kind::Uint64 | Kind::Fixed64 => integer::<u64>(raw, "a 64-bit unsigned integer"),
        Kind::Double => float(raw, f64::MAX, "a number"),
        Kind::Float => float(raw, f64::from(f32::MAX), "a 32-bit float"),
        // Base64 has no spaces: one here is a `+` that an unencoded query string turned into one.
        // prost-reflect checks the base64 itself (standard or URL-safe, padded or not).
        Kind::Bytes => Ok(Value::String(raw.replace(' ', "+"))),
        Kind::Enum(enumeration) => {
            if let Ok(number) = raw.parse::<i32>() {
                return Ok(number.into());
            }
            if enumeration.get_value_by_name(raw).is_some() || allow_unknown {
                return Ok(Value::String(raw.to_owned()));
            }
            let mut names: Vec<String> = enumeration
                .values()
                .map(|v| v.name().to_owned())
                .take(9)
                .collect();
            if names.len() == 9 {
                names[8] = "…".to_owned();
            }
            Err(format!(
                "{:?} is not a value of enum {} (expected a number or one of {})",
                echo(raw),
                enumeration.full_name(),
                names.join(", ")
            ))
        }
        Kind::Message(message) => match WellKnown::of(message) {
            Some(WellKnown::Timestamp | WellKnown::Duration | WellKnown::FieldMask) => {
                Ok(Value::String(raw.to_owned()))
            }
            Some(WellKnown::Value) => {
                Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())))
            }
            Some(WellKnown::Wrapper(inner)) => text_to_json(&inner, raw, allow_unknown),
            _ => Err(format!("a {} cannot be given as text", message.full_name())),
        },
    }
}

/// A float given as text: a decimal (in `±limit`), `NaN`, `Infinity` or `-Infinity`.
pub(super) fn float(raw: &str, limit: f64, what: &str) -> Result<Value, String> {
    if matches!(raw, "NaN" | "Infinity" | "-Infinity") {
        return Ok(Value::String(raw.to_owned()));
    }
    // Rust also reads "inf", "nan", "infinity" in any case: the JSON mapping does not.
    let number = raw
        .parse::<f64>()
        .ok()
        .filter(|_| raw.bytes().any(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!(
                "expected {what} (or NaN, Infinity, -Infinity), got {:?}",
                echo(raw)
            )
        })?;
    if !number.is_finite() || number.abs() > limit {
        return Err(format!("{} is out of range for {what}", echo(raw)));
    }
    serde_json::Number::from_f64(number)
        .map(Value::Number)
        .ok_or_else(|| format!("{} is not a finite number", echo(raw)))
}

pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
