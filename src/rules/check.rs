//! The rules of request messages compiled once ([`MessageRules::compile`], [`MethodRules`]) and
//! checked against decoded messages ([`MessageRules::check`]), every violation collected.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};

use super::declared::{
    declares, FieldRules, RuleError, ValueRules, MESSAGE_RULES_EXTENSION, ONEOF_RULES_EXTENSION,
};
use super::value::{check_scalar, Scalar};
use super::wire::FlatRules;
use crate::status::FieldViolation;

/// The compiled rules of one message type: only the fields that have rules, or lead to ones.
#[derive(Debug)]
pub struct MessageRules {
    descriptor: MessageDescriptor,
    fields: Vec<CompiledField>,
    /// AIP-134: the resource field's rules apply to the fields the mask names.
    mask: Option<MaskBinding>,
    /// The rules on wire bytes, for a flat message (see [`super::wire`]).
    wire: Option<FlatRules>,
}

#[derive(Debug)]
struct MaskBinding {
    mask: FieldDescriptor,
    resource: FieldDescriptor,
}

#[derive(Debug)]
struct CompiledField {
    field: FieldDescriptor,
    rules: FieldRules,
    /// The rules of the field's message type (of each item for a list), if it has any.
    nested: Option<Arc<MessageRules>>,
}

/// The rules of the request messages of a server's methods, by gRPC path (`/pkg.Service/Method`);
/// methods whose request has no rules are not listed.
#[derive(Debug, Default)]
pub struct MethodRules {
    by_path: HashMap<String, Arc<MessageRules>>,
}

impl MethodRules {
    /// The rules of the methods of `services` (full names) in the encoded descriptor `sets`.
    ///
    /// # Errors
    ///
    /// The first rule that is not supported (naming the field and the rule), or a set that does
    /// not decode.
    pub fn from_descriptor_sets(sets: &[&[u8]], services: &[&str]) -> Result<Self, RuleError> {
        let pool = crate::descriptors::lean_pool(sets)
            .map_err(|err| RuleError::new("descriptor set", err.to_string()))?;
        Self::from_pool(&pool, services)
    }

    /// Like [`MethodRules::from_descriptor_sets`], from a decoded pool.
    ///
    /// # Errors
    ///
    /// The first rule that is not supported, naming the field and the rule.
    pub fn from_pool(pool: &DescriptorPool, services: &[&str]) -> Result<Self, RuleError> {
        let mut by_path = HashMap::new();
        let mut compiler = Compiler::default();
        for service in pool.services() {
            if !services.contains(&service.full_name()) {
                continue;
            }
            for method in service.methods() {
                let Some(rules) = compiler.message(&method.input())? else {
                    continue;
                };
                if method.is_client_streaming() {
                    return Err(RuleError::new(
                        method.full_name(),
                        "rules on the request of a client-streaming method are not supported",
                    ));
                }
                by_path.insert(format!("/{}/{}", service.full_name(), method.name()), rules);
            }
        }
        Ok(Self { by_path })
    }

    /// The rules of the method at `path`, if its request has any.
    pub fn of(&self, path: &str) -> Option<&Arc<MessageRules>> {
        self.by_path.get(path)
    }

    /// Whether no method has rules.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

impl MessageRules {
    /// The rules of `message` and of the messages it holds, `None` when neither it nor they
    /// declare any.
    ///
    /// # Errors
    ///
    /// The first rule that is not supported, naming the field and the rule.
    pub fn compile(message: &MessageDescriptor) -> Result<Option<Arc<Self>>, RuleError> {
        Compiler::default().message(message)
    }

    /// The message type these rules are for.
    pub fn descriptor(&self) -> &MessageDescriptor {
        &self.descriptor
    }

    /// Whether `encoded`, a message of this type as it came on the wire, surely passes, found
    /// without decoding it: `false` means undecided (decode it and [`MessageRules::check`] it),
    /// and always for messages that are not flat (see [`super::wire`]).
    pub fn passes_on_wire(&self, encoded: &[u8]) -> bool {
        self.wire.as_ref().is_some_and(|wire| wire.passes(encoded))
    }

    /// Every violation of `message` (empty when it passes), field paths as in the request.
    pub fn check(&self, message: &DynamicMessage) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        self.check_into(message, "", None, &mut violations);
        violations
    }

    fn check_into(
        &self,
        message: &DynamicMessage,
        prefix: &str,
        only: Option<&HashSet<&str>>,
        out: &mut Vec<FieldViolation>,
    ) {
        let masked = self.mask.as_ref().and_then(|binding| {
            let paths = match message.get_field(&binding.mask).as_ref() {
                Value::Message(mask) => mask_paths(mask),
                _ => Vec::new(),
            };
            (!paths.is_empty()).then_some((binding.resource.number(), paths))
        });
        for compiled in &self.fields {
            if only.is_some_and(|names| !names.contains(compiled.field.name())) {
                continue;
            }
            // No allocation for a top-level field (the common case on a hot path).
            let path = join(prefix, compiled.field.name());
            let field_only = match &masked {
                Some((number, paths)) if *number == compiled.field.number() => {
                    Some(paths.iter().map(String::as_str).collect::<HashSet<_>>())
                }
                _ => None,
            };
            compiled.check(message, &path, field_only.as_ref(), out);
        }
    }
}

/// The first segments of a `google.protobuf.FieldMask`'s paths.
fn mask_paths(mask: &DynamicMessage) -> Vec<String> {
    match mask.get_field_by_name("paths").as_deref() {
        Some(Value::List(paths)) => paths
            .iter()
            .filter_map(Value::as_str)
            .map(|p| p.split('.').next().unwrap_or(p).to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

fn join<'n>(prefix: &str, name: &'n str) -> Cow<'n, str> {
    if prefix.is_empty() {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("{prefix}.{name}"))
    }
}

impl CompiledField {
    fn check(
        &self,
        message: &DynamicMessage,
        path: &str,
        only: Option<&HashSet<&str>>,
        out: &mut Vec<FieldViolation>,
    ) {
        let field = &self.field;
        let value = message.get_field(field);
        let present = if field.supports_presence() {
            message.has_field(field)
        } else {
            !is_zero(&value)
        };
        if self.rules.required && !present {
            out.push(FieldViolation::new(path, "is required"));
            return;
        }
        if !present && (field.supports_presence() || self.rules.ignore_zero) {
            return;
        }
        match value.as_ref() {
            Value::List(items) => {
                if let ValueRules::Repeated(rules) = &self.rules.value {
                    check_list(rules, items, path, out);
                }
                for (index, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{index}]");
                    if let ValueRules::Repeated(rules) = &self.rules.value {
                        if let Some(item_rules) = &rules.items {
                            if !(item_rules.ignore_zero && is_zero(item)) {
                                check_value(&item_rules.value, item, &item_path, out);
                            }
                        }
                    }
                    if let (Some(nested), Value::Message(item)) = (&self.nested, item) {
                        nested.check_into(item, &item_path, None, out);
                    }
                }
            }
            Value::Message(nested_message) => {
                if let Some(nested) = &self.nested {
                    nested.check_into(nested_message, path, only, out);
                }
            }
            other => check_value(&self.rules.value, other, path, out),
        }
    }
}

impl FieldRules {
    /// Whether a request must carry `field` (these being its rules): its zero value (unset: `""`,
    /// `0`, an absent message, an empty list) breaks them.
    pub fn refuses_zero(&self, field: &FieldDescriptor) -> bool {
        if self.required {
            return true;
        }
        if self.ignore_zero || field.is_map() || (field.supports_presence() && !field.is_list()) {
            return false;
        }
        if field.is_list() {
            return matches!(&self.value, ValueRules::Repeated(rules) if rules.min_items.is_some_and(|min| min > 0));
        }
        let mut violations = Vec::new();
        check_value(
            &self.value,
            &Value::default_value_for_field(field),
            "",
            &mut violations,
        );
        !violations.is_empty()
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::I32(n) | Value::EnumNumber(n) => *n == 0,
        Value::I64(n) => *n == 0,
        Value::U32(n) => *n == 0,
        Value::U64(n) => *n == 0,
        Value::F32(n) => *n == 0.0,
        Value::F64(n) => *n == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::List(items) => items.is_empty(),
        Value::Map(entries) => entries.is_empty(),
        Value::Message(_) => false,
    }
}

fn check_list(
    rules: &super::declared::RepeatedRules,
    items: &[Value],
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    let count = items.len() as u64;
    if let Some(min) = rules.min_items.filter(|min| count < *min) {
        out.push(FieldViolation::new(
            path,
            format!("must have at least {min} items, got {count}"),
        ));
    }
    if let Some(max) = rules.max_items.filter(|max| count > *max) {
        out.push(FieldViolation::new(
            path,
            format!("must have at most {max} items, got {count}"),
        ));
    }
    if rules.unique {
        for (index, item) in items.iter().enumerate() {
            if let Some(first) = items[..index].iter().position(|earlier| earlier == item) {
                out.push(FieldViolation::new(
                    format!("{path}[{index}]"),
                    format!("must be unique (repeats {path}[{first}])"),
                ));
            }
        }
    }
}

fn check_value(rules: &ValueRules, value: &Value, path: &str, out: &mut Vec<FieldViolation>) {
    let scalar = match value {
        Value::String(text) => Scalar::Text(text),
        Value::I32(n) => Scalar::Integer(i128::from(*n)),
        Value::I64(n) => Scalar::Integer(i128::from(*n)),
        Value::U32(n) => Scalar::Integer(i128::from(*n)),
        Value::U64(n) => Scalar::Integer(i128::from(*n)),
        Value::F32(n) => Scalar::Float(f64::from(*n)),
        Value::F64(n) => Scalar::Float(*n),
        Value::EnumNumber(n) => Scalar::Enum(*n),
        _ => Scalar::Other,
    };
    check_scalar(rules, scalar, path, out);
}

/// Compiles message rules, each message type once.
#[derive(Default)]
struct Compiler {
    done: HashMap<String, Option<Arc<MessageRules>>>,
    /// Messages being compiled (a message that holds itself).
    visiting: HashSet<String>,
}

impl Compiler {
    fn message(
        &mut self,
        message: &MessageDescriptor,
    ) -> Result<Option<Arc<MessageRules>>, RuleError> {
        let name = message.full_name().to_owned();
        if let Some(done) = self.done.get(&name) {
            return Ok(done.clone());
        }
        // The well-known types declare no rules.
        if message.package_name() == "google.protobuf" {
            return Ok(None);
        }
        if declares(&message.options(), MESSAGE_RULES_EXTENSION) {
            return Err(RuleError::new(
                name,
                "message rules ((buf.validate.message)) are not supported",
            ));
        }
        for oneof in message.oneofs() {
            if declares(&oneof.options(), ONEOF_RULES_EXTENSION) {
                return Err(RuleError::new(
                    oneof.full_name(),
                    "oneof rules ((buf.validate.oneof)) are not supported",
                ));
            }
        }
        if !self.visiting.insert(name.clone()) {
            // A message that holds itself: its rules are checked where the outer one is; a
            // recursion with rules is refused below when the outer one finishes.
            return Ok(None);
        }
        let mut fields = Vec::new();
        for field in message.fields() {
            let rules = FieldRules::declared(&field)?;
            let nested = match field.kind() {
                Kind::Message(inner) if field.is_map() => {
                    if map_has_rules(self, &inner)? {
                        return Err(RuleError::new(
                            field.full_name(),
                            "rules inside map values are not supported",
                        ));
                    }
                    None
                }
                Kind::Message(inner) => self.message(&inner)?,
                _ => None,
            };
            if rules.is_some() || nested.is_some() {
                fields.push(CompiledField {
                    field,
                    rules: rules.unwrap_or_default(),
                    nested,
                });
            }
        }
        self.visiting.remove(&name);
        let mask = mask_binding(message);
        let compiled = (!fields.is_empty()).then(|| {
            let wire = match mask {
                None => {
                    let ruled: Vec<_> = fields
                        .iter()
                        .map(|c| (c.field.number(), &c.rules, c.nested.is_some()))
                        .collect();
                    FlatRules::of(message, &ruled)
                }
                Some(_) => None,
            };
            Arc::new(MessageRules {
                descriptor: message.clone(),
                fields,
                mask,
                wire,
            })
        });
        if compiled.is_some() && holds_itself(message) {
            return Err(RuleError::new(
                name,
                "rules in a message that holds itself are not supported",
            ));
        }
        self.done.insert(name, compiled.clone());
        Ok(compiled)
    }
}

/// Whether a map's value message (its entry's `value` field) has rules.
fn map_has_rules(compiler: &mut Compiler, entry: &MessageDescriptor) -> Result<bool, RuleError> {
    for field in entry.fields() {
        if FieldRules::declared(&field)?.is_some() {
            return Ok(true);
        }
        if let Kind::Message(value) = field.kind() {
            if compiler.message(&value)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether `message` holds itself through its message fields.
fn holds_itself(message: &MessageDescriptor) -> bool {
    let mut seen = HashSet::new();
    let mut stack: Vec<MessageDescriptor> = vec![message.clone()];
    while let Some(current) = stack.pop() {
        for field in current.fields() {
            if let Kind::Message(inner) = field.kind() {
                if inner.full_name() == message.full_name() {
                    return true;
                }
                if seen.insert(inner.full_name().to_owned()) {
                    stack.push(inner);
                }
            }
        }
    }
    false
}

/// AIP-134: `update_mask` (a `google.protobuf.FieldMask`) and exactly one other singular message
/// field, the resource.
fn mask_binding(message: &MessageDescriptor) -> Option<MaskBinding> {
    let mask = message.get_field_by_name("update_mask").filter(|field| {
        !field.is_list()
            && matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
    })?;
    let mut resources = message.fields().filter(|field| {
        field.number() != mask.number()
            && !field.is_list()
            && !field.is_map()
            && matches!(field.kind(), Kind::Message(m) if m.package_name() != "google.protobuf")
    });
    let resource = resources.next()?;
    if resources.next().is_some() {
        return None;
    }
    Some(MaskBinding { mask, resource })
}
