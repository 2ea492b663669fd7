//! A method's messages as flat tables built once per route: every field with its number, both
//! names (and both as ready-written JSON keys), its kind and whether it has presence. The
//! encoder and the decoder read these instead of the descriptors, so a call walks no descriptor
//! and allocates no name.

use std::collections::HashMap;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};

/// The messages a route's request and response reach, by index; a message field names its
/// message by index, so recursive messages need no pointers.
#[derive(Debug, Default)]
pub(crate) struct MessagePlans {
    messages: Vec<MessagePlan>,
}

/// The index of a message in its [`MessagePlans`].
pub(crate) type MessageIndex = usize;

impl MessagePlans {
    /// Adds `message` and every message it reaches (once each), and gives the index of `message`.
    pub(crate) fn add(&mut self, message: &MessageDescriptor) -> MessageIndex {
        let mut known: HashMap<String, MessageIndex> = self
            .messages
            .iter()
            .enumerate()
            .map(|(index, plan)| (plan.full_name.clone(), index))
            .collect();
        self.add_known(message, &mut known)
    }

    fn add_known(
        &mut self,
        message: &MessageDescriptor,
        known: &mut HashMap<String, MessageIndex>,
    ) -> MessageIndex {
        if let Some(&index) = known.get(message.full_name()) {
            return index;
        }
        let index = self.messages.len();
        known.insert(message.full_name().to_owned(), index);
        self.messages.push(MessagePlan {
            full_name: message.full_name().to_owned(),
            fields: Vec::new(),
            by_name: HashMap::new(),
            oneofs: 0,
        });
        // Never reached through a field (see `plannable`); an entry keeps the indexes simple.
        if !plannable(message) {
            return index;
        }
        let mut fields: Vec<FieldDescriptor> = message.fields().collect();
        fields.sort_by_key(FieldDescriptor::number);
        let mut planned = Vec::with_capacity(fields.len());
        for field in &fields {
            let kind = self.kind_of(field, known);
            planned.push(FieldPlan::new(field, kind));
        }
        let mut by_name = HashMap::with_capacity(planned.len() * 2);
        // JSON names first, as prost-reflect reads: a proto name equal to another field's JSON
        // name does not take it.
        for (position, field) in planned.iter().enumerate() {
            by_name.insert(field.proto_name.clone(), position);
        }
        for (position, field) in planned.iter().enumerate() {
            by_name.insert(field.json_name.clone(), position);
        }
        let plan = &mut self.messages[index];
        plan.oneofs = message.oneofs().count();
        plan.fields = planned;
        plan.by_name = by_name;
        index
    }

    fn kind_of(
        &mut self,
        field: &FieldDescriptor,
        known: &mut HashMap<String, MessageIndex>,
    ) -> FieldKind {
        if field.is_map() || field.is_group() {
            return FieldKind::Unplanned;
        }
        match field.kind() {
            Kind::Double => FieldKind::Double,
            Kind::Float => FieldKind::Float,
            Kind::Int32 => FieldKind::Int32,
            Kind::Int64 => FieldKind::Int64,
            Kind::Uint32 => FieldKind::Uint32,
            Kind::Uint64 => FieldKind::Uint64,
            Kind::Sint32 => FieldKind::Sint32,
            Kind::Sint64 => FieldKind::Sint64,
            Kind::Fixed32 => FieldKind::Fixed32,
            Kind::Fixed64 => FieldKind::Fixed64,
            Kind::Sfixed32 => FieldKind::Sfixed32,
            Kind::Sfixed64 => FieldKind::Sfixed64,
            Kind::Bool => FieldKind::Bool,
            Kind::String => FieldKind::String,
            Kind::Bytes => FieldKind::Bytes,
            Kind::Enum(values) if values.full_name() == "google.protobuf.NullValue" => {
                FieldKind::Unplanned
            }
            Kind::Enum(values) => FieldKind::Enum(EnumPlan {
                default: values.default_value().number(),
                by_name: values
                    .values()
                    .map(|value| (value.name().into(), value.number()))
                    .collect(),
                // With `allow_alias`, a number's name is the one prost-reflect writes.
                by_number: values
                    .values()
                    .filter_map(|value| {
                        let written = values.get_value(value.number())?;
                        (written.name() == value.name())
                            .then(|| (value.number(), value.name().into()))
                    })
                    .collect(),
            }),
            Kind::Message(message) if !plannable(&message) => FieldKind::Unplanned,
            Kind::Message(message) => FieldKind::Message(self.add_known(&message, known)),
        }
    }

    /// The message at `index`.
    pub(crate) fn message(&self, index: MessageIndex) -> &MessagePlan {
        &self.messages[index]
    }
}

/// One message's fields.
#[derive(Debug)]
pub(crate) struct MessagePlan {
    full_name: String,
    /// In field-number order.
    fields: Vec<FieldPlan>,
    /// Position in `fields` by JSON name and by proto name.
    by_name: HashMap<Box<str>, usize>,
    /// How many oneofs (proto3 `optional` fields' synthetic ones included) the message has.
    oneofs: usize,
}

impl MessagePlan {
    /// The fields, in field-number order.
    pub(crate) fn fields(&self) -> &[FieldPlan] {
        &self.fields
    }

    /// The position of the field named `name` (JSON name or proto name).
    pub(crate) fn by_name(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The position of the field numbered `number`.
    pub(crate) fn by_number(&self, number: u32) -> Option<usize> {
        self.fields
            .binary_search_by_key(&number, |field| field.number)
            .ok()
    }

    /// How many oneofs the message has.
    pub(crate) fn oneofs(&self) -> usize {
        self.oneofs
    }
}

/// One field.
#[derive(Debug)]
pub(crate) struct FieldPlan {
    /// The field number.
    pub(crate) number: u32,
    /// The proto name (`display_name`).
    pub(crate) proto_name: Box<str>,
    /// The JSON name (`displayName`).
    pub(crate) json_name: Box<str>,
    /// `"displayName":`, escaped as JSON.
    pub(crate) json_key: Box<str>,
    /// `"display_name":`, escaped as JSON.
    pub(crate) proto_key: Box<str>,
    /// What the field holds.
    pub(crate) kind: FieldKind,
    /// A repeated field (maps included).
    pub(crate) list: bool,
    /// A map field.
    pub(crate) map: bool,
    /// The field tells "unset" from its default (a message, a oneof member, proto3 `optional`).
    pub(crate) presence: bool,
    /// The oneof the field is a member of (its index in the message).
    pub(crate) oneof: Option<usize>,
}

impl FieldPlan {
    fn new(field: &FieldDescriptor, kind: FieldKind) -> Self {
        let key = |name: &str| -> Box<str> {
            let mut key = serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""));
            key.push(':');
            key.into()
        };
        Self {
            number: field.number(),
            proto_name: field.name().into(),
            json_name: field.json_name().into(),
            json_key: key(field.json_name()),
            proto_key: key(field.name()),
            kind,
            list: field.cardinality() == Cardinality::Repeated,
            map: field.is_map(),
            presence: field.supports_presence(),
            oneof: field.containing_oneof().and_then(|oneof| {
                field
                    .parent_message()
                    .oneofs()
                    .position(|candidate| candidate.name() == oneof.name())
            }),
        }
    }

    /// The field's protobuf wire type for one value (packed lists aside).
    pub(crate) fn wire_type(&self) -> u32 {
        self.kind.wire_type()
    }

    /// The JSON key for this field, with its `:`.
    pub(crate) fn key(&self, proto_names: bool) -> &str {
        if proto_names {
            &self.proto_key
        } else {
            &self.json_key
        }
    }
}

/// What a field holds, as the wire and JSON forms see it.
#[derive(Debug)]
pub(crate) enum FieldKind {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum(EnumPlan),
    /// A message of the same [`MessagePlans`].
    Message(MessageIndex),
    /// A map, a group, a well-known type, `NullValue`: left to the descriptor-driven transcoder.
    Unplanned,
}

/// Wire type of a varint.
pub(crate) const VARINT: u32 = 0;
/// Wire type of an 8-byte value.
pub(crate) const FIXED64: u32 = 1;
/// Wire type of a length-delimited value.
pub(crate) const LENGTH_DELIMITED: u32 = 2;
/// Wire type of a 4-byte value.
pub(crate) const FIXED32: u32 = 5;

impl FieldKind {
    fn wire_type(&self) -> u32 {
        match self {
            Self::Double | Self::Fixed64 | Self::Sfixed64 => FIXED64,
            Self::Float | Self::Fixed32 | Self::Sfixed32 => FIXED32,
            Self::String | Self::Bytes | Self::Message(_) | Self::Unplanned => LENGTH_DELIMITED,
            Self::Int32
            | Self::Int64
            | Self::Uint32
            | Self::Uint64
            | Self::Sint32
            | Self::Sint64
            | Self::Bool
            | Self::Enum(_) => VARINT,
        }
    }

    /// A scalar that a repeated field may pack.
    pub(crate) fn packable(&self) -> bool {
        !matches!(
            self,
            Self::String | Self::Bytes | Self::Message(_) | Self::Unplanned
        )
    }
}

/// An enum's values.
#[derive(Debug)]
pub(crate) struct EnumPlan {
    /// The number of its default (first) value.
    pub(crate) default: i32,
    /// Every value's name and number.
    by_name: Vec<(Box<str>, i32)>,
    /// Each number once, with the name prost-reflect writes for it (aliases share a number).
    by_number: Vec<(i32, Box<str>)>,
}

impl EnumPlan {
    /// The number of the value named `name`.
    pub(crate) fn number(&self, name: &str) -> Option<i32> {
        self.by_name
            .iter()
            .find(|(value, _)| &**value == name)
            .map(|(_, number)| *number)
    }

    /// The name written for the number `number`.
    pub(crate) fn name(&self, number: i32) -> Option<&str> {
        self.by_number
            .iter()
            .find(|(value, _)| *value == number)
            .map(|(_, name)| &**name)
    }
}

/// Whether a message's JSON is the plain object of its fields, as the plans write it: not a
/// well-known type (they have JSON forms of their own), and not extended (prost-reflect writes
/// extensions too, as `[pkg.ext]` keys).
pub(crate) fn plannable(message: &MessageDescriptor) -> bool {
    !message.full_name().starts_with("google.protobuf.") && message.extensions().len() == 0
}
