//! Protobuf wire bytes straight to JSON: fields are read in the order they come and written as
//! they are read, by the message's [`MessagePlan`]; no `DynamicMessage` is built.
//!
//! The JSON is byte for byte what the descriptor-driven path writes (prost-reflect's serializer
//! with the gateway's options): fields in field-number order, default values left out (or
//! written, with `emit_defaults`), 64-bit integers as strings, enums by name, bytes in standard
//! base64, floats as serde_json writes them. The decoder gives up ([`GiveUp`]) on what it would
//! have to reorder or merge — fields out of number order, a singular field given twice, two
//! members of one oneof — and on maps, well-known types and malformed input; the caller then
//! decodes the message the old way, which also words every error.

use base64::Engine;
use prost::encoding::decode_varint;
use serde::Serializer;

use super::encode::GiveUp;
use super::plan::{
    FieldKind, FieldPlan, MessageIndex, MessagePlans, FIXED32, FIXED64, LENGTH_DELIMITED, VARINT,
};

/// Nesting depth past which the decoder gives up (prost's own decoding limit, so the
/// descriptor-driven path then refuses the message as it always did): a deeply nested answer
/// must not exhaust the stack.
const MAX_DEPTH: u32 = 100;

/// How the JSON is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JsonStyle {
    /// Keys by proto name instead of JSON name.
    pub(crate) proto_names: bool,
    /// Fields without presence written even when they hold their default.
    pub(crate) emit_defaults: bool,
}

/// Appends message `message`, encoded as `wire`, to `out` as JSON.
pub(crate) fn decode_to_json(
    plans: &MessagePlans,
    message: MessageIndex,
    wire: &[u8],
    style: JsonStyle,
    out: &mut Vec<u8>,
) -> Result<(), GiveUp> {
    MessageWriter {
        plans,
        style,
        out,
        wrote_field: false,
        depth: 0,
    }
    .message(message, wire)
}

/// One value as read off the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Delimited(&'a [u8]),
}

/// Reads the next field (its number and value) from `input`.
fn next_field<'a>(input: &mut &'a [u8]) -> Result<(u32, Wire<'a>), GiveUp> {
    let key = u32::try_from(decode_varint(input).map_err(|_| GiveUp)?).map_err(|_| GiveUp)?;
    let number = key >> 3;
    if number == 0 {
        return Err(GiveUp);
    }
    let value = match key & 7 {
        VARINT => Wire::Varint(decode_varint(input).map_err(|_| GiveUp)?),
        FIXED64 => Wire::Fixed64(u64::from_le_bytes(take::<8>(input)?)),
        FIXED32 => Wire::Fixed32(u32::from_le_bytes(take::<4>(input)?)),
        LENGTH_DELIMITED => {
            let length =
                usize::try_from(decode_varint(input).map_err(|_| GiveUp)?).map_err(|_| GiveUp)?;
            if length > input.len() {
                return Err(GiveUp);
            }
            let (value, rest) = input.split_at(length);
            *input = rest;
            Wire::Delimited(value)
        }
        // Groups, and wire types that do not exist.
        _ => return Err(GiveUp),
    };
    Ok((number, value))
}

fn take<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], GiveUp> {
    let (head, rest) = input.split_first_chunk::<N>().ok_or(GiveUp)?;
    *input = rest;
    Ok(*head)
}

struct MessageWriter<'p, 'o> {
    plans: &'p MessagePlans,
    style: JsonStyle,
    out: &'o mut Vec<u8>,
    /// Whether the object being written has an entry yet (for commas).
    wrote_field: bool,
    /// How many messages the one being written is nested in.
    depth: u32,
}

impl MessageWriter<'_, '_> {
    fn message(&mut self, message: MessageIndex, wire: &[u8]) -> Result<(), GiveUp> {
        if self.depth >= MAX_DEPTH {
            return Err(GiveUp);
        }
        self.depth += 1;
        let written = self.fields(message, wire);
        self.depth -= 1;
        written
    }

    /// One message's fields, as a JSON object.
    fn fields(&mut self, message: MessageIndex, mut wire: &[u8]) -> Result<(), GiveUp> {
        let plan = self.plans.message(message);
        let fields = plan.fields();
        let outer = std::mem::replace(&mut self.wrote_field, false);
        self.out.push(b'{');
        // Fields before `next` are done; `open` is the repeated field whose array is open.
        let mut next = 0;
        let mut open: Option<usize> = None;
        let mut oneof_set: u64 = 0;
        while !wire.is_empty() {
            let (number, value) = next_field(&mut wire)?;
            let Some(position) = plan.by_number(number) else {
                // Unknown fields are left out of the JSON, as prost-reflect does.
                continue;
            };
            let field = &fields[position];
            if !fits(field, value) {
                return Err(GiveUp);
            }
            if open == Some(position) {
                self.list_items(field, value)?;
                continue;
            }
            if position < next {
                // Out of number order, or a singular field (or a list) given twice.
                return Err(GiveUp);
            }
            if let Some(list) = open.take() {
                self.close_list(&fields[list]);
            }
            for skipped in &fields[next..position] {
                self.default_of(skipped)?;
            }
            next = position + 1;
            if let Some(oneof) = field.oneof {
                let bit = 1u64.checked_shl(u32::try_from(oneof).map_err(|_| GiveUp)?);
                let bit = bit.ok_or(GiveUp)?;
                if oneof_set & bit != 0 {
                    return Err(GiveUp);
                }
                oneof_set |= bit;
            }
            if field.list {
                open = Some(position);
                self.open_list(field);
                self.list_items(field, value)?;
            } else {
                self.singular(field, value)?;
            }
        }
        if let Some(list) = open.take() {
            self.close_list(&fields[list]);
        }
        for skipped in &fields[next..] {
            self.default_of(skipped)?;
        }
        self.out.push(b'}');
        self.wrote_field = outer;
        Ok(())
    }

    fn key(&mut self, field: &FieldPlan) {
        if self.wrote_field {
            self.out.push(b',');
        }
        self.wrote_field = true;
        self.out
            .extend_from_slice(field.key(self.style.proto_names).as_bytes());
    }

    /// A field that did not come: its default, if defaults are written and it has no presence.
    fn default_of(&mut self, field: &FieldPlan) -> Result<(), GiveUp> {
        if !self.style.emit_defaults || (field.presence && !field.list) {
            return Ok(());
        }
        if field.list {
            self.key(field);
            self.out
                .extend_from_slice(if field.map { b"{}" } else { b"[]" });
            return Ok(());
        }
        let default = match &field.kind {
            FieldKind::String | FieldKind::Bytes => Wire::Delimited(&[]),
            FieldKind::Double | FieldKind::Fixed64 | FieldKind::Sfixed64 => Wire::Fixed64(0),
            FieldKind::Float | FieldKind::Fixed32 | FieldKind::Sfixed32 => Wire::Fixed32(0),
            FieldKind::Enum(values) => Wire::Varint(i64::from(values.default) as u64),
            FieldKind::Message(_) | FieldKind::Unplanned => return Err(GiveUp),
            _ => Wire::Varint(0),
        };
        self.key(field);
        self.value(field, default)
    }

    /// A singular field: left out when it has no presence and holds its default (unless
    /// defaults are written).
    fn singular(&mut self, field: &FieldPlan, value: Wire<'_>) -> Result<(), GiveUp> {
        if !field.presence && !self.style.emit_defaults && is_default(field, value)? {
            return Ok(());
        }
        self.key(field);
        self.value(field, value)
    }

    fn open_list(&mut self, field: &FieldPlan) {
        self.key(field);
        self.out.push(b'[');
        // The array's own commas: reuse the flag, restored when it closes.
        self.wrote_field = false;
    }

    fn close_list(&mut self, _field: &FieldPlan) {
        self.out.push(b']');
        self.wrote_field = true;
    }

    /// One or more elements of a repeated field (several when packed).
    fn list_items(&mut self, field: &FieldPlan, value: Wire<'_>) -> Result<(), GiveUp> {
        match value {
            Wire::Delimited(mut packed) if field.kind.packable() => {
                // An empty packed run: prost-reflect's list may stay empty, and then its key is
                // left out; the array is already open here.
                if packed.is_empty() {
                    return Err(GiveUp);
                }
                while !packed.is_empty() {
                    let item = match field.wire_type() {
                        VARINT => Wire::Varint(decode_varint(&mut packed).map_err(|_| GiveUp)?),
                        FIXED64 => Wire::Fixed64(u64::from_le_bytes(take::<8>(&mut packed)?)),
                        _ => Wire::Fixed32(u32::from_le_bytes(take::<4>(&mut packed)?)),
                    };
                    self.item(field, item)?;
                }
                Ok(())
            }
            item => self.item(field, item),
        }
    }

    fn item(&mut self, field: &FieldPlan, value: Wire<'_>) -> Result<(), GiveUp> {
        if self.wrote_field {
            self.out.push(b',');
        }
        self.wrote_field = true;
        self.value(field, value)
    }

    /// Writes one value of `field`'s kind.
    fn value(&mut self, field: &FieldPlan, value: Wire<'_>) -> Result<(), GiveUp> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        match (&field.kind, value) {
            (FieldKind::Message(message), Wire::Delimited(bytes)) => {
                self.message(*message, bytes)?;
            }
            (FieldKind::String, Wire::Delimited(bytes)) => {
                let text = std::str::from_utf8(bytes).map_err(|_| GiveUp)?;
                self.serializer().serialize_str(text).map_err(|_| GiveUp)?;
            }
            (FieldKind::Bytes, Wire::Delimited(bytes)) => {
                self.out.push(b'"');
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                self.out.extend_from_slice(encoded.as_bytes());
                self.out.push(b'"');
            }
            (FieldKind::Bool, Wire::Varint(n)) => {
                self.out
                    .extend_from_slice(if n != 0 { b"true" } else { b"false" });
            }
            (FieldKind::Int32, Wire::Varint(n)) => self.plain(n as i32),
            (FieldKind::Uint32, Wire::Varint(n)) => self.plain(n as u32),
            (FieldKind::Sint32, Wire::Varint(n)) => self.plain(unzigzag32(n as u32)),
            (FieldKind::Int64, Wire::Varint(n)) => self.quoted(n as i64),
            (FieldKind::Uint64, Wire::Varint(n)) => self.quoted(n),
            (FieldKind::Sint64, Wire::Varint(n)) => self.quoted(unzigzag64(n)),
            (FieldKind::Fixed32, Wire::Fixed32(n)) => self.plain(n),
            (FieldKind::Sfixed32, Wire::Fixed32(n)) => self.plain(n as i32),
            (FieldKind::Fixed64, Wire::Fixed64(n)) => self.quoted(n),
            (FieldKind::Sfixed64, Wire::Fixed64(n)) => self.quoted(n as i64),
            (FieldKind::Enum(values), Wire::Varint(n)) => match values.name(n as i32) {
                Some(name) => self.serializer().serialize_str(name).map_err(|_| GiveUp)?,
                None => self.plain(n as i32),
            },
            (FieldKind::Double, Wire::Fixed64(bits)) => {
                let value = f64::from_bits(bits);
                if value.is_finite() {
                    self.serializer().serialize_f64(value).map_err(|_| GiveUp)?;
                } else {
                    self.non_finite(value.is_nan(), value > 0.0);
                }
            }
            (FieldKind::Float, Wire::Fixed32(bits)) => {
                let value = f32::from_bits(bits);
                if value.is_finite() {
                    self.serializer().serialize_f32(value).map_err(|_| GiveUp)?;
                } else {
                    self.non_finite(value.is_nan(), value > 0.0);
                }
            }
            _ => return Err(GiveUp),
        }
        Ok(())
    }

    fn serializer(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
        serde_json::Serializer::new(&mut *self.out)
    }

    fn plain(&mut self, n: impl itoa::Integer) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    fn quoted(&mut self, n: impl itoa::Integer) {
        self.out.push(b'"');
        self.plain(n);
        self.out.push(b'"');
    }

    fn non_finite(&mut self, nan: bool, positive: bool) {
        self.out.extend_from_slice(match (nan, positive) {
            (true, _) => b"\"NaN\"",
            (false, true) => b"\"Infinity\"",
            (false, false) => b"\"-Infinity\"",
        });
    }
}

/// Whether `value` has the wire type of `field` (a packed list's for a repeated scalar).
fn fits(field: &FieldPlan, value: Wire<'_>) -> bool {
    let wire_type = match value {
        Wire::Varint(_) => VARINT,
        Wire::Fixed64(_) => FIXED64,
        Wire::Fixed32(_) => FIXED32,
        Wire::Delimited(_) => LENGTH_DELIMITED,
    };
    wire_type == field.wire_type()
        || (wire_type == LENGTH_DELIMITED && field.list && field.kind.packable())
}

/// Whether a singular value is its field's default (prost-reflect leaves those out).
fn is_default(field: &FieldPlan, value: Wire<'_>) -> Result<bool, GiveUp> {
    Ok(match (&field.kind, value) {
        (FieldKind::Message(_) | FieldKind::Unplanned, _) => false,
        (FieldKind::Enum(values), Wire::Varint(n)) => n as i32 == values.default,
        (FieldKind::Double, Wire::Fixed64(bits)) => f64::from_bits(bits) == 0.0,
        (FieldKind::Float, Wire::Fixed32(bits)) => f32::from_bits(bits) == 0.0,
        (_, Wire::Varint(n)) => {
            // A 32-bit field's value is its low 32 bits.
            let narrow = matches!(
                field.kind,
                FieldKind::Int32 | FieldKind::Uint32 | FieldKind::Sint32
            );
            if narrow {
                n as u32 == 0
            } else {
                n == 0
            }
        }
        (_, Wire::Fixed64(n)) => n == 0,
        (_, Wire::Fixed32(n)) => n == 0,
        (_, Wire::Delimited(bytes)) => bytes.is_empty(),
    })
}

fn unzigzag32(n: u32) -> i32 {
    ((n >> 1) as i32) ^ -((n & 1) as i32)
}

fn unzigzag64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}
