//! JSON straight to protobuf wire bytes: the body is read once by serde_json's streaming reader,
//! each key looked up in the message's [`MessagePlan`], each value written as it is read. No
//! `serde_json::Value` and no `DynamicMessage` is built.
//!
//! The encoder takes only what it can write exactly as the descriptor-driven transcoder would
//! read it. Anything else — malformed JSON, an unknown key, a field given twice (under either
//! name) or two members of one oneof, `null`, a number in a form other than the plain one, bytes,
//! maps, well-known types — makes it give up ([`GiveUp`]) and the caller transcodes the request
//! the old way, which also words every error. So the two always agree on what they both accept,
//! and errors stay exactly as they were.

use std::fmt;

use prost::encoding::encode_varint;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::plan::{FieldKind, FieldPlan, MessageIndex, MessagePlans, LENGTH_DELIMITED};

/// The direct encoder gave up on this input: transcode it the descriptor-driven way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GiveUp;

/// Appends the JSON object `body` as message `message`, encoded, to `out`.
pub(crate) fn encode_json(
    plans: &MessagePlans,
    message: MessageIndex,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), GiveUp> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    MessageSeed {
        plans,
        message,
        out,
    }
    .deserialize(&mut reader)
    .and_then(|()| reader.end())
    .map_err(|_| GiveUp)
}

/// Appends `text`, a value given as text (a path binding), to `out` as the field at `path`
/// (field names, from `message`): intermediate messages are written around it. Only singular
/// fields of strings, integers, bools and enums are taken.
pub(crate) fn encode_text_at(
    plans: &MessagePlans,
    message: MessageIndex,
    path: &[String],
    text: &str,
    out: &mut Vec<u8>,
) -> Result<(), GiveUp> {
    let Some((last, outer)) = path.split_last() else {
        return Err(GiveUp);
    };
    let field_named = |message: MessageIndex, name: &str| {
        let plan = plans.message(message);
        plan.by_name(name).map(|position| &plan.fields()[position])
    };
    let mut fields = Vec::with_capacity(path.len());
    let mut current = message;
    for name in outer {
        let field = field_named(current, name).ok_or(GiveUp)?;
        let FieldKind::Message(next) = field.kind else {
            return Err(GiveUp);
        };
        if field.list || field.oneof.is_some() {
            return Err(GiveUp);
        }
        fields.push(field);
        current = next;
    }
    let leaf = field_named(current, last).ok_or(GiveUp)?;
    if leaf.list || leaf.oneof.is_some() {
        return Err(GiveUp);
    }
    let starts: Vec<usize> = fields
        .iter()
        .map(|field| {
            write_tag(out, field.number, LENGTH_DELIMITED);
            out.len()
        })
        .collect();
    write_tag(out, leaf.number, leaf.wire_type());
    write_text(&leaf.kind, text, out)?;
    for start in starts.into_iter().rev() {
        close_length(out, start);
    }
    Ok(())
}

/// A value given as text, by its field's kind.
fn write_text(kind: &FieldKind, text: &str, out: &mut Vec<u8>) -> Result<(), GiveUp> {
    match kind {
        FieldKind::String => {
            write_bytes(out, text.as_bytes());
            Ok(())
        }
        FieldKind::Bool => match text {
            "true" => write_scalar(kind, Number::Unsigned(1), out),
            "false" => write_scalar(kind, Number::Unsigned(0), out),
            _ => Err(GiveUp),
        },
        FieldKind::Enum(values) => {
            let number = values.number(text).ok_or(GiveUp)?;
            write_scalar(kind, Number::Signed(i64::from(number)), out)
        }
        FieldKind::Int32
        | FieldKind::Int64
        | FieldKind::Uint32
        | FieldKind::Uint64
        | FieldKind::Sint32
        | FieldKind::Sint64
        | FieldKind::Fixed32
        | FieldKind::Fixed64
        | FieldKind::Sfixed32
        | FieldKind::Sfixed64 => write_scalar(kind, plain_integer(text)?, out),
        _ => Err(GiveUp),
    }
}

/// An integer written plainly in decimal (`-12`, `0`; no sign `+`, no `-0`, no leading zero, no
/// space).
fn plain_integer(text: &str) -> Result<Number, GiveUp> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !digits.starts_with('0'));
    if !plain {
        return Err(GiveUp);
    }
    if text.starts_with('-') {
        text.parse().map(Number::Signed).map_err(|_| GiveUp)
    } else {
        text.parse().map(Number::Unsigned).map_err(|_| GiveUp)
    }
}

/// A JSON number as read.
#[derive(Debug, Clone, Copy)]
enum Number {
    Signed(i64),
    Unsigned(u64),
    Float(f64),
}

impl Number {
    fn as_i64(self) -> Option<i64> {
        match self {
            Self::Signed(n) => Some(n),
            Self::Unsigned(n) => i64::try_from(n).ok(),
            Self::Float(_) => None,
        }
    }

    fn as_u64(self) -> Option<u64> {
        match self {
            Self::Signed(n) => u64::try_from(n).ok(),
            Self::Unsigned(n) => Some(n),
            Self::Float(_) => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            // As prost-reflect reads integers into `double` fields.
            #[allow(clippy::cast_precision_loss)]
            Self::Signed(n) => n as f64,
            #[allow(clippy::cast_precision_loss)]
            Self::Unsigned(n) => n as f64,
            Self::Float(n) => n,
        }
    }
}

/// Writes a numeric (or bool, or enum) value of `kind`, in range.
fn write_scalar(kind: &FieldKind, number: Number, out: &mut Vec<u8>) -> Result<(), GiveUp> {
    let int32 = || {
        number
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(GiveUp)
    };
    let uint32 = || {
        number
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(GiveUp)
    };
    match kind {
        FieldKind::Int32 => encode_varint(i64::from(int32()?) as u64, out),
        FieldKind::Sint32 => encode_varint(u64::from(zigzag32(int32()?)), out),
        FieldKind::Sfixed32 => out.extend_from_slice(&int32()?.to_le_bytes()),
        FieldKind::Uint32 => encode_varint(u64::from(uint32()?), out),
        FieldKind::Fixed32 => out.extend_from_slice(&uint32()?.to_le_bytes()),
        FieldKind::Int64 => encode_varint(number.as_i64().ok_or(GiveUp)? as u64, out),
        FieldKind::Sint64 => encode_varint(zigzag64(number.as_i64().ok_or(GiveUp)?), out),
        FieldKind::Sfixed64 => out.extend_from_slice(&number.as_i64().ok_or(GiveUp)?.to_le_bytes()),
        FieldKind::Uint64 => encode_varint(number.as_u64().ok_or(GiveUp)?, out),
        FieldKind::Fixed64 => out.extend_from_slice(&number.as_u64().ok_or(GiveUp)?.to_le_bytes()),
        FieldKind::Bool => encode_varint(number.as_u64().ok_or(GiveUp)?, out),
        FieldKind::Enum(_) => encode_varint(i64::from(int32()?) as u64, out),
        FieldKind::Double => out.extend_from_slice(&number.as_f64().to_le_bytes()),
        FieldKind::Float => {
            // As prost-reflect reads them: integers straight to f32 (rounded once), decimals
            // range-checked, then rounded.
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let value = match number {
                Number::Signed(n) => n as f32,
                Number::Unsigned(n) => n as f32,
                Number::Float(value) => {
                    if !(f64::from(f32::MIN)..=f64::from(f32::MAX)).contains(&value) {
                        return Err(GiveUp);
                    }
                    value as f32
                }
            };
            out.extend_from_slice(&value.to_le_bytes());
        }
        FieldKind::String | FieldKind::Bytes | FieldKind::Message(_) | FieldKind::Unplanned => {
            return Err(GiveUp)
        }
    }
    Ok(())
}

fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}

fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn write_tag(out: &mut Vec<u8>, number: u32, wire_type: u32) {
    encode_varint(u64::from(number) << 3 | u64::from(wire_type), out);
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Puts the length of what was written since `start` in front of it, as a varint.
fn close_length(out: &mut Vec<u8>, start: usize) {
    let length = out.len() - start;
    let mut prefix = [0u8; 10];
    let mut cursor = &mut prefix[..];
    encode_varint(length as u64, &mut cursor);
    let written = 10 - cursor.len();
    out.extend_from_slice(&prefix[..written]);
    out[start..].rotate_right(written);
}

/// Any failure inside serde: the encoder gives up, so its words do not matter.
fn give_up<E: de::Error>() -> E {
    E::custom("not for the direct encoder")
}

/// Reads one JSON object as the fields of `message`, writing them to `out`.
struct MessageSeed<'p, 'o> {
    plans: &'p MessagePlans,
    message: MessageIndex,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let plan = self.plans.message(self.message);
        let mut seen = Seen::new(plan.fields().len());
        let mut oneofs = Seen::new(plan.oneofs());
        while let Some(position) = map.next_key_seed(KeySeed {
            plans: self.plans,
            message: self.message,
        })? {
            let field = &plan.fields()[position];
            if !seen.insert(position) {
                return Err(give_up());
            }
            if let Some(oneof) = field.oneof {
                if !oneofs.insert(oneof) {
                    return Err(give_up());
                }
            }
            map.next_value_seed(FieldSeed {
                plans: self.plans,
                field,
                out: self.out,
            })?;
        }
        Ok(())
    }
}

/// Which of a message's fields (or oneofs) were given.
enum Seen {
    Few(u64),
    Many(Vec<bool>),
}

impl Seen {
    fn new(count: usize) -> Self {
        if count <= 64 {
            Self::Few(0)
        } else {
            Self::Many(vec![false; count])
        }
    }

    /// Marks `index`; false if it was already marked.
    fn insert(&mut self, index: usize) -> bool {
        match self {
            Self::Few(bits) => {
                let bit = 1u64 << index;
                let fresh = *bits & bit == 0;
                *bits |= bit;
                fresh
            }
            Self::Many(flags) => !std::mem::replace(&mut flags[index], true),
        }
    }
}

/// A key: the position of the field it names (JSON or proto name).
struct KeySeed<'p> {
    plans: &'p MessagePlans,
    message: MessageIndex,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<usize, E> {
        self.plans
            .message(self.message)
            .by_name(name)
            .ok_or_else(give_up)
    }
}

/// A field's value: a list for a repeated field, else one value.
struct FieldSeed<'p, 'o> {
    plans: &'p MessagePlans,
    field: &'p FieldPlan,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // Maps and lists of well-known types: not even an empty one (`[]` is no map).
        if matches!(self.field.kind, FieldKind::Unplanned) {
            return Err(give_up());
        }
        let value = ValueSeed {
            plans: self.plans,
            field: self.field,
            out: self.out,
        };
        if self.field.list {
            deserializer.deserialize_seq(ListSeed(value))
        } else {
            value.deserialize(deserializer)
        }
    }
}

/// A repeated field's JSON array: each element written with its own tag (unpacked, which every
/// protobuf reader takes for packed fields too).
struct ListSeed<'p, 'o>(ValueSeed<'p, 'o>);

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ValueSeed { plans, field, out } = self.0;
        while seq
            .next_element_seed(ValueSeed {
                plans,
                field,
                out: &mut *out,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One value of a field, written with the field's tag.
struct ValueSeed<'p, 'o> {
    plans: &'p MessagePlans,
    field: &'p FieldPlan,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.field.kind {
            FieldKind::Message(message) => {
                write_tag(self.out, self.field.number, LENGTH_DELIMITED);
                let start = self.out.len();
                MessageSeed {
                    plans: self.plans,
                    message,
                    out: &mut *self.out,
                }
                .deserialize(deserializer)?;
                close_length(self.out, start);
                Ok(())
            }
            FieldKind::Bytes | FieldKind::Unplanned => Err(give_up()),
            _ => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        if !matches!(self.field.kind, FieldKind::Bool) {
            return Err(give_up());
        }
        write_tag(self.out, self.field.number, self.field.wire_type());
        self.out.push(u8::from(value));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.number(Number::Signed(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.number(Number::Unsigned(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        if !matches!(self.field.kind, FieldKind::Double | FieldKind::Float) {
            return Err(give_up());
        }
        self.number(Number::Float(value))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        match &self.field.kind {
            FieldKind::String => {
                write_tag(self.out, self.field.number, LENGTH_DELIMITED);
                write_bytes(self.out, text.as_bytes());
                Ok(())
            }
            FieldKind::Enum(values) => {
                let number = values.number(text).ok_or_else(give_up)?;
                write_tag(self.out, self.field.number, self.field.wire_type());
                encode_varint(i64::from(number) as u64, self.out);
                Ok(())
            }
            // 64-bit integers come as strings in the JSON mapping.
            FieldKind::Int64
            | FieldKind::Uint64
            | FieldKind::Sint64
            | FieldKind::Fixed64
            | FieldKind::Sfixed64 => {
                let number = plain_integer(text).map_err(|GiveUp| give_up())?;
                self.number(number)
            }
            _ => Err(give_up()),
        }
    }
}

impl ValueSeed<'_, '_> {
    fn number<E: de::Error>(self, number: Number) -> Result<(), E> {
        // Enums by number and bools as numbers are left to the full transcoder.
        if matches!(self.field.kind, FieldKind::Enum(_) | FieldKind::Bool) {
            return Err(give_up());
        }
        let start = self.out.len();
        write_tag(self.out, self.field.number, self.field.wire_type());
        if write_scalar(&self.field.kind, number, self.out).is_err() {
            self.out.truncate(start);
            return Err(give_up());
        }
        Ok(())
    }
}
