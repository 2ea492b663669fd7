//! The rules declared on request fields, read from the descriptors: [`FieldRules::declared`] and
//! the types it reads them into, with the string formats (`uuid`, `email`) and the
//! `google.api.field_behavior` of a field.

use std::fmt;

use prost_reflect::{DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, ReflectMessage, Value};
use regex::Regex;

/// Full name of the field option that holds a field's rules.
pub const FIELD_RULES_EXTENSION: &str = "buf.validate.field";
/// Full name of the message option (message-level rules: not supported, refused).
pub const MESSAGE_RULES_EXTENSION: &str = "buf.validate.message";
/// Full name of the oneof option (oneof rules: not supported, refused).
pub const ONEOF_RULES_EXTENSION: &str = "buf.validate.oneof";
/// Field number of `(buf.validate.field)` in `google.protobuf.FieldOptions`.
const FIELD_RULES_NUMBER: u32 = 1159;

/// A declared rule that cannot be read or is not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {reason}")]
pub struct RuleError {
    /// The field (full name) or message the rule is declared on.
    pub subject: String,
    /// What is wrong (names the rule).
    pub reason: String,
}

impl RuleError {
    pub(super) fn new(subject: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            reason: reason.into(),
        }
    }
}

/// The rules declared on one field (`(buf.validate.field)`).
#[derive(Debug, Clone, Default)]
pub struct FieldRules {
    /// The field must be set (non-zero scalar, present message, non-empty list).
    pub required: bool,
    /// The value rules do not apply to the zero value.
    pub ignore_zero: bool,
    /// The rules of the value (for a repeated field: of the list).
    pub value: ValueRules,
}

/// The rules of a value, by its type.
#[derive(Debug, Clone, Default)]
pub enum ValueRules {
    /// None.
    #[default]
    None,
    /// A string's.
    String(StringRules),
    /// An integer's (any width).
    Integer(NumberRules<i128>),
    /// A `float` or `double`'s.
    Float(NumberRules<f64>),
    /// An enum's.
    Enum(EnumRules),
    /// A repeated field's.
    Repeated(RepeatedRules),
}

/// Rules of a string.
#[derive(Debug, Clone, Default)]
pub struct StringRules {
    /// Fewest characters.
    pub min_len: Option<u64>,
    /// Most characters.
    pub max_len: Option<u64>,
    /// A pattern the value must contain a match of.
    pub pattern: Option<Pattern>,
    /// A format the value must have.
    pub format: Option<StringFormat>,
    /// The only values allowed (none: any).
    pub one_of: Vec<String>,
    /// Values refused.
    pub none_of: Vec<String>,
}

/// A compiled `pattern`, with its source (as declared) for messages and documents.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The pattern as declared.
    pub source: String,
    regex: Regex,
}

impl Pattern {
    /// Whether `text` contains a match.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// A well-known string format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringFormat {
    /// A hyphenated UUID, any case (`string.uuid`).
    Uuid,
    /// An email address ([`is_email`]; `string.email`).
    Email,
}

/// Bounds and sets of a number.
#[derive(Debug, Clone)]
pub struct NumberRules<T> {
    /// Exclusive lower bound.
    pub gt: Option<T>,
    /// Inclusive lower bound.
    pub gte: Option<T>,
    /// Exclusive upper bound.
    pub lt: Option<T>,
    /// Inclusive upper bound.
    pub lte: Option<T>,
    /// The only values allowed (none: any).
    pub one_of: Vec<T>,
    /// Values refused.
    pub none_of: Vec<T>,
}

impl<T> Default for NumberRules<T> {
    fn default() -> Self {
        Self {
            gt: None,
            gte: None,
            lt: None,
            lte: None,
            one_of: Vec::new(),
            none_of: Vec::new(),
        }
    }
}

/// Rules of an enum value.
#[derive(Debug, Clone)]
pub struct EnumRules {
    /// The enum.
    pub enumeration: EnumDescriptor,
    /// Only numbers the enum defines.
    pub defined_only: bool,
    /// The only numbers allowed (none: any).
    pub one_of: Vec<i32>,
    /// Numbers refused.
    pub none_of: Vec<i32>,
}

impl EnumRules {
    /// The enum's values these rules allow, in declaration order (for documents).
    pub fn allowed_values(&self) -> Vec<prost_reflect::EnumValueDescriptor> {
        self.enumeration
            .values()
            .filter(|value| self.allows(value.number()))
            .collect()
    }

    /// Whether `number` passes.
    pub fn allows(&self, number: i32) -> bool {
        (!self.defined_only || self.enumeration.get_value(number).is_some())
            && (self.one_of.is_empty() || self.one_of.contains(&number))
            && !self.none_of.contains(&number)
    }
}

/// Rules of a repeated field.
#[derive(Debug, Clone, Default)]
pub struct RepeatedRules {
    /// Fewest items.
    pub min_items: Option<u64>,
    /// Most items.
    pub max_items: Option<u64>,
    /// Items distinct (scalar items only).
    pub unique: bool,
    /// The rules of each item.
    pub items: Option<Box<FieldRules>>,
}

impl FieldRules {
    /// The rules declared on `field`, `None` when it declares none (or `IGNORE_ALWAYS`).
    ///
    /// # Errors
    ///
    /// A [`RuleError`] naming the field and the rule when a declared rule is not supported, does
    /// not fit the field's type, or cannot be read.
    pub fn declared(field: &FieldDescriptor) -> Result<Option<Self>, RuleError> {
        let options = field.options();
        let Some(extension) = field
            .parent_pool()
            .get_extension_by_name(FIELD_RULES_EXTENSION)
        else {
            if options
                .unknown_fields()
                .any(|unknown| unknown.number() == FIELD_RULES_NUMBER)
            {
                return Err(RuleError::new(
                    field.full_name(),
                    "declares (buf.validate.field) rules, but the descriptors lack \
                     buf/validate/validate.proto to read them with",
                ));
            }
            return Ok(None);
        };
        if !options.has_extension(&extension) {
            return Ok(None);
        }
        let value = options.get_extension(&extension);
        let Value::Message(rules) = value.as_ref() else {
            return Err(RuleError::new(field.full_name(), "unreadable rules"));
        };
        let subject = field.full_name().to_owned();
        let rules = read_field_rules(&subject, rules, &field.kind(), field.is_list())?;
        Ok(rules)
    }
}

/// Reads a `buf.validate.FieldRules` for a value of `kind` (a list of them when `list`).
fn read_field_rules(
    subject: &str,
    rules: &DynamicMessage,
    kind: &Kind,
    list: bool,
) -> Result<Option<FieldRules>, RuleError> {
    let mut out = FieldRules::default();
    for (field, value) in rules.fields() {
        let name = field.name();
        match (name, value) {
            ("required", Value::Bool(required)) => out.required = *required,
            ("ignore", Value::EnumNumber(number)) => match number {
                0 => {}
                1 => out.ignore_zero = true,
                3 => return Ok(None),
                other => {
                    return Err(RuleError::new(
                        subject,
                        format!("unknown ignore value {other}"),
                    ))
                }
            },
            ("repeated", Value::Message(repeated)) if list => {
                out.value = ValueRules::Repeated(read_repeated(subject, repeated, kind)?);
            }
            (_, Value::Message(typed)) if !list && field.containing_oneof().is_some() => {
                out.value = read_typed(subject, name, typed, kind)?;
            }
            _ => {
                return Err(RuleError::new(
                    subject,
                    format!(
                        "rule `{name}` is not supported here (supported: required, ignore, {})",
                        if list {
                            "repeated"
                        } else {
                            "the rules of the field's type"
                        }
                    ),
                ))
            }
        }
    }
    Ok(Some(out))
}

/// Reads `buf.validate.RepeatedRules` of a list of `kind`.
fn read_repeated(
    subject: &str,
    rules: &DynamicMessage,
    kind: &Kind,
) -> Result<RepeatedRules, RuleError> {
    let mut out = RepeatedRules::default();
    for (field, value) in rules.fields() {
        match (field.name(), value) {
            ("min_items", Value::U64(n)) => out.min_items = Some(*n),
            ("max_items", Value::U64(n)) => out.max_items = Some(*n),
            ("unique", Value::Bool(unique)) => {
                if *unique && matches!(kind, Kind::Message(_)) {
                    return Err(RuleError::new(
                        subject,
                        "rule `repeated.unique` is supported for scalar and enum items only",
                    ));
                }
                out.unique = *unique;
            }
            ("items", Value::Message(items)) => {
                out.items =
                    read_field_rules(&format!("{subject}[]"), items, kind, false)?.map(Box::new);
            }
            (name, _) => return Err(unsupported(subject, &format!("repeated.{name}"))),
        }
    }
    Ok(out)
}

/// Reads the type rules named `name` (`string`, `int32`, …) for a value of `kind`.
fn read_typed(
    subject: &str,
    name: &str,
    rules: &DynamicMessage,
    kind: &Kind,
) -> Result<ValueRules, RuleError> {
    let fits = matches!(
        (name, kind),
        ("string", Kind::String)
            | ("int32", Kind::Int32)
            | ("int64", Kind::Int64)
            | ("uint32", Kind::Uint32)
            | ("uint64", Kind::Uint64)
            | ("sint32", Kind::Sint32)
            | ("sint64", Kind::Sint64)
            | ("fixed32", Kind::Fixed32)
            | ("fixed64", Kind::Fixed64)
            | ("sfixed32", Kind::Sfixed32)
            | ("sfixed64", Kind::Sfixed64)
            | ("float", Kind::Float)
            | ("double", Kind::Double)
            | ("enum", Kind::Enum(_))
    );
    if !fits {
        return Err(RuleError::new(
            subject,
            format!(
                "`{name}` rules do not fit a field of type {}",
                kind_name(kind)
            ),
        ));
    }
    match kind {
        Kind::String => read_string(subject, rules).map(ValueRules::String),
        Kind::Float | Kind::Double => {
            read_numbers(subject, name, rules, float_of).map(ValueRules::Float)
        }
        Kind::Enum(enumeration) => read_enum(subject, rules, enumeration).map(ValueRules::Enum),
        _ => read_numbers(subject, name, rules, integer_of).map(ValueRules::Integer),
    }
}

fn read_string(subject: &str, rules: &DynamicMessage) -> Result<StringRules, RuleError> {
    let mut out = StringRules::default();
    for (field, value) in rules.fields() {
        match (field.name(), value) {
            ("min_len", Value::U64(n)) => out.min_len = Some(*n),
            ("max_len", Value::U64(n)) => out.max_len = Some(*n),
            ("pattern", Value::String(source)) => {
                let regex = Regex::new(source).map_err(|err| {
                    RuleError::new(
                        subject,
                        format!("rule `string.pattern` does not compile: {err}"),
                    )
                })?;
                out.pattern = Some(Pattern {
                    source: source.clone(),
                    regex,
                });
            }
            ("uuid", Value::Bool(true)) => out.format = Some(StringFormat::Uuid),
            ("email", Value::Bool(true)) => out.format = Some(StringFormat::Email),
            ("in", Value::List(values)) => out.one_of = strings(values),
            ("not_in", Value::List(values)) => out.none_of = strings(values),
            ("example", _) => {}
            (name, _) => return Err(unsupported(subject, &format!("string.{name}"))),
        }
    }
    Ok(out)
}

fn strings(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn read_numbers<T>(
    subject: &str,
    type_name: &str,
    rules: &DynamicMessage,
    number: fn(&Value) -> Option<T>,
) -> Result<NumberRules<T>, RuleError> {
    let mut out = NumberRules::default();
    for (field, value) in rules.fields() {
        let name = field.name();
        let one = || {
            number(value).ok_or_else(|| {
                RuleError::new(subject, format!("unreadable rule `{type_name}.{name}`"))
            })
        };
        let many = || match value {
            Value::List(values) => values
                .iter()
                .map(|v| number(v).ok_or_else(|| unsupported(subject, name)))
                .collect::<Result<Vec<_>, _>>(),
            _ => Err(unsupported(subject, name)),
        };
        match name {
            "gt" => out.gt = Some(one()?),
            "gte" => out.gte = Some(one()?),
            "lt" => out.lt = Some(one()?),
            "lte" => out.lte = Some(one()?),
            "in" if type_name != "float" && type_name != "double" => out.one_of = many()?,
            "not_in" if type_name != "float" && type_name != "double" => out.none_of = many()?,
            "example" => {}
            _ => return Err(unsupported(subject, &format!("{type_name}.{name}"))),
        }
    }
    Ok(out)
}

fn integer_of(value: &Value) -> Option<i128> {
    match value {
        Value::I32(n) => Some(i128::from(*n)),
        Value::I64(n) => Some(i128::from(*n)),
        Value::U32(n) => Some(i128::from(*n)),
        Value::U64(n) => Some(i128::from(*n)),
        _ => None,
    }
}

fn float_of(value: &Value) -> Option<f64> {
    match value {
        Value::F32(n) => Some(f64::from(*n)),
        Value::F64(n) => Some(*n),
        _ => None,
    }
}

fn read_enum(
    subject: &str,
    rules: &DynamicMessage,
    enumeration: &EnumDescriptor,
) -> Result<EnumRules, RuleError> {
    let mut out = EnumRules {
        enumeration: enumeration.clone(),
        defined_only: false,
        one_of: Vec::new(),
        none_of: Vec::new(),
    };
    let numbers = |values: &[Value]| values.iter().filter_map(Value::as_i32).collect::<Vec<_>>();
    for (field, value) in rules.fields() {
        match (field.name(), value) {
            ("defined_only", Value::Bool(defined)) => out.defined_only = *defined,
            ("in", Value::List(values)) => out.one_of = numbers(values),
            ("not_in", Value::List(values)) => out.none_of = numbers(values),
            ("example", _) => {}
            (name, _) => return Err(unsupported(subject, &format!("enum.{name}"))),
        }
    }
    Ok(out)
}

fn unsupported(subject: &str, rule: &str) -> RuleError {
    RuleError::new(subject, format!("rule `{rule}` is not supported"))
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(message) => message.full_name().to_owned(),
        Kind::Enum(enumeration) => enumeration.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Whether `text` is an email address of sane shape (the `string.email` rule): one `@`; a local
/// part of 1..=64 characters without whitespace, controls, `<>",;`, and no leading, trailing or
/// doubled dot; a domain of at least two dot-separated labels of 1..=63 letters, digits and inner
/// hyphens, the last not all digits; at most 254 characters in all.
pub fn is_email(text: &str) -> bool {
    if text.chars().count() > 254 {
        return false;
    }
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.chars().count() <= 64
        && !local.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';' | '@')
        })
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.chars().count() <= 63
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    local_ok
        && labels.len() >= 2
        && labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

/// Whether `text` is a hyphenated UUID (any case): the `string.uuid` rule.
pub fn is_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

impl fmt::Display for StringFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uuid => "uuid",
            Self::Email => "email",
        })
    }
}

/// Full name of the field option stating a field's behaviour (`OUTPUT_ONLY`, …).
pub const FIELD_BEHAVIOR_EXTENSION: &str = "google.api.field_behavior";
/// `google.api.FieldBehavior.OUTPUT_ONLY`.
const OUTPUT_ONLY: i32 = 3;

/// Whether `field` is output only (`(google.api.field_behavior) = OUTPUT_ONLY`): set by the
/// server, ignored in requests (a document marks it `readOnly`; an update does not name it).
pub fn is_output_only(field: &FieldDescriptor) -> bool {
    let Some(extension) = field
        .parent_pool()
        .get_extension_by_name(FIELD_BEHAVIOR_EXTENSION)
    else {
        return false;
    };
    let options = field.options();
    if !options.has_extension(&extension) {
        return false;
    }
    match options.get_extension(&extension).as_ref() {
        Value::List(behaviors) => behaviors
            .iter()
            .any(|b| b.as_enum_number() == Some(OUTPUT_ONLY)),
        _ => false,
    }
}

/// Whether `message` (a `google.protobuf.*Options`) carries the extension `name` (known to its
/// pool) with any field set.
pub(crate) fn declares(message: &DynamicMessage, name: &str) -> bool {
    let Some(extension) = message
        .descriptor()
        .parent_pool()
        .get_extension_by_name(name)
    else {
        return false;
    };
    message.has_extension(&extension)
}
