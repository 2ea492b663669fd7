//! The request rules a field declares ([`protomesh::rules`], the ones its service enforces) as
//! OpenAPI 3.0 schema keywords, so that the document describes what the mesh accepts:
//!
//! | rule | keywords |
//! |---|---|
//! | a zero value refused (`required`, or a range without 0, `min_len` ≥ 1, `min_items` ≥ 1) | the field in its message's `required` (a query parameter `required: true`) |
//! | `string.min_len`, `max_len` | `minLength`, `maxLength` |
//! | `string.pattern` | `pattern` |
//! | `string.uuid` | `format: uuid` and a `pattern` |
//! | `string.email` | `format: email` |
//! | `string.in`, `not_in` | `enum`, `not: {enum}` |
//! | integer and float `gte`, `lte`, `gt`, `lt` | `minimum`, `maximum` (`exclusiveMinimum` / `exclusiveMaximum` for `gt` / `lt`) |
//! | integer `in`, `not_in` | `enum`, `not: {enum}` |
//! | `enum.in`, `not_in` | the field's own `enum` of the names allowed |
//! | `repeated.min_items`, `max_items`, `unique`, `items` | `minItems`, `maxItems`, `uniqueItems`, the item's keywords |
//!
//! Under `ignore: IGNORE_IF_ZERO_VALUE` the zero value is allowed too: `""` joins a string's
//! `pattern` (`^$|…`) and `enum`, and bounds the zero breaks are left out of an integer's schema.
//! 64-bit integers are JSON strings, so their bounds are not keywords (the service still enforces
//! them). A rule the service would refuse at start-up is left out.

use prost_reflect::{FieldDescriptor, Kind};
use protomesh::rules::{FieldRules, NumberRules, StringFormat, StringRules, ValueRules};
use serde_json::{json, Map, Value};

/// A hyphenated UUID, any case (the `string.uuid` rule).
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

#[cfg(test)]
pub(super) const UUID_PATTERN_FOR_TESTS: &str = UUID_PATTERN;

/// The rules `field` declares, if it declares any that the service can enforce.
pub(super) fn declared(field: &FieldDescriptor) -> Option<FieldRules> {
    FieldRules::declared(field).ok().flatten()
}

/// Whether a request must carry `field`: its zero value breaks its rules.
pub(super) fn must_carry(field: &FieldDescriptor) -> bool {
    declared(field).is_some_and(|rules| rules.refuses_zero(field))
}

/// `schema` (of `field`'s value, an array for a repeated field) with the keywords of the field's
/// rules.
pub(super) fn constrain(schema: Value, field: &FieldDescriptor) -> Value {
    constrain_as(schema, field, true)
}

/// As [`constrain`], for a field an update names (in an update's body): the zero value is
/// described as refused even under `IGNORE_IF_ZERO_VALUE`, since the service refuses to update
/// a field to nothing (a task's status, say).
pub(super) fn constrain_update(schema: Value, field: &FieldDescriptor) -> Value {
    constrain_as(schema, field, false)
}

fn constrain_as(schema: Value, field: &FieldDescriptor, zero_exempt: bool) -> Value {
    let Some(mut rules) = declared(field) else {
        return schema;
    };
    rules.ignore_zero &= zero_exempt;
    let kind = field.kind();
    match (&rules.value, schema) {
        (ValueRules::Repeated(repeated), Value::Object(mut array)) if field.is_list() => {
            if let Some(min) = repeated.min_items {
                array.insert("minItems".to_owned(), json!(min));
            }
            if let Some(max) = repeated.max_items {
                array.insert("maxItems".to_owned(), json!(max));
            }
            if repeated.unique {
                array.insert("uniqueItems".to_owned(), Value::Bool(true));
            }
            if let Some(items) = &repeated.items {
                if let Some(item_schema) = array.remove("items") {
                    let item_schema =
                        value_keywords(item_schema, &items.value, items.ignore_zero, &kind);
                    array.insert("items".to_owned(), item_schema);
                }
            }
            Value::Object(array)
        }
        (value, schema) if !field.is_list() => {
            let schema = value_keywords(schema, value, rules.ignore_zero, &kind);
            if rules.required && !field.supports_presence() {
                non_zero(schema, &kind)
            } else {
                schema
            }
        }
        (_, schema) => schema,
    }
}

/// `schema` refusing the zero value of `kind` (a `required` scalar): `""`, `0`, the enum's
/// zero name.
fn non_zero(schema: Value, kind: &Kind) -> Value {
    match (kind, schema) {
        (Kind::String | Kind::Bytes, Value::Object(mut object)) => {
            if !object.contains_key("minLength") {
                object.insert("minLength".to_owned(), json!(1));
            }
            Value::Object(object)
        }
        (Kind::Enum(enumeration), schema) => {
            let names: Vec<Value> = match schema.get("enum").and_then(Value::as_array) {
                Some(names) => names.clone(),
                None => enumeration
                    .values()
                    .map(|v| Value::String(v.name().to_owned()))
                    .collect(),
            };
            let zero = enumeration.get_value(0).map(|v| v.name().to_owned());
            let names: Vec<Value> = names
                .into_iter()
                .filter(|name| name.as_str() != zero.as_deref())
                .collect();
            json!({ "type": "string", "enum": names })
        }
        (_, Value::Object(mut object))
            if matches!(
                object.get("type").and_then(Value::as_str),
                Some("integer" | "number")
            ) =>
        {
            if !object.contains_key("not") {
                object.insert("not".to_owned(), json!({ "enum": [0] }));
            }
            Value::Object(object)
        }
        (_, schema) => schema,
    }
}

/// `schema` (of one value of `kind`) with the keywords of `rules`.
fn value_keywords(schema: Value, rules: &ValueRules, ignore_zero: bool, kind: &Kind) -> Value {
    match (rules, schema) {
        (ValueRules::String(rules), Value::Object(object)) => {
            Value::Object(string_keywords(object, rules, ignore_zero))
        }
        (ValueRules::Integer(rules), Value::Object(object))
            if object.get("type").and_then(Value::as_str) == Some("integer") =>
        {
            let zero_ok = zero_in_bounds(rules, 0);
            Value::Object(number_keywords(object, rules, ignore_zero && !zero_ok))
        }
        (ValueRules::Float(rules), Value::Object(object))
            if object.get("type").and_then(Value::as_str) == Some("number") =>
        {
            let zero_ok = zero_in_bounds(rules, 0.0);
            Value::Object(number_keywords(object, rules, ignore_zero && !zero_ok))
        }
        (ValueRules::Enum(rules), schema)
            if !rules.one_of.is_empty() || !rules.none_of.is_empty() =>
        {
            let Kind::Enum(enumeration) = kind else {
                return schema;
            };
            let mut names: Vec<Value> = rules
                .allowed_values()
                .iter()
                .map(|value| Value::String(value.name().to_owned()))
                .collect();
            if ignore_zero {
                if let Some(zero) = enumeration.get_value(0) {
                    if !rules.allows(0) {
                        names.insert(0, Value::String(zero.name().to_owned()));
                    }
                }
            }
            json!({ "type": "string", "enum": names })
        }
        (_, schema) => schema,
    }
}

fn string_keywords(
    mut object: Map<String, Value>,
    rules: &StringRules,
    ignore_zero: bool,
) -> Map<String, Value> {
    if let Some(min) = rules.min_len.filter(|_| !ignore_zero) {
        object.insert("minLength".to_owned(), json!(min));
    }
    if let Some(max) = rules.max_len {
        object.insert("maxLength".to_owned(), json!(max));
    }
    let pattern = match (&rules.pattern, rules.format) {
        (Some(pattern), _) => Some(pattern.source.clone()),
        (None, Some(StringFormat::Uuid)) => Some(UUID_PATTERN.to_owned()),
        (None, _) => None,
    };
    if let Some(pattern) = pattern {
        let pattern = if ignore_zero {
            format!("^$|{pattern}")
        } else {
            pattern
        };
        object.insert("pattern".to_owned(), Value::String(pattern));
    }
    match rules.format {
        Some(format) if !ignore_zero => {
            object.insert("format".to_owned(), Value::String(format.to_string()));
        }
        _ => {}
    }
    if !rules.one_of.is_empty() {
        let mut values: Vec<Value> = rules.one_of.iter().cloned().map(Value::String).collect();
        if ignore_zero && !rules.one_of.iter().any(String::is_empty) {
            values.insert(0, Value::String(String::new()));
        }
        object.insert("enum".to_owned(), Value::Array(values));
    }
    if !rules.none_of.is_empty() {
        object.insert("not".to_owned(), json!({ "enum": rules.none_of }));
    }
    object
}

/// Whether `zero` is within the bounds of `rules`.
fn zero_in_bounds<T: PartialOrd + Copy>(rules: &NumberRules<T>, zero: T) -> bool {
    rules.gt.is_none_or(|gt| zero > gt)
        && rules.gte.is_none_or(|gte| zero >= gte)
        && rules.lt.is_none_or(|lt| zero < lt)
        && rules.lte.is_none_or(|lte| zero <= lte)
}

/// The bound and set keywords of `rules`; with `skip_bounds` (the zero is allowed but out of
/// bounds) no bounds, which a schema could not state along with the zero.
fn number_keywords<T>(
    mut object: Map<String, Value>,
    rules: &NumberRules<T>,
    skip_bounds: bool,
) -> Map<String, Value>
where
    T: Copy + Into<NumberJson>,
{
    if !skip_bounds {
        match (rules.gt, rules.gte) {
            (Some(gt), _) => {
                object.insert("minimum".to_owned(), gt.into().0);
                object.insert("exclusiveMinimum".to_owned(), Value::Bool(true));
            }
            (None, Some(gte)) => {
                object.insert("minimum".to_owned(), gte.into().0);
            }
            (None, None) => {}
        }
        match (rules.lt, rules.lte) {
            (Some(lt), _) => {
                object.insert("maximum".to_owned(), lt.into().0);
                object.insert("exclusiveMaximum".to_owned(), Value::Bool(true));
            }
            (None, Some(lte)) => {
                object.insert("maximum".to_owned(), lte.into().0);
            }
            (None, None) => {}
        }
    }
    if !rules.one_of.is_empty() {
        let values: Vec<Value> = rules.one_of.iter().map(|n| (*n).into().0).collect();
        object.insert("enum".to_owned(), Value::Array(values));
    }
    if !rules.none_of.is_empty() {
        let values: Vec<Value> = rules.none_of.iter().map(|n| (*n).into().0).collect();
        object.insert("not".to_owned(), json!({ "enum": values }));
    }
    object
}

/// A bound as a JSON number.
struct NumberJson(Value);

impl From<i128> for NumberJson {
    fn from(n: i128) -> Self {
        // Rules on 32-bit fields (the only integers that are JSON numbers) fit an i64.
        Self(i64::try_from(n).map_or(Value::Null, |n| json!(n)))
    }
}

impl From<f64> for NumberJson {
    fn from(n: f64) -> Self {
        Self(json!(n))
    }
}
