//! Transcoding between HTTP/JSON and protobuf messages for `google.api.http` routes, by the rules
//! of `proto/google/api/http.proto` and the [proto3 JSON mapping].
//!
//! [`request_message`] builds a method's request message from the parts of an HTTP request: the
//! values the path template bound ([`RequestParts::path_bindings`]), the query string and the
//! body, as the route's [`BodyRule`] says:
//!
//! - [`BodyRule::Whole`] (`body: "*"`): the JSON body is the whole request message (an empty body
//!   is an empty message); path-bound fields are then set on top of it (the path wins). Every
//!   field not bound by the path is in the body, so the query string is **ignored** (as
//!   grpc-gateway does).
//! - [`BodyRule::Field`] (`body: "field"`): the JSON body is the value of that top-level field (a
//!   message, a JSON array for a repeated field, a scalar; an empty body leaves it unset); the
//!   other fields come from the path and the query string.
//! - [`BodyRule::None`] (no `body`): a non-empty body is an error
//!   ([`TranscodeError::UnexpectedBody`]); the fields come from the path and the query string.
//!
//! A body of only JSON whitespace counts as empty. A body whose objects repeat a key is refused
//! ([`TranscodeError::DuplicateKey`], naming the key's path), never read as one of its values.
//!
//! Query parameters name fields by their paths in the request message (`revision=2`,
//! `sub.subfield=foo`; each segment by its proto name or its lowerCamelCase JSON name); a repeated
//! field is given by repeating the parameter (`tag=a&tag=b`). Keys and values are percent-decoded,
//! `+` meaning a space. A value (and a path-bound value alike) is read by the type of its field:
//! enums by name or number, bools `true`/`false`, integers in decimal (64-bit ones too), floats
//! as decimals or `NaN`, `Infinity`, `-Infinity`, bytes as base64 (standard or URL-safe, padded or
//! not; a space is read as the `+` an unencoded query turned into one), and the well-known types
//! in their JSON string forms (`Timestamp` in RFC 3339, `Duration` as `1.5s`, `FieldMask` as
//! `a,b.c`, wrappers as their scalar, `Value` as a JSON text or else a string). What the query
//! string cannot set is an error naming the field: a message field without a sub-path, a map field
//! (unsupported), a repeated message field, the sub-fields of a well-known type, `Struct`,
//! `ListValue`, `Any`, `Empty`; so is a non-repeated field given twice. A parameter that names no
//! field is an error ([`TranscodeError::UnknownField`]) unless
//! [`JsonOptions::allow_unknown_fields`], in which case it is skipped. A parameter for a field the
//! path binds, or for (a field inside) the body field, is ignored: the path and the body win.
//!
//! Path bindings must name existing, non-repeated, non-map fields of a scalar or enum type (or a
//! well-known type with a scalar JSON form); intermediate messages are created (`a.b.c`).
//!
//! With [`RequestParts::fill_update_mask`] (a PATCH), a rule `body: "<field>"` whose field is a
//! message, and a request message with a top-level `google.protobuf.FieldMask update_mask` that the
//! query string left empty, `update_mask` is filled with the paths of the keys present in the body
//! object (proto names, sorted; nested objects give dotted paths, except that maps, repeated
//! fields, well-known types and `null` or empty objects are leaves). Output-only fields
//! (`(google.api.field_behavior) = OUTPUT_ONLY`) are left out: sent back as read, they are
//! ignored.
//!
//! [`response_json`] writes a response message (or its `response_body` field alone) as compact
//! JSON: 64-bit integers as strings, enums by name, bytes in standard base64.
//!
//! Every error names what is wrong: the dotted path of the field (proto names, `[i]` for list
//! elements, `["key"]` for map entries), or the line and column of malformed JSON.
//!
//! [proto3 JSON mapping]: https://protobuf.dev/programming-guides/json/

use crate::well_known::{has_text_form, is_well_known, WellKnown};
use std::collections::HashMap;

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value as ProtoValue,
};
use protomesh::status::{echo, shorten};
use serde_json::{Map, Value};

mod strict_json;

/// Where the request message is in the HTTP body: the `body` of a `google.api.http` rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum BodyRule {
    /// No `body`: the request has no body; every field the path does not bind is a query
    /// parameter.
    #[default]
    None,
    /// `body: "*"`: the body is the whole request message (fields bound by the path excepted).
    Whole,
    /// `body: "<field>"`: the body is the value of this top-level field (its proto name).
    Field(String),
}

/// How JSON is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsonOptions {
    /// Write fields by their proto names (`display_name`) instead of their lowerCamelCase JSON
    /// names (`displayName`). Reading always accepts both.
    pub use_proto_names: bool,
    /// Write fields that have their default value (`0`, `""`, `[]`, ...) instead of leaving them
    /// out. Unset message fields are still left out.
    pub emit_defaults: bool,
    /// Skip unknown fields (in the body and the query string) and unknown enum value names instead
    /// of rejecting them.
    pub allow_unknown_fields: bool,
}

/// The parts of an HTTP request that make a request message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestParts<'a> {
    /// The values the path template bound: each a field path (proto names, from the top of the
    /// request message) and its percent-decoded value.
    pub path_bindings: &'a [(Vec<String>, String)],
    /// The raw (percent-encoded) query string, without the `?` (a leading `?` is tolerated).
    pub query: Option<&'a str>,
    /// The request body.
    pub body: &'a [u8],
    /// The route's body rule.
    pub body_rule: &'a BodyRule,
    /// Fill an empty `update_mask` from the keys of the body (set for PATCH requests).
    pub fill_update_mask: bool,
}

/// Most characters of an error's reason in a message: reasons may quote what the client sent
/// (serde_json's do), so they are shortened like any echoed input, with room for the longer
/// explanations (the values of an enum).
const MAX_REASON_CHARS: usize = 512;

/// Why an HTTP request could not become a request message, or a response message could not
/// become JSON. Its messages shorten the client's input they quote
/// ([`protomesh::status::echo`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TranscodeError {
    /// The body is not valid JSON.
    #[error(
        "the request body is not valid JSON (line {line}, column {column}): {}",
        shorten(reason, MAX_REASON_CHARS)
    )]
    MalformedJson {
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// An object in the body repeats a key.
    #[error("the request body repeats the key `{}`", echo(field))]
    DuplicateKey {
        /// The key's dotted path in the request message (the body field first, `[i]` for array
        /// elements).
        field: String,
    },
    /// The query string cannot be decoded.
    #[error("malformed query string: {}", shorten(reason, MAX_REASON_CHARS))]
    MalformedQuery {
        /// What is wrong.
        reason: String,
    },
    /// The body as a whole does not fit the request message (it is not a JSON object, say).
    #[error(
        "the request body does not fit the request message: {}",
        shorten(reason, MAX_REASON_CHARS)
    )]
    InvalidBody {
        /// What is wrong.
        reason: String,
    },
    /// A field's value is wrong, or the field cannot be given the way it was.
    #[error("field `{}`: {}", echo(field), shorten(reason, MAX_REASON_CHARS))]
    InvalidField {
        /// The field's dotted path in the request message (proto names, `[i]` for list elements,
        /// `["key"]` for map entries).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The body or the query string names a field the request message does not have.
    #[error("unknown field `{}`", echo(field))]
    UnknownField {
        /// The field's dotted path, as far as it could be followed.
        field: String,
    },
    /// The method's route takes no body, but the request has one.
    #[error("this method takes no request body, but one was sent")]
    UnexpectedBody,
    /// The response message cannot be written as JSON (a server-side problem).
    #[error(
        "cannot write the response as JSON: {}",
        shorten(reason, MAX_REASON_CHARS)
    )]
    Response {
        /// What is wrong.
        reason: String,
    },
}

impl TranscodeError {
    /// The dotted path of the field the error is about, if it is about one (for a
    /// `google.rpc.BadRequest` field violation); a path longer than
    /// [`protomesh::status::MAX_ECHO_CHARS`] is shortened.
    pub(crate) fn field(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Self::InvalidField { field, .. }
            | Self::UnknownField { field }
            | Self::DuplicateKey { field } => Some(echo(field)),
            _ => None,
        }
    }

    /// Whether the request is to blame (HTTP 400, `INVALID_ARGUMENT`); `false` for
    /// [`TranscodeError::Response`], a server-side error.
    pub(crate) fn is_client_error(&self) -> bool {
        !matches!(self, Self::Response { .. })
    }
}

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
fn map_key_text(key: &prost_reflect::MapKey) -> String {
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

// ---------------------------------------------------------------------------------------------
// Field paths

/// A field path resolved against the request message.
#[derive(Debug, Clone)]
struct FieldPath {
    /// The fields, from the top of the request message.
    fields: Vec<FieldDescriptor>,
    /// Their proto names, joined by dots.
    dotted: String,
}

impl FieldPath {
    fn leaf(&self) -> Option<&FieldDescriptor> {
        self.fields.last()
    }
}

/// Where a value given as text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
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
fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_json_name(name)
        .or_else(|| message.get_field_by_name(name))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Follows `segments` (proto or JSON names) from `input`: every field but the last must be a
/// singular message field (not a map, not a well-known type).
fn resolve<'s>(
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
fn container(field: &FieldDescriptor) -> Result<MessageDescriptor, String> {
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

// ---------------------------------------------------------------------------------------------
// Text values (path and query) into JSON values

/// The JSON value for the field at `path` given `raws` (one per occurrence) from `source`.
fn leaf_value(
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
fn text_to_json(kind: &Kind, raw: &str, allow_unknown: bool) -> Result<Value, String> {
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
fn float(raw: &str, limit: f64, what: &str) -> Result<Value, String> {
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

// ---------------------------------------------------------------------------------------------
// The query string

/// The query parameters as (field path, JSON value), grouped by field in order of first
/// appearance; parameters for path-bound fields and the body field are left out.
fn query_values(
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
fn decode_component(raw: &str) -> Result<String, TranscodeError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| TranscodeError::MalformedQuery {
            reason: format!("{:?} is not UTF-8 once percent-decoded", echo(raw)),
        })
}

// ---------------------------------------------------------------------------------------------
// Building the JSON request

/// The body as JSON, refusing repeated keys (their paths start with `prefix`).
fn parse_body(body: &[u8], prefix: &str) -> Result<Value, TranscodeError> {
    strict_json::from_slice(body, prefix).map_err(|err| {
        let err = match err {
            strict_json::StrictJsonError::DuplicateKey(field) => {
                return TranscodeError::DuplicateKey { field }
            }
            strict_json::StrictJsonError::Syntax(err) => err,
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
fn check_field_names(
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

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn kind_name(kind: &Kind) -> String {
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

/// `value` as a JSON object, `null` becoming an empty one; `path` names it in the error.
fn object_mut<'v>(
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
fn insert_at(
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
fn take_field_entries(object: &mut Map<String, Value>, field: &FieldDescriptor) -> Option<Value> {
    let by_name = object.remove(field.name());
    let by_json = object.remove(field.json_name());
    by_json.or(by_name)
}

// ---------------------------------------------------------------------------------------------
// Deserializing, with errors that name the field

fn deserialize(
    input: &MessageDescriptor,
    root: &Value,
    allow_unknown: bool,
) -> Result<DynamicMessage, TranscodeError> {
    let options = DeserializeOptions::new().deny_unknown_fields(!allow_unknown);
    DynamicMessage::deserialize_with_options(input.clone(), root, &options).map_err(|err| {
        locate(input, root, "", &options, allow_unknown).unwrap_or_else(|| at_path("", &err))
    })
}

fn try_deserialize(
    message: &MessageDescriptor,
    value: &Value,
    options: &DeserializeOptions,
) -> Result<(), serde_json::Error> {
    DynamicMessage::deserialize_with_options(message.clone(), value, options).map(drop)
}

fn at_path(path: &str, err: &serde_json::Error) -> TranscodeError {
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
fn locate(
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
fn locate_in_field(
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

// ---------------------------------------------------------------------------------------------
// The PATCH update mask

/// The `update_mask` field and the paths for it, if the request qualifies: the body field is a
/// singular message, the request has a `google.protobuf.FieldMask update_mask` and the body is a
/// JSON object.
fn update_mask_paths(
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
fn collect_mask_paths(
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
fn fill_update_mask(
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

// ---------------------------------------------------------------------------------------------
// Responses

fn to_json_bytes(
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
fn sole_entry(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::OnceLock;

    use prost_reflect::DescriptorPool;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, MessageOptions, OneofDescriptorProto,
    };
    use serde_json::json;

    use super::*;

    // -----------------------------------------------------------------------------------------
    // Descriptors: a hand-built `testing.v1` file with every field kind, on top of the
    // well-known types of prost-reflect's global pool; and the mesh's own protos.

    fn field(name: &str, number: i32, kind: Type) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.to_owned()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(kind as i32),
            ..Default::default()
        }
    }

    fn typed(name: &str, number: i32, kind: Type, type_name: &str) -> FieldDescriptorProto {
        FieldDescriptorProto {
            type_name: Some(type_name.to_owned()),
            ..field(name, number, kind)
        }
    }

    fn message(name: &str, number: i32, type_name: &str) -> FieldDescriptorProto {
        typed(name, number, Type::Message, type_name)
    }

    fn repeated(mut field: FieldDescriptorProto) -> FieldDescriptorProto {
        field.label = Some(Label::Repeated as i32);
        field
    }

    fn in_oneof(mut field: FieldDescriptorProto, index: i32) -> FieldDescriptorProto {
        field.oneof_index = Some(index);
        field
    }

    fn map_entry(name: &str, key: Type, value: FieldDescriptorProto) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.to_owned()),
            field: vec![
                field("key", 1, key),
                FieldDescriptorProto {
                    name: Some("value".to_owned()),
                    number: Some(2),
                    ..value
                },
            ],
            options: Some(MessageOptions {
                map_entry: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn test_file() -> FileDescriptorProto {
        let inner = DescriptorProto {
            name: Some("Inner".to_owned()),
            field: vec![field("deep_value", 1, Type::String)],
            ..Default::default()
        };
        let nested = DescriptorProto {
            name: Some("Nested".to_owned()),
            field: vec![
                field("text", 1, Type::String),
                field("level", 2, Type::Int32),
                message("inner", 3, ".testing.v1.Inner"),
                repeated(message("attrs", 4, ".testing.v1.Nested.AttrsEntry")),
                message("at", 5, ".google.protobuf.Timestamp"),
                repeated(field("notes", 6, Type::String)),
            ],
            nested_type: vec![map_entry(
                "AttrsEntry",
                Type::String,
                field("value", 2, Type::String),
            )],
            ..Default::default()
        };
        let color = ".testing.v1.Color";
        let mut opt = in_oneof(field("opt", 29, Type::Int32), 1);
        opt.proto3_optional = Some(true);
        let everything = DescriptorProto {
            name: Some("Everything".to_owned()),
            field: vec![
                field("name", 1, Type::String),
                field("id", 2, Type::Int64),
                field("big", 3, Type::Uint64),
                field("small", 4, Type::Int32),
                field("count", 5, Type::Uint32),
                field("flag", 6, Type::Bool),
                field("ratio", 7, Type::Double),
                field("weight", 8, Type::Float),
                field("blob", 9, Type::Bytes),
                typed("color", 10, Type::Enum, color),
                message("nested", 11, ".testing.v1.Nested"),
                repeated(field("tags", 12, Type::String)),
                repeated(field("ids", 13, Type::Int64)),
                repeated(typed("colors", 14, Type::Enum, color)),
                repeated(message("labels", 15, ".testing.v1.Everything.LabelsEntry")),
                message("when", 16, ".google.protobuf.Timestamp"),
                message("timeout", 17, ".google.protobuf.Duration"),
                message("field_mask", 18, ".google.protobuf.FieldMask"),
                message("maybe_id", 19, ".google.protobuf.Int64Value"),
                message("maybe_name", 20, ".google.protobuf.StringValue"),
                message("extra", 21, ".google.protobuf.Struct"),
                repeated(message("items", 22, ".testing.v1.Nested")),
                in_oneof(field("left", 23, Type::String), 0),
                in_oneof(field("right", 24, Type::Int32), 0),
                field("signed", 25, Type::Sint64),
                message("maybe_flag", 26, ".google.protobuf.BoolValue"),
                repeated(field("blobs", 27, Type::Bytes)),
                message("dynamic", 28, ".google.protobuf.Value"),
                opt,
                field("display_name", 30, Type::String),
                repeated(message("by_id", 31, ".testing.v1.Everything.ByIdEntry")),
            ],
            nested_type: vec![
                map_entry("LabelsEntry", Type::String, field("value", 2, Type::Int32)),
                map_entry(
                    "ByIdEntry",
                    Type::Int64,
                    message("value", 2, ".testing.v1.Nested"),
                ),
            ],
            oneof_decl: vec![
                OneofDescriptorProto {
                    name: Some("choice".to_owned()),
                    ..Default::default()
                },
                OneofDescriptorProto {
                    name: Some("_opt".to_owned()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let update = DescriptorProto {
            name: Some("UpdateRequest".to_owned()),
            field: vec![
                message("resource", 1, ".testing.v1.Everything"),
                message("update_mask", 2, ".google.protobuf.FieldMask"),
                field("parent", 3, Type::String),
            ],
            ..Default::default()
        };
        let colors = EnumDescriptorProto {
            name: Some("Color".to_owned()),
            value: ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN"]
                .iter()
                .zip(0..)
                .map(|(name, number)| EnumValueDescriptorProto {
                    name: Some((*name).to_owned()),
                    number: Some(number),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        FileDescriptorProto {
            name: Some("testing/v1/everything.proto".to_owned()),
            package: Some("testing.v1".to_owned()),
            dependency: ["timestamp", "duration", "field_mask", "wrappers", "struct"]
                .iter()
                .map(|name| format!("google/protobuf/{name}.proto"))
                .collect(),
            message_type: vec![inner, nested, everything, update],
            enum_type: vec![colors],
            syntax: Some("proto3".to_owned()),
            ..Default::default()
        }
    }

    fn descriptor(full_name: &str) -> MessageDescriptor {
        static TEST: OnceLock<DescriptorPool> = OnceLock::new();
        static MESH: OnceLock<DescriptorPool> = OnceLock::new();
        let test = TEST.get_or_init(|| {
            let mut pool = DescriptorPool::global();
            pool.add_file_descriptor_proto(test_file())
                .expect("the test file is valid");
            pool
        });
        let mesh = MESH.get_or_init(|| {
            DescriptorPool::decode(protomesh::proto::FILE_DESCRIPTOR_SET).expect("mesh protos")
        });
        test.get_message_by_name(full_name)
            .or_else(|| mesh.get_message_by_name(full_name))
            .unwrap_or_else(|| panic!("no message {full_name}"))
    }

    const EVERYTHING: &str = "testing.v1.Everything";
    const UPDATE: &str = "testing.v1.UpdateRequest";

    // -----------------------------------------------------------------------------------------
    // A request, built step by step.

    #[derive(Debug, Clone)]
    struct Req {
        message: &'static str,
        rule: BodyRule,
        bindings: Vec<(Vec<String>, String)>,
        query: Option<&'static str>,
        body: Vec<u8>,
        patch: bool,
        options: JsonOptions,
    }

    fn req(message: &'static str, rule: BodyRule) -> Req {
        Req {
            message,
            rule,
            bindings: Vec::new(),
            query: None,
            body: Vec::new(),
            patch: false,
            options: JsonOptions::default(),
        }
    }

    fn get() -> Req {
        req(EVERYTHING, BodyRule::None)
    }

    fn star(body: &str) -> Req {
        req(EVERYTHING, BodyRule::Whole).body(body)
    }

    fn body_field(message: &'static str, field: &str, body: &str) -> Req {
        req(message, BodyRule::Field(field.to_owned())).body(body)
    }

    impl Req {
        fn bind(mut self, path: &str, value: &str) -> Self {
            self.bindings.push((
                path.split('.').map(str::to_owned).collect(),
                value.to_owned(),
            ));
            self
        }
        fn query(mut self, query: &'static str) -> Self {
            self.query = Some(query);
            self
        }
        fn body(mut self, body: &str) -> Self {
            self.body = body.as_bytes().to_vec();
            self
        }
        fn patch(mut self) -> Self {
            self.patch = true;
            self
        }
        fn allow_unknown(mut self) -> Self {
            self.options.allow_unknown_fields = true;
            self
        }
        fn run(&self) -> Result<DynamicMessage, TranscodeError> {
            let parts = RequestParts {
                path_bindings: &self.bindings,
                query: self.query,
                body: &self.body,
                body_rule: &self.rule,
                fill_update_mask: self.patch,
            };
            request_message(&descriptor(self.message), &parts, &self.options)
        }
    }

    /// The message as JSON with proto names, for comparisons.
    fn as_json(message: &DynamicMessage) -> serde_json::Value {
        let options = JsonOptions {
            use_proto_names: true,
            ..JsonOptions::default()
        };
        serde_json::from_slice(&response_json(message, None, &options).unwrap()).unwrap()
    }

    // -----------------------------------------------------------------------------------------
    // Requests that work

    #[test]
    fn transcode_requests() {
        let cases: Vec<(&str, Req, serde_json::Value)> = vec![
            // Body "*".
            (
                "star: the mesh's ScoreRequest",
                req("protomesh.priority.v1.ScoreRequest", BodyRule::Whole)
                    .body(r#"{"title":"ship it","urgency":9,"impact":8}"#),
                json!({"title": "ship it", "urgency": 9, "impact": 8}),
            ),
            ("star: empty body", star(""), json!({})),
            ("star: blank body", star(" \n\t\r "), json!({})),
            ("star: empty object", star("{}"), json!({})),
            (
                "star: JSON and proto names, every kind",
                star(
                    r#"{"name":"n","displayName":"d","id":"-5","big":18446744073709551615,
                        "ratio":"NaN","blob":"aGk=","color":"COLOR_GREEN","tags":["a"],
                        "labels":{"k":1},"when":"2024-01-02T03:04:05Z","timeout":"1.5s",
                        "maybe_id":"7","extra":{"k":[1,"x"]},"items":[{"text":"t"}],
                        "by_id":{"3":{"level":2}},"opt":0,"nested":{"inner":{"deepValue":"v"}}}"#,
                ),
                json!({"name": "n", "display_name": "d", "id": "-5",
                       "big": "18446744073709551615", "ratio": "NaN", "blob": "aGk=",
                       "color": "COLOR_GREEN", "tags": ["a"], "labels": {"k": 1},
                       "when": "2024-01-02T03:04:05Z", "timeout": "1.500s", "maybe_id": "7",
                       "extra": {"k": [1.0, "x"]}, "items": [{"text": "t"}],
                       "by_id": {"3": {"level": 2}}, "opt": 0,
                       "nested": {"inner": {"deep_value": "v"}}}),
            ),
            (
                "star: the path wins over the body",
                star(r#"{"name":"from body","small":1}"#).bind("name", "from path"),
                json!({"name": "from path", "small": 1}),
            ),
            (
                "star: the path wins over a JSON-named body key",
                star(r#"{"displayName":"from body"}"#).bind("display_name", "from path"),
                json!({"display_name": "from path"}),
            ),
            (
                "star: a path binding goes inside a body object",
                star(r#"{"nested":{"text":"t"}}"#).bind("nested.inner.deep_value", "p"),
                json!({"nested": {"text": "t", "inner": {"deep_value": "p"}}}),
            ),
            (
                "star: the query string is ignored",
                star(r#"{"name":"b"}"#).query("name=q&nope=1&small=x"),
                json!({"name": "b"}),
            ),
            (
                "star: unknown body fields skipped when allowed",
                star(r#"{"name":"b","nope":{"x":1},"color":"COLOR_BLUE"}"#).allow_unknown(),
                json!({"name": "b"}),
            ),
            // Body "field".
            (
                "field: a message body, other fields from path and query",
                body_field(UPDATE, "resource", r#"{"name":"n","nested":{"level":2}}"#)
                    .bind("parent", "shelves/1")
                    .query("update_mask=name"),
                json!({"parent": "shelves/1", "update_mask": "name",
                       "resource": {"name": "n", "nested": {"level": 2}}}),
            ),
            (
                "field: the path binds inside the body field, and wins",
                body_field(UPDATE, "resource", r#"{"name":"body","small":3}"#)
                    .bind("resource.name", "shelves/1/books/2"),
                json!({"resource": {"name": "shelves/1/books/2", "small": 3}}),
            ),
            (
                "field: the path creates the body field when the body is empty",
                body_field(UPDATE, "resource", "").bind("resource.id", "12"),
                json!({"resource": {"id": "12"}}),
            ),
            (
                "field: a null body leaves the field unset",
                body_field(UPDATE, "resource", "null").bind("parent", "p"),
                json!({"parent": "p"}),
            ),
            (
                "field: a repeated field is a JSON array",
                body_field(EVERYTHING, "tags", r#"["a","b"]"#).query("name=x"),
                json!({"tags": ["a", "b"], "name": "x"}),
            ),
            (
                "field: a scalar body",
                body_field(EVERYTHING, "id", r#""42""#),
                json!({"id": "42"}),
            ),
            (
                "field: a scalar body, by JSON name",
                body_field(EVERYTHING, "displayName", r#""shown""#),
                json!({"display_name": "shown"}),
            ),
            (
                "field: query parameters for the body field are ignored",
                body_field(UPDATE, "resource", r#"{"name":"b"}"#)
                    .query("resource.name=q&resource.small=2&parent=p"),
                json!({"resource": {"name": "b"}, "parent": "p"}),
            ),
            // No body: query parameters and path bindings.
            ("none: nothing", get(), json!({})),
            ("none: blank body", get().body("\n"), json!({})),
            (
                "query: scalars of every kind",
                get().query(
                    "name=hello+world%21&id=-9007199254740993&big=18446744073709551615\
                     &small=-5&count=7&flag=true&ratio=2.5&weight=1.5&blob=aGk%3D\
                     &color=COLOR_RED&signed=-3&display_name=%E2%9C%93",
                ),
                json!({"name": "hello world!", "id": "-9007199254740993",
                       "big": "18446744073709551615", "small": -5, "count": 7,
                       "flag": true, "ratio": 2.5, "weight": 1.5, "blob": "aGk=",
                       "color": "COLOR_RED", "signed": "-3", "display_name": "✓"}),
            ),
            (
                "query: enum by number, bool false, float forms",
                get().query("color=2&flag=false&ratio=-Infinity&weight=Infinity"),
                json!({"color": "COLOR_GREEN", "ratio": "-Infinity", "weight": "Infinity"}),
            ),
            (
                "query: base64 URL-safe, unpadded, and a `+` turned into a space",
                get().query("blobs=-_8&blobs=+/8=&blobs=a+b%2Bcw=="),
                json!({"blobs": ["+/8=", "+/8=", "a+b+cw=="]}),
            ),
            (
                "query: repeated by repetition",
                get().query("tags=a&ids=1&tags=b&ids=2&colors=COLOR_RED&colors=2&tags="),
                json!({"tags": ["a", "b", ""], "ids": ["1", "2"],
                       "colors": ["COLOR_RED", "COLOR_GREEN"]}),
            ),
            (
                "query: nested by dotted names, proto or JSON names",
                get()
                    .query("nested.text=t&nested.inner.deep_value=v&nested.level=3&nested.notes=x"),
                json!({"nested": {"text": "t", "level": 3, "notes": ["x"],
                                  "inner": {"deep_value": "v"}}}),
            ),
            (
                "query: JSON names",
                get().query("displayName=d&nested.inner.deepValue=v&maybeId=4"),
                json!({"display_name": "d", "maybe_id": "4",
                       "nested": {"inner": {"deep_value": "v"}}}),
            ),
            (
                "query: percent-encoded keys, empty pairs, a leading `?`",
                get().query("?&nested%2Etext=t&&na%6De=n&"),
                json!({"nested": {"text": "t"}, "name": "n"}),
            ),
            (
                "query: well-known types in their JSON string forms",
                get().query(
                    "when=2024-01-02T03%3A04%3A05.5Z&timeout=1.5s&field_mask=a,b.c,fooBar\
                     &maybe_id=5&maybe_name=x&maybe_flag=false&nested.at=1970-01-01T00:00:01Z",
                ),
                json!({"when": "2024-01-02T03:04:05.500Z", "timeout": "1.500s",
                       "field_mask": "a,b.c,fooBar", "maybe_id": "5", "maybe_name": "x",
                       "maybe_flag": false, "nested": {"at": "1970-01-01T00:00:01Z"}}),
            ),
            (
                "query: google.protobuf.Value from JSON text, else a string",
                get().query("dynamic=%5B1%2C%22a%22%5D"),
                json!({"dynamic": [1.0, "a"]}),
            ),
            (
                "query: google.protobuf.Value from a bare word",
                get().query("dynamic=hello"),
                json!({"dynamic": "hello"}),
            ),
            (
                "query: oneof member and proto3 optional set to its default",
                get().query("right=0&opt=0"),
                json!({"right": 0, "opt": 0}),
            ),
            (
                "query: unknown parameters and enum names skipped when allowed",
                get()
                    .query(
                        "nope=1&nested.nope=2&name=n&color=COLOR_BLUE&colors=COLOR_BLUE&colors=1",
                    )
                    .allow_unknown(),
                json!({"name": "n", "colors": ["COLOR_RED"]}),
            ),
            (
                "query: a parameter for a path-bound field is ignored",
                get()
                    .bind("nested.text", "path")
                    .query("nested.text=query&nested.level=1"),
                json!({"nested": {"text": "path", "level": 1}}),
            ),
            (
                "path: values converted by field type, intermediates created",
                get()
                    .bind("id", "42")
                    .bind("color", "COLOR_GREEN")
                    .bind("flag", "true")
                    .bind("nested.inner.deep_value", "a/b c")
                    .bind("when", "2024-01-02T03:04:05Z")
                    .bind("maybe_id", "9"),
                json!({"id": "42", "color": "COLOR_GREEN", "flag": true,
                       "nested": {"inner": {"deep_value": "a/b c"}},
                       "when": "2024-01-02T03:04:05Z", "maybe_id": "9"}),
            ),
            (
                "path and query together",
                get()
                    .bind("name", "shelves/1")
                    .query("small=2&nested.text=t"),
                json!({"name": "shelves/1", "small": 2, "nested": {"text": "t"}}),
            ),
        ];
        for (name, request, expected) in cases {
            let message = request
                .run()
                .unwrap_or_else(|err| panic!("{name}: unexpected error: {err}"));
            assert_eq!(as_json(&message), expected, "{name}");
        }
    }

    #[test]
    fn transcode_special_floats() {
        let message = get().query("ratio=NaN&weight=-Infinity").run().unwrap();
        let ratio = message
            .get_field_by_name("ratio")
            .unwrap()
            .as_f64()
            .unwrap();
        let weight = message
            .get_field_by_name("weight")
            .unwrap()
            .as_f32()
            .unwrap();
        assert!(ratio.is_nan());
        assert_eq!(weight, f32::NEG_INFINITY);
    }

    // -----------------------------------------------------------------------------------------
    // Requests that fail, and how

    /// What an error must be: its variant, the field it names, and words of its message.
    #[derive(Debug, Clone, Copy)]
    enum Want {
        Json(usize, usize),
        Query,
        Body,
        Field(&'static str),
        Unknown(&'static str),
        Duplicate(&'static str),
        Unexpected,
    }

    #[test]
    fn transcode_request_errors() {
        use Want::*;
        let cases: Vec<(Req, Want, &str)> = vec![
            // Malformed JSON, with its position.
            (star(r#"{"name": }"#), Json(1, 10), "expected value"),
            (
                star("{\n  \"name\": \"x\",\n  oops\n}"),
                Json(3, 3),
                "key must be a string",
            ),
            (star("{} x"), Json(1, 4), "trailing characters"),
            (star(r#"{"name": "x""#), Json(1, 12), "EOF"),
            (
                body_field(UPDATE, "resource", "[1,"),
                Json(1, 3),
                "EOF while parsing",
            ),
            // Repeated keys, by their paths (proto or JSON names, as sent).
            (
                star(r#"{"name":"a","name":"b"}"#),
                Duplicate("name"),
                "repeats the key `name`",
            ),
            (
                star(r#"{"items":[{},{"level":1,"level":2}]}"#),
                Duplicate("items[1].level"),
                "",
            ),
            (
                body_field(UPDATE, "resource", r#"{"name":"a","name":"a"}"#),
                Duplicate("resource.name"),
                "",
            ),
            // One field under its JSON and its proto name, at the top and inside a body field
            // (the key named is the later in key order).
            (
                star(r#"{"byId":{},"by_id":{}}"#),
                Duplicate("by_id"),
                "repeats the key `by_id`",
            ),
            (
                body_field(UPDATE, "resource", r#"{"by_id":{},"byId":{}}"#),
                Duplicate("resource.by_id"),
                "",
            ),
            // The body as a whole.
            (
                star("[1]"),
                Body,
                "expected a JSON object for testing.v1.Everything, got an array",
            ),
            (star("\"x\""), Body, "got a string"),
            (get().body("{}"), Unexpected, "takes no request body"),
            (get().body("x"), Unexpected, "takes no request body"),
            // Body values, located.
            (star(r#"{"small":"x"}"#), Field("small"), "invalid digit"),
            (star(r#"{"small":1.5}"#), Field("small"), "integer"),
            (star(r#"{"id":"1e3x"}"#), Field("id"), "invalid digit"),
            (star(r#"{"flag":"true"}"#), Field("flag"), "boolean"),
            (star(r#"{"blob":"!!"}"#), Field("blob"), "base64"),
            (
                star(r#"{"color":"COLOR_BLUE"}"#),
                Field("color"),
                "COLOR_BLUE",
            ),
            (star(r#"{"when":"yesterday"}"#), Field("when"), ""),
            (star(r#"{"timeout":5}"#), Field("timeout"), ""),
            (
                star(r#"{"nested":{"text":"t","level":"high"}}"#),
                Field("nested.level"),
                "invalid digit",
            ),
            (
                star(r#"{"nested":{"inner":{"deepValue":7}}}"#),
                Field("nested.inner.deep_value"),
                "string",
            ),
            (
                star(r#"{"items":[{},{"level":true}]}"#),
                Field("items[1].level"),
                "",
            ),
            (star(r#"{"tags":["a",1]}"#), Field("tags[1]"), "string"),
            (star(r#"{"tags":"a"}"#), Field("tags"), "list"),
            (
                star(r#"{"labels":{"a":1,"b":"x"}}"#),
                Field(r#"labels["b"]"#),
                "invalid digit",
            ),
            (
                star(r#"{"by_id":{"x":{}}}"#),
                Field(r#"by_id["x"]"#),
                "invalid digit",
            ),
            (
                star(r#"{"by_id":{"1":{"level":"x"}}}"#),
                Field(r#"by_id["1"].level"#),
                "invalid digit",
            ),
            (star(r#"{"nested":[]}"#), Field("nested"), "map"),
            (
                star(r#"{"left":"a","right":1}"#),
                Field("choice"),
                "only one field of the oneof may be set, got left, right",
            ),
            (
                star(r#"{"nope":1}"#),
                Unknown("nope"),
                "unknown field `nope`",
            ),
            (
                star(r#"{"nested":{"inner":{"nope":1}}}"#),
                Unknown("nested.inner.nope"),
                "",
            ),
            (
                star(r#"{"items":[{"nope":1}]}"#),
                Unknown("items[0].nope"),
                "",
            ),
            (
                body_field(UPDATE, "resource", r#"{"nested":{"level":"x"}}"#),
                Field("resource.nested.level"),
                "",
            ),
            (
                body_field(UPDATE, "resource", r#"{"nope":1}"#),
                Unknown("resource.nope"),
                "",
            ),
            (
                body_field(UPDATE, "resource", r#""x""#).bind("resource.name", "n"),
                Field("resource"),
                "expected a JSON object, got a string",
            ),
            (
                body_field(UPDATE, "resource", r#""x""#),
                Field("resource"),
                "map",
            ),
            (
                body_field(UPDATE, "nope", "{}"),
                Field("nope"),
                "not a field of testing.v1.UpdateRequest",
            ),
            // Query parameters.
            (
                get().query("nope=1"),
                Unknown("nope"),
                "unknown field `nope`",
            ),
            (get().query("nested.nope=1"), Unknown("nested.nope"), ""),
            (get().query("nested..text=1"), Unknown("nested."), ""),
            (
                get().query("id=abc"),
                Field("id"),
                "field `id`: expected a 64-bit integer, got \"abc\"",
            ),
            (
                get().query("small=3000000000"),
                Field("small"),
                "32-bit integer",
            ),
            (get().query("count=-1"), Field("count"), "unsigned"),
            (get().query("big=1.5"), Field("big"), "64-bit unsigned"),
            (
                get().query("flag=yes"),
                Field("flag"),
                "expected true or false",
            ),
            (
                get().query("flag=1"),
                Field("flag"),
                "expected true or false",
            ),
            (get().query("weight=1e39"), Field("weight"), "out of range"),
            (get().query("ratio=1e400"), Field("ratio"), "out of range"),
            (get().query("ratio=inf"), Field("ratio"), "NaN, Infinity"),
            (get().query("ratio=nan"), Field("ratio"), "NaN, Infinity"),
            (get().query("ratio="), Field("ratio"), "expected a number"),
            (
                get().query("color=COLOR_BLUE"),
                Field("color"),
                "\"COLOR_BLUE\" is not a value of enum testing.v1.Color (expected a number or \
                 one of COLOR_UNSPECIFIED, COLOR_RED, COLOR_GREEN)",
            ),
            (get().query("colors=1&colors=x"), Field("colors[1]"), "enum"),
            (
                get().query("ids=1&ids=x"),
                Field("ids[1]"),
                "64-bit integer",
            ),
            (
                get().query("name=a&name=b"),
                Field("name"),
                "given 2 times, but it is not a repeated field",
            ),
            (
                get().query("nested=x"),
                Field("nested"),
                "is set one field at a time, as `nested.<field>=...`",
            ),
            (
                get().query("labels=x"),
                Field("labels"),
                "map fields cannot be set from query parameters (unsupported)",
            ),
            (
                get().query("labels.k=1"),
                Field("labels"),
                "a map field cannot be followed by a sub-field name (unsupported)",
            ),
            (
                get().query("items=x"),
                Field("items"),
                "repeated message fields cannot be set from query parameters",
            ),
            (
                get().query("items.text=x"),
                Field("items"),
                "a repeated field cannot be followed",
            ),
            (
                get().query("when.seconds=1"),
                Field("when"),
                "google.protobuf.Timestamp is given whole",
            ),
            (
                get().query("extra=x"),
                Field("extra"),
                "google.protobuf.Struct cannot be set from query parameters",
            ),
            (
                get().query("name.x=1"),
                Field("name"),
                "not a message (it is a string)",
            ),
            (get().query("when=yesterday"), Field("when"), ""),
            (get().query("timeout=5"), Field("timeout"), ""),
            (get().query("blob=!!!"), Field("blob"), "base64"),
            (
                get().query("blobs=aGk=&blobs=!!"),
                Field("blobs[1]"),
                "base64",
            ),
            (
                get().query("maybe_id=x"),
                Field("maybe_id"),
                "64-bit integer",
            ),
            (
                get().query("left=a&right=1"),
                Field("choice"),
                "only one field of the oneof",
            ),
            (get().query("name=%FF"), Query, "not UTF-8"),
            (get().query("%C3%28=1"), Query, "not UTF-8"),
            (
                get()
                    .query("nested.nope=1&nested.text=x")
                    .allow_unknown()
                    .query("name.x=1"),
                Field("name"),
                "",
            ),
            // Path bindings.
            (get().bind("nope", "1"), Unknown("nope"), ""),
            (get().bind("nested.nope", "1"), Unknown("nested.nope"), ""),
            (get().bind("nope", "1").allow_unknown(), Unknown("nope"), ""),
            (
                get().bind("tags", "a"),
                Field("tags"),
                "repeated fields cannot be bound to the URL path",
            ),
            (
                get().bind("nested", "a"),
                Field("nested"),
                "a message (testing.v1.Nested) cannot be bound to the URL path",
            ),
            (
                get().bind("labels", "a"),
                Field("labels"),
                "map fields cannot be set from the URL path",
            ),
            (
                get().bind("extra", "a"),
                Field("extra"),
                "cannot be set from the URL path",
            ),
            (
                get().bind("id", "x"),
                Field("id"),
                "expected a 64-bit integer",
            ),
            (get().bind("color", "PURPLE"), Field("color"), "enum"),
            (get().bind("when", "never"), Field("when"), ""),
            (
                get().bind("name.first", "x"),
                Field("name"),
                "not a message",
            ),
            (star("[]").bind("name", "x"), Body, "expected a JSON object"),
        ];
        for (request, want, words) in cases {
            let err = match request.run() {
                Ok(message) => panic!("{request:?}: expected an error, got {}", as_json(&message)),
                Err(err) => err,
            };
            let text = err.to_string();
            let context = format!("{request:?} gave {err:?} ({text})");
            match (want, &err) {
                (
                    Json(line, column),
                    TranscodeError::MalformedJson {
                        line: l, column: c, ..
                    },
                ) => assert_eq!((line, column), (*l, *c), "{context}"),
                (Query, TranscodeError::MalformedQuery { .. })
                | (Body, TranscodeError::InvalidBody { .. })
                | (Unexpected, TranscodeError::UnexpectedBody) => {}
                (Field(field), TranscodeError::InvalidField { .. })
                | (Unknown(field), TranscodeError::UnknownField { .. })
                | (Duplicate(field), TranscodeError::DuplicateKey { .. }) => {
                    assert_eq!(err.field().as_deref(), Some(field), "{context}");
                }
                _ => panic!("{context}: expected {want:?}"),
            }
            assert!(text.contains(words), "{context}: should say {words:?}");
            assert!(err.is_client_error(), "{context}");
        }
    }

    #[test]
    fn transcode_error_messages_read_well() {
        let cases = [
            (
                TranscodeError::MalformedJson {
                    line: 2,
                    column: 5,
                    reason: "expected value".to_owned(),
                },
                "the request body is not valid JSON (line 2, column 5): expected value",
            ),
            (
                TranscodeError::InvalidField {
                    field: "nested.level".to_owned(),
                    reason: "expected a 32-bit integer, got \"x\"".to_owned(),
                },
                "field `nested.level`: expected a 32-bit integer, got \"x\"",
            ),
            (
                TranscodeError::UnknownField {
                    field: "nope".to_owned(),
                },
                "unknown field `nope`",
            ),
            (
                TranscodeError::UnexpectedBody,
                "this method takes no request body, but one was sent",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
        let json = star("{\"a\":").run().unwrap_err();
        assert_eq!(
            json.to_string(),
            "the request body is not valid JSON (line 1, column 5): EOF while parsing a value"
        );
        assert_eq!(json.field().as_deref(), None);
        let field = get().query("small=x").run().unwrap_err();
        assert_eq!(
            field.to_string(),
            "field `small`: expected a 32-bit integer, got \"x\""
        );
    }

    // -----------------------------------------------------------------------------------------
    // The PATCH update mask

    #[test]
    fn transcode_update_mask() {
        let patch = |body: &str| body_field(UPDATE, "resource", body).patch();
        let cases: Vec<(&str, Req, Option<Vec<&str>>)> = vec![
            (
                "keys of every shape, sorted, proto names",
                patch(
                    r#"{"name":"n","displayName":"d","nested":{"text":"t","inner":{"deepValue":"v"}},
                        "labels":{"a":1},"tags":["x"],"when":"2024-01-01T00:00:00Z",
                        "extra":{"k":{"deep":1}},"items":[{"text":"t"}],"maybeId":"3",
                        "by_id":{"1":{"text":"x"}}}"#,
                ),
                Some(vec![
                    "by_id",
                    "display_name",
                    "extra",
                    "items",
                    "labels",
                    "maybe_id",
                    "name",
                    "nested.inner.deep_value",
                    "nested.text",
                    "tags",
                    "when",
                ]),
            ),
            (
                "empty objects and nulls are leaves",
                patch(r#"{"nested":{},"when":null,"name":null}"#),
                Some(vec!["name", "nested", "when"]),
            ),
            (
                "path-bound fields come in as body keys only if in the body",
                patch(r#"{"small":1}"#).bind("resource.name", "x"),
                Some(vec!["small"]),
            ),
            (
                "a mask given in the query is kept",
                patch(r#"{"name":"n","small":1}"#).query("update_mask=name"),
                Some(vec!["name"]),
            ),
            (
                "unknown keys skipped when allowed",
                patch(r#"{"name":"n","nope":1}"#).allow_unknown(),
                Some(vec!["name"]),
            ),
            ("an empty body object gives no paths", patch("{}"), None),
            ("a null body gives no mask", patch("null"), None),
            ("no body gives no mask", patch(""), None),
            (
                "not a PATCH: no mask",
                body_field(UPDATE, "resource", r#"{"name":"n"}"#),
                None,
            ),
            (
                "body \"*\": no mask",
                req(UPDATE, BodyRule::Whole)
                    .body(r#"{"resource":{"name":"n"}}"#)
                    .patch(),
                None,
            ),
            (
                "a request without update_mask is left alone",
                body_field(EVERYTHING, "nested", r#"{"text":"t"}"#).patch(),
                None,
            ),
        ];
        for (name, request, expected) in cases {
            let message = request
                .run()
                .unwrap_or_else(|err| panic!("{name}: unexpected error: {err}"));
            let mask = message
                .get_field_by_name("update_mask")
                .and_then(|mask| {
                    let mask = mask.as_message()?.clone();
                    let paths = mask.get_field_by_name("paths")?;
                    let paths: Vec<String> = paths
                        .as_list()?
                        .iter()
                        .map(|p| p.as_str().unwrap_or_default().to_owned())
                        .collect();
                    Some(paths)
                })
                .filter(|paths| !paths.is_empty());
            let expected: Option<Vec<String>> =
                expected.map(|paths| paths.into_iter().map(str::to_owned).collect());
            assert_eq!(mask, expected, "{name}");
        }
    }

    #[test]
    fn transcode_update_mask_one_field_under_both_names_is_an_error() {
        let err = body_field(
            UPDATE,
            "resource",
            r#"{"display_name":"a","displayName":"b"}"#,
        )
        .patch()
        .run()
        .unwrap_err();
        assert!(
            matches!(err, TranscodeError::DuplicateKey { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn transcode_update_mask_unknown_key_is_an_error() {
        let err = body_field(UPDATE, "resource", r#"{"name":"n","nested":{"nope":1}}"#)
            .patch()
            .run()
            .unwrap_err();
        assert_eq!(
            err,
            TranscodeError::UnknownField {
                field: "resource.nested.nope".to_owned()
            }
        );
    }

    // -----------------------------------------------------------------------------------------
    // Responses

    fn everything(json: &str) -> DynamicMessage {
        star(json).run().unwrap()
    }

    #[test]
    fn transcode_responses() {
        let full = everything(
            r#"{"id":"5","displayName":"d","color":"COLOR_RED","blob":"/+8=","weight":0.1,
                "ratio":"NaN","tags":["a","b"],"labels":{"k":1},"nested":{"text":"x"},
                "when":"2024-01-02T03:04:05Z","big":"18446744073709551615"}"#,
        );
        let empty = everything("{}");
        let listed = everything(
            r#"{"items":[{},{"text":"t","level":2}],"byId":{"7":{"text":"s"},"-1":{}}}"#,
        );
        let named = everything(r#"{"displayName":"d","maybeId":"1"}"#);
        let camel = JsonOptions::default();
        let proto = JsonOptions {
            use_proto_names: true,
            ..JsonOptions::default()
        };
        let defaults = JsonOptions {
            emit_defaults: true,
            ..JsonOptions::default()
        };
        let score = {
            let descriptor = descriptor("protomesh.priority.v1.ScoreResponse");
            let mut de = serde_json::Deserializer::from_str(
                r#"{"title":"t","score":72,"level":"LEVEL_HIGH"}"#,
            );
            DynamicMessage::deserialize(descriptor, &mut de).unwrap()
        };
        let cases: Vec<(&str, &DynamicMessage, Option<&str>, JsonOptions, &str)> = vec![
            (
                "whole, JSON names",
                &full,
                None,
                camel,
                r#"{"id":"5","big":"18446744073709551615","ratio":"NaN","weight":0.1,"blob":"/+8=","color":"COLOR_RED","nested":{"text":"x"},"tags":["a","b"],"labels":{"k":1},"when":"2024-01-02T03:04:05Z","displayName":"d"}"#,
            ),
            (
                "whole, proto names",
                &named,
                None,
                proto,
                r#"{"maybe_id":"1","display_name":"d"}"#,
            ),
            ("empty message", &empty, None, camel, "{}"),
            (
                "empty response_body means whole",
                &empty,
                Some(""),
                camel,
                "{}",
            ),
            (
                "the mesh's ScoreResponse, enum by name",
                &score,
                None,
                camel,
                r#"{"title":"t","score":72,"level":"LEVEL_HIGH"}"#,
            ),
            (
                "body: a message",
                &full,
                Some("nested"),
                camel,
                r#"{"text":"x"}"#,
            ),
            (
                "body: an unset message",
                &empty,
                Some("nested"),
                camel,
                "{}",
            ),
            (
                "body: a repeated field",
                &full,
                Some("tags"),
                camel,
                r#"["a","b"]"#,
            ),
            (
                "body: an empty repeated field",
                &empty,
                Some("tags"),
                camel,
                "[]",
            ),
            ("body: a map", &full, Some("labels"), camel, r#"{"k":1}"#),
            ("body: an empty map", &empty, Some("labels"), camel, "{}"),
            ("body: an int64", &full, Some("id"), camel, r#""5""#),
            ("body: an unset int64", &empty, Some("id"), camel, r#""0""#),
            (
                "body: a float keeps its short form",
                &full,
                Some("weight"),
                camel,
                "0.1",
            ),
            ("body: NaN", &full, Some("ratio"), camel, r#""NaN""#),
            ("body: bytes", &full, Some("blob"), camel, r#""/+8=""#),
            (
                "body: an enum",
                &full,
                Some("color"),
                camel,
                r#""COLOR_RED""#,
            ),
            (
                "body: an unset enum",
                &empty,
                Some("color"),
                camel,
                r#""COLOR_UNSPECIFIED""#,
            ),
            (
                "body: a string by JSON name",
                &full,
                Some("displayName"),
                camel,
                r#""d""#,
            ),
            (
                "body: a timestamp",
                &full,
                Some("when"),
                camel,
                r#""2024-01-02T03:04:05Z""#,
            ),
            (
                "body: an unset timestamp",
                &empty,
                Some("when"),
                camel,
                r#""1970-01-01T00:00:00Z""#,
            ),
            (
                "body: an unset wrapper",
                &empty,
                Some("maybe_id"),
                camel,
                r#""0""#,
            ),
            (
                "body: a list of messages with defaults",
                &listed,
                Some("items"),
                defaults,
                r#"[{"text":"","level":0,"attrs":{},"notes":[]},{"text":"t","level":2,"attrs":{},"notes":[]}]"#,
            ),
            (
                "body: a list of messages",
                &listed,
                Some("items"),
                camel,
                r#"[{},{"text":"t","level":2}]"#,
            ),
            (
                "body: a map of messages, sorted, with defaults",
                &listed,
                Some("by_id"),
                defaults,
                r#"{"-1":{"text":"","level":0,"attrs":{},"notes":[]},"7":{"text":"s","level":0,"attrs":{},"notes":[]}}"#,
            ),
            (
                "body: a list of scalars with defaults",
                &full,
                Some("tags"),
                defaults,
                r#"["a","b"]"#,
            ),
            (
                "body: an unset scalar with defaults",
                &empty,
                Some("small"),
                defaults,
                "0",
            ),
            (
                "body: an empty list with defaults",
                &empty,
                Some("ids"),
                defaults,
                "[]",
            ),
            (
                "body: an unset string",
                &empty,
                Some("name"),
                camel,
                r#""""#,
            ),
            ("body: an unset bool", &empty, Some("flag"), camel, "false"),
            (
                "body: a nested message with defaults",
                &full,
                Some("nested"),
                defaults,
                r#"{"text":"x","level":0,"attrs":{},"notes":[]}"#,
            ),
        ];
        for (name, message, body, options, expected) in cases {
            let json = response_json(message, body, &options)
                .unwrap_or_else(|err| panic!("{name}: unexpected error: {err}"));
            assert_eq!(String::from_utf8(json).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn transcode_response_defaults_are_emitted_on_request() {
        let json = response_json(
            &everything("{}"),
            None,
            &JsonOptions {
                emit_defaults: true,
                use_proto_names: true,
                ..JsonOptions::default()
            },
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["id"], "0");
        assert_eq!(value["display_name"], "");
        assert_eq!(value["color"], "COLOR_UNSPECIFIED");
        assert_eq!(value["tags"], json!([]));
        assert_eq!(value["labels"], json!({}));
        assert!(value.get("nested").is_none(), "unset messages stay out");
    }

    #[test]
    fn transcode_response_body_must_name_a_field() {
        let err =
            response_json(&everything("{}"), Some("nope"), &JsonOptions::default()).unwrap_err();
        assert!(matches!(err, TranscodeError::Response { .. }), "{err:?}");
        assert!(!err.is_client_error());
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn transcode_round_trips() {
        let original = everything(
            r#"{"id":"-7","big":"9","small":-1,"count":2,"flag":true,"ratio":0.25,"weight":2.5,
                "blob":"AAE=","color":"COLOR_GREEN","nested":{"inner":{"deepValue":"v"},"attrs":{"a":"b"}},
                "ids":["1","-2"],"colors":["COLOR_RED"],"labels":{"x":-3},"timeout":"0.001s",
                "fieldMask":"a,b.c","maybeName":"","extra":{"k":null},"items":[{},{"level":1}],
                "right":5,"signed":"-9","maybeFlag":true,"blobs":["",""],"dynamic":{"a":[true]},
                "opt":0,"byId":{"-1":{"text":"t"}}}"#,
        );
        for options in [
            JsonOptions::default(),
            JsonOptions {
                use_proto_names: true,
                emit_defaults: true,
                allow_unknown_fields: false,
            },
        ] {
            let json = response_json(&original, None, &options).unwrap();
            let back = star(std::str::from_utf8(&json).unwrap()).run().unwrap();
            // Defaults written out come back set: compare the canonical JSON.
            assert_eq!(as_json(&back), as_json(&original), "{options:?}");
            if !options.emit_defaults {
                assert_eq!(back, original, "{options:?}");
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Never a panic

    mod never_panics {
        use proptest::prelude::*;

        use super::*;

        fn rules() -> impl Strategy<Value = (&'static str, BodyRule, bool)> {
            prop_oneof![
                Just((EVERYTHING, BodyRule::None, false)),
                Just((EVERYTHING, BodyRule::Whole, false)),
                Just((EVERYTHING, BodyRule::Field("nested".to_owned()), false)),
                Just((EVERYTHING, BodyRule::Field("tags".to_owned()), false)),
                Just((EVERYTHING, BodyRule::Field("labels".to_owned()), false)),
                Just((EVERYTHING, BodyRule::Field("when".to_owned()), false)),
                Just((UPDATE, BodyRule::Field("resource".to_owned()), true)),
                Just((UPDATE, BodyRule::Whole, true)),
            ]
        }

        fn bodies() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..128),
                // Mostly-JSON text, to get past the parser.
                "[{}\\[\\]\",:0-9a-zA-Z_ .eE+-]{0,96}".prop_map(String::into_bytes),
                Just(br#"{"nested":{"inner":{"deepValue":1}},"items":[{"x":1}]}"#.to_vec()),
            ]
        }

        fn queries() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "([a-z_]{1,8}(\\.[a-zA-Z_]{1,8}){0,2}(=[a-zA-Z0-9%+.:,_-]{0,8})?&?){0,6}",
                "((name|id|big|small|count|flag|ratio|weight|blob|color|tags|ids|colors|labels|when|timeout|field_mask|maybe_id|extra|items|nested\\.text|nested\\.inner\\.deep_value|dynamic|opt|left|right)=[a-zA-Z0-9%+.:_-]{0,6}&){0,6}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn transcode_never_panics(
                (message, rule, patch) in rules(),
                body in bodies(),
                query in queries(),
                binding in "[a-zA-Z0-9/ %.-]{0,12}",
                allow_unknown in any::<bool>(),
            ) {
                let bindings = [(vec!["nested".to_owned(), "text".to_owned()], binding.clone())];
                let id_binding = [(vec!["id".to_owned()], binding)];
                for path_bindings in [&bindings[..], &id_binding[..], &[][..]] {
                    let parts = RequestParts {
                        path_bindings,
                        query: Some(&query),
                        body: &body,
                        body_rule: &rule,
                        fill_update_mask: patch,
                    };
                    let options = JsonOptions {
                        allow_unknown_fields: allow_unknown,
                        ..JsonOptions::default()
                    };
                    let descriptor = descriptor(message);
                    match request_message(&descriptor, &parts, &options) {
                        Ok(message) => {
                            let json = response_json(&message, None, &options);
                            prop_assert!(json.is_ok());
                        }
                        Err(err) => prop_assert!(!err.to_string().is_empty()),
                    }
                }
            }
        }
    }

    #[test]
    fn echoed_client_input_is_shortened() {
        let huge = "n".repeat(16 * 1024);
        let unknown = TranscodeError::UnknownField {
            field: huge.clone(),
        };
        assert!(
            unknown.to_string().len() < 300,
            "{}",
            unknown.to_string().len()
        );
        assert!(unknown.field().unwrap().chars().count() <= protomesh::status::MAX_ECHO_CHARS + 1);
        let invalid = TranscodeError::InvalidField {
            field: "urgency".into(),
            reason: format!("invalid type: string \"{huge}\", expected i32"),
        };
        assert!(
            invalid.to_string().len() < 1200,
            "{}",
            invalid.to_string().len()
        );
        for kind in [Kind::Int32, Kind::Bool, Kind::Double] {
            let reason = text_to_json(&kind, &huge, false).expect_err("not a value");
            assert!(reason.len() < 300, "{kind:?}: {}", reason.len());
        }
    }
}
