//! A request's rules checked on its wire bytes, without decoding it into a `DynamicMessage`: the
//! hot path of [`MessageRules::passes_on_wire`](super::MessageRules::passes_on_wire).
//!
//! It takes flat messages only: proto3, every field a singular scalar whose default is its zero
//! (no message, list, map or group fields, no oneof but proto3 `optional`'s own, no extensions),
//! at most 64 fields numbered below 1024.
//! It answers only "passes"; on anything else — a violation, bytes the decoder would refuse or
//! read in a way this scan does not follow (a wrong wire type, invalid UTF-8 in a string, a
//! group, a malformed varint or length) — it answers "undecided", and the caller decodes the
//! message and checks it the full way, which words every error. A field given more than once is
//! judged by its last value, the one the decoder keeps.

use prost_reflect::{Kind, MessageDescriptor, Syntax, Value};

use super::declared::FieldRules;
use super::value::{check_scalar, Scalar};
use crate::status::FieldViolation;

/// Most fields a flat message may have (presence is kept in a `u64`).
const MOST_FIELDS: usize = 64;
/// Field numbers at or above this make the message not flat (the lookup table's size).
const NUMBER_BOUND: u32 = 1024;

/// The rules of a flat message (module docs), by field number.
#[derive(Debug)]
pub(super) struct FlatRules {
    /// Index into `fields` by field number, `u8::MAX` for an unknown number.
    by_number: Vec<u8>,
    fields: Vec<FlatField>,
    /// Bit `i`: field `i` with rules must be seen for the message to pass (its absence breaks
    /// them).
    needed: u64,
}

#[derive(Debug)]
struct FlatField {
    kind: ScalarKind,
    /// Whether the field has explicit presence (proto3 `optional`).
    presence: bool,
    /// The field's rules, if it has any.
    rules: Option<FieldRules>,
}

/// How a scalar field is written on the wire and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScalarKind {
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Bool,
    Enum,
    Fixed32,
    Sfixed32,
    Float,
    Fixed64,
    Sfixed64,
    Double,
    String,
    Bytes,
}

/// A value read from the wire before its field's kind gives it a meaning.
enum Raw<'b> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Len(&'b [u8]),
}

impl FlatRules {
    /// The wire rules of `message` whose fields with rules are `ruled` (number, rules, whether
    /// its message type has rules of its own), `None` when it is not flat.
    pub(super) fn of(
        message: &MessageDescriptor,
        ruled: &[(u32, &FieldRules, bool)],
    ) -> Option<Self> {
        // Extensions are typed by the decoder but would be skipped here as unknown fields.
        if message.parent_file().syntax() != Syntax::Proto3
            || message.oneofs().any(|oneof| !oneof.is_synthetic())
            || message.fields().len() > MOST_FIELDS
            || message.extensions().next().is_some()
        {
            return None;
        }
        let mut by_number = Vec::new();
        let mut fields = Vec::new();
        let mut needed = 0u64;
        for field in message.fields() {
            if field.is_list() || field.is_map() || field.number() >= NUMBER_BOUND {
                return None;
            }
            let kind = ScalarKind::of(&field.kind())?;
            // An absent field is read here as its type's zero; a descriptor set built by hand
            // may give it another default (a proto2 enum, a `default_value`).
            let zero_default = match Value::default_value_for_field(&field) {
                Value::EnumNumber(number) => number == 0,
                default => default == Value::default_value(&field.kind()),
            };
            if !zero_default {
                return None;
            }
            let ruled = ruled.iter().find(|(number, ..)| *number == field.number());
            if ruled.is_some_and(|(_, _, nested)| *nested) {
                return None;
            }
            let flat = FlatField {
                kind,
                presence: field.supports_presence(),
                rules: ruled.map(|(_, rules, _)| (*rules).clone()),
            };
            // What an absent field is: unset, or its zero value.
            if flat.rules.is_some() && !flat.passes(None) {
                needed |= 1 << fields.len();
            }
            let number = field.number() as usize;
            if by_number.len() <= number {
                by_number.resize(number + 1, u8::MAX);
            }
            by_number[number] = u8::try_from(fields.len()).ok()?;
            fields.push(flat);
        }
        Some(Self {
            by_number,
            fields,
            needed,
        })
    }

    /// Whether `bytes`, a message of this type, surely passes (module docs).
    pub(super) fn passes(&self, mut bytes: &[u8]) -> bool {
        // Bit `i`: field `i` was seen; its last value breaks its rules.
        let (mut seen, mut failing) = (0u64, 0u64);
        while !bytes.is_empty() {
            let Some(tag) = varint(&mut bytes) else {
                return false;
            };
            let Ok(number) = u32::try_from(tag >> 3) else {
                return false;
            };
            if number == 0 || number > 536_870_911 {
                return false;
            }
            let Some(raw) = raw_value(tag & 7, &mut bytes) else {
                return false;
            };
            let index = self
                .by_number
                .get(number as usize)
                .copied()
                .unwrap_or(u8::MAX);
            let Some(field) = self.fields.get(usize::from(index)) else {
                continue; // an unknown field, kept aside by the decoder
            };
            let Some(value) = field.kind.read(&raw) else {
                return false;
            };
            if field.rules.is_some() {
                let bit = 1u64 << index;
                seen |= bit;
                if field.passes(Some(value)) {
                    failing &= !bit;
                } else {
                    failing |= bit;
                }
            }
        }
        failing == 0 && self.needed & !seen == 0
    }
}

impl FlatField {
    /// Whether the field passes its rules with `value` as its last value (`None`: absent), as
    /// the check of a decoded message judges it (a field without rules passes).
    fn passes(&self, value: Option<WireValue<'_>>) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let value = match value {
            Some(value) => value,
            None if self.presence => return !rules.required,
            None => self.kind.zero(),
        };
        let present = self.presence || !value.is_zero();
        if rules.required && !present {
            return false;
        }
        if !present && rules.ignore_zero {
            return true;
        }
        let mut violations: Vec<FieldViolation> = Vec::new();
        check_scalar(&rules.value, value.scalar, "", &mut violations);
        violations.is_empty()
    }
}

/// A field's value read from the wire.
#[derive(Clone, Copy)]
struct WireValue<'b> {
    scalar: Scalar<'b>,
    zero: bool,
}

impl WireValue<'_> {
    fn is_zero(&self) -> bool {
        self.zero
    }
}

impl ScalarKind {
    fn of(kind: &Kind) -> Option<Self> {
        Some(match kind {
            Kind::Int32 => Self::Int32,
            Kind::Int64 => Self::Int64,
            Kind::Uint32 => Self::Uint32,
            Kind::Uint64 => Self::Uint64,
            Kind::Sint32 => Self::Sint32,
            Kind::Sint64 => Self::Sint64,
            Kind::Bool => Self::Bool,
            Kind::Enum(_) => Self::Enum,
            Kind::Fixed32 => Self::Fixed32,
            Kind::Sfixed32 => Self::Sfixed32,
            Kind::Float => Self::Float,
            Kind::Fixed64 => Self::Fixed64,
            Kind::Sfixed64 => Self::Sfixed64,
            Kind::Double => Self::Double,
            Kind::String => Self::String,
            Kind::Bytes => Self::Bytes,
            Kind::Message(_) => return None,
        })
    }

    /// The value of an unset field.
    fn zero(self) -> WireValue<'static> {
        let scalar = match self {
            Self::Float | Self::Double => Scalar::Float(0.0),
            Self::Enum => Scalar::Enum(0),
            Self::String => Scalar::Text(""),
            Self::Bool | Self::Bytes => Scalar::Other,
            _ => Scalar::Integer(0),
        };
        WireValue { scalar, zero: true }
    }

    /// `raw` read as this kind, as prost reads it; `None` for a wire type the decoder refuses
    /// for it, or a string that is not UTF-8.
    fn read<'b>(self, raw: &Raw<'b>) -> Option<WireValue<'b>> {
        let integer = |n: i128| WireValue {
            scalar: Scalar::Integer(n),
            zero: n == 0,
        };
        let float = |n: f64| WireValue {
            scalar: Scalar::Float(n),
            zero: n == 0.0,
        };
        // Truncations and reinterpretations are the decoder's own (`as`, as prost reads them).
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        Some(match (self, raw) {
            (Self::Int32, Raw::Varint(n)) => integer(i128::from(*n as i32)),
            (Self::Int64, Raw::Varint(n)) => integer(i128::from(*n as i64)),
            (Self::Uint32, Raw::Varint(n)) => integer(i128::from(*n as u32)),
            (Self::Uint64, Raw::Varint(n)) => integer(i128::from(*n)),
            (Self::Sint32, Raw::Varint(n)) => {
                let n = *n as u32;
                integer(i128::from((n >> 1) as i32 ^ -((n & 1) as i32)))
            }
            (Self::Sint64, Raw::Varint(n)) => {
                integer(i128::from((n >> 1) as i64 ^ -((n & 1) as i64)))
            }
            (Self::Bool, Raw::Varint(n)) => WireValue {
                scalar: Scalar::Other,
                zero: *n == 0,
            },
            (Self::Enum, Raw::Varint(n)) => {
                let n = *n as i32;
                WireValue {
                    scalar: Scalar::Enum(n),
                    zero: n == 0,
                }
            }
            (Self::Fixed32, Raw::Fixed32(n)) => integer(i128::from(*n)),
            (Self::Sfixed32, Raw::Fixed32(n)) => integer(i128::from(*n as i32)),
            (Self::Float, Raw::Fixed32(n)) => float(f64::from(f32::from_bits(*n))),
            (Self::Fixed64, Raw::Fixed64(n)) => integer(i128::from(*n)),
            (Self::Sfixed64, Raw::Fixed64(n)) => integer(i128::from(*n as i64)),
            (Self::Double, Raw::Fixed64(n)) => float(f64::from_bits(*n)),
            (Self::String, Raw::Len(bytes)) => {
                let text = std::str::from_utf8(bytes).ok()?;
                WireValue {
                    scalar: Scalar::Text(text),
                    zero: text.is_empty(),
                }
            }
            (Self::Bytes, Raw::Len(bytes)) => WireValue {
                scalar: Scalar::Other,
                zero: bytes.is_empty(),
            },
            _ => return None,
        })
    }
}

/// The value after a tag of wire type `wire_type`; `None` for groups, unknown wire types and
/// values cut short.
fn raw_value<'b>(wire_type: u64, bytes: &mut &'b [u8]) -> Option<Raw<'b>> {
    match wire_type {
        0 => varint(bytes).map(Raw::Varint),
        1 => {
            let (value, rest) = bytes.split_first_chunk::<8>()?;
            *bytes = rest;
            Some(Raw::Fixed64(u64::from_le_bytes(*value)))
        }
        2 => {
            let length = usize::try_from(varint(bytes)?).ok()?;
            if length > bytes.len() {
                return None;
            }
            let (value, rest) = bytes.split_at(length);
            *bytes = rest;
            Some(Raw::Len(value))
        }
        5 => {
            let (value, rest) = bytes.split_first_chunk::<4>()?;
            *bytes = rest;
            Some(Raw::Fixed32(u32::from_le_bytes(*value)))
        }
        _ => None,
    }
}

/// A varint, read by prost's own decoder (at most ten bytes, the tenth at most 1), so that it
/// refuses exactly what the decoder refuses.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    prost::encoding::decode_varint(bytes).ok()
}
