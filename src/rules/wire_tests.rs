//! Differential tests of the rules checked on wire bytes ([`MessageRules::passes_on_wire`])
//! against the full check of the decoded message: wherever the wire check says a message
//! passes, the decoder must take it and the full check must find nothing; and on clean bytes
//! (right wire types, UTF-8 strings, whole values) the wire check must decide every message
//! that passes.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use prost_reflect::{DynamicMessage, MessageDescriptor};

use super::tests::compiled;
use super::MessageRules;

/// Every scalar kind with rules, fields without rules, presence, and `ignore`.
const FLAT: &str = r#"
enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }
message Flat {
  optional string name = 1 [(buf.validate.field).string = {min_len: 1, max_len: 5}];
  int32 a = 2 [(buf.validate.field).int32 = {gte: -3, lte: 3}];
  sint64 b = 3 [(buf.validate.field).sint64 = {gt: -5, lt: 5}];
  uint32 c = 4 [(buf.validate.field).uint32 = {in: [0, 1, 7]}];
  double d = 5 [(buf.validate.field).double = {gte: -1.5, lte: 1.5}];
  float e = 6 [(buf.validate.field) = {ignore: IGNORE_IF_ZERO_VALUE, float: {gt: 0}}];
  Color color = 7 [(buf.validate.field).enum.defined_only = true];
  optional int64 f = 8 [(buf.validate.field).int64 = {gte: 0}];
  fixed32 g = 9 [(buf.validate.field).fixed32 = {lte: 100}];
  sfixed64 h = 10 [(buf.validate.field).sfixed64 = {gte: -100}];
  bytes raw = 11 [(buf.validate.field).required = true];
  bool flag = 12;
  string free = 13;
  optional string tag = 14 [(buf.validate.field).string.pattern = "^[a-z]+$"];
  fixed64 big = 15 [(buf.validate.field).fixed64 = {not_in: [3]}];
  sint32 s = 16 [(buf.validate.field).sint32 = {gte: -2, lte: 2}];
  uint64 u = 17 [(buf.validate.field).uint64 = {lt: 1000}];
  sfixed32 x = 18 [(buf.validate.field).sfixed32 = {gt: -9}];
  optional string id = 19 [(buf.validate.field).string.uuid = true];
  optional int32 must = 21 [(buf.validate.field).required = true];
  optional string mail = 22 [(buf.validate.field) = {ignore: IGNORE_IF_ZERO_VALUE, string: {email: true}}];
  Color pick = 23 [(buf.validate.field).enum = {not_in: [2]}];
  string word = 24 [(buf.validate.field).string = {not_in: ["x"], in: ["", "a", "b", "x"]}];
  uint32 n = 26 [(buf.validate.field).uint32.gt = 0];
}
message WithOneof { oneof choice { string a = 1 [(buf.validate.field).string.min_len = 1]; int32 b = 2; } }
message WithList { repeated int32 items = 1; string name = 2 [(buf.validate.field).string.min_len = 1]; }
message Nested { Flat flat = 1; string name = 2 [(buf.validate.field).string.min_len = 1]; }
"#;

/// The wire type each field of `Flat` is written with (by number; 0, 20 and 25 are unused).
const WIRE_TYPES: [Option<u8>; 27] = [
    None,
    Some(2),
    Some(0),
    Some(0),
    Some(0),
    Some(1),
    Some(5),
    Some(0),
    Some(0),
    Some(5),
    Some(1),
    Some(2),
    Some(0),
    Some(2),
    Some(2),
    Some(1),
    Some(0),
    Some(0),
    Some(5),
    Some(2),
    None,
    Some(0),
    Some(2),
    Some(0),
    Some(2),
    None,
    Some(0),
];

/// `Flat` and its rules, compiled once for every case.
fn flat() -> (MessageDescriptor, Arc<MessageRules>) {
    static FLAT_RULES: OnceLock<(MessageDescriptor, Arc<MessageRules>)> = OnceLock::new();
    FLAT_RULES
        .get_or_init(|| {
            let pool = compiled(FLAT);
            let descriptor = pool.get_message_by_name("t.Flat").expect("Flat");
            let rules = MessageRules::compile(&descriptor)
                .expect("compiles")
                .expect("has rules");
            (descriptor, rules)
        })
        .clone()
}

/// The full way: the message decodes and no rule is broken.
fn passes_decoded(descriptor: &MessageDescriptor, rules: &MessageRules, bytes: &[u8]) -> bool {
    DynamicMessage::decode(descriptor.clone(), bytes)
        .is_ok_and(|message| rules.check(&message).is_empty())
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One field as generated: a number, a wire type, and the value's bits or bytes.
#[derive(Debug, Clone)]
struct Field {
    number: u32,
    wire_type: u8,
    bits: u64,
    bytes: Vec<u8>,
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(self.number) << 3 | u64::from(self.wire_type));
        match self.wire_type {
            0 => put_varint(out, self.bits),
            1 => out.extend_from_slice(&self.bits.to_le_bytes()),
            5 => out.extend_from_slice(&(self.bits as u32).to_le_bytes()),
            2 => {
                put_varint(out, self.bytes.len() as u64);
                out.extend_from_slice(&self.bytes);
            }
            _ => {}
        }
    }
}

/// Small numbers near the rules' bounds, negative ones, and anything.
fn bits() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (-12i64..12).prop_map(|n| n as u64),
        2 => (0u32..12).prop_map(|n| u64::from((n as f32 - 4.0).to_bits())),
        2 => (-8i32..8).prop_map(|n| (f64::from(n) / 4.0).to_bits()),
        1 => Just(f64::NAN.to_bits()),
        1 => Just((-0.0f64).to_bits()),
        1 => any::<u64>(),
    ]
}

/// Short strings (multi-byte characters, a UUID, empty), sometimes not UTF-8.
fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-zé0-9]{0,7}".prop_map(String::into_bytes),
        1 => Just(b"123e4567-e89b-12d3-a456-426614174000".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..6),
    ]
}

/// A field of `Flat`, mostly with its own wire type (`clean`), sometimes another or unknown.
fn field(clean: bool) -> impl Strategy<Value = Field> {
    let number = prop_oneof![8 => 1u32..27, 1 => 27u32..40, 1 => Just(1000u32)];
    (number, 0u8..6, bits(), text(), any::<bool>()).prop_map(
        move |(number, other_wire, bits, bytes, keep)| {
            let own = WIRE_TYPES.get(number as usize).copied().flatten();
            let wire_type = match own {
                Some(own) if clean || keep => own,
                _ if clean => [0, 1, 2, 5][usize::from(other_wire % 4)],
                _ => [0, 1, 2, 5, 3, 0][usize::from(other_wire)],
            };
            let bytes = if clean && own == Some(2) && std::str::from_utf8(&bytes).is_err() {
                Vec::new()
            } else {
                bytes
            };
            Field {
                number,
                wire_type,
                bits,
                bytes,
            }
        },
    )
}

/// A message's fields: mostly the fields an absent value breaks (`raw`, `must`, `n`) first with
/// good values, then generated ones.
fn message_fields(clean: bool) -> impl Strategy<Value = Vec<Field>> {
    let good = |number, wire_type, bits, bytes: &[u8]| Field {
        number,
        wire_type,
        bits,
        bytes: bytes.to_vec(),
    };
    (
        prop::option::weighted(0.9, Just(good(11, 2, 0, b"r"))),
        prop::option::weighted(0.9, Just(good(21, 0, 0, b""))),
        prop::option::weighted(0.9, Just(good(26, 0, 3, b""))),
        prop::collection::vec(field(clean), 0..10),
    )
        .prop_map(|(raw, must, n, fields)| {
            raw.into_iter().chain(must).chain(n).chain(fields).collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// On any bytes: a pass on the wire is a pass decoded.
    #[test]
    fn a_pass_on_the_wire_is_a_pass_decoded(
        fields in message_fields(false),
        cut in any::<u16>(),
        noise in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let (descriptor, rules) = flat();
        let mut bytes = Vec::new();
        for field in &fields {
            field.encode(&mut bytes);
        }
        if cut % 4 == 0 {
            let keep = usize::from(cut) % (bytes.len() + 1);
            bytes.truncate(keep);
        }
        if cut % 5 == 0 {
            bytes.extend_from_slice(&noise);
        }
        if rules.passes_on_wire(&bytes) {
            prop_assert!(passes_decoded(&descriptor, &rules, &bytes), "{bytes:02x?}");
        }
    }

    /// On clean bytes the two agree exactly.
    #[test]
    fn on_clean_bytes_the_two_agree(fields in message_fields(true)) {
        let (descriptor, rules) = flat();
        let mut bytes = Vec::new();
        for field in &fields {
            field.encode(&mut bytes);
        }
        prop_assert_eq!(
            rules.passes_on_wire(&bytes),
            passes_decoded(&descriptor, &rules, &bytes),
            "{:02x?}", bytes
        );
    }
}

#[test]
fn generated_messages_reach_both_answers() {
    // The property tests above say something only if passes happen: count them on clean bytes.
    let (descriptor, rules) = flat();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = message_fields(true);
    let (mut passed, mut refused) = (0, 0);
    for _ in 0..400 {
        let fields = strategy.new_tree(&mut runner).expect("generates").current();
        let mut bytes = Vec::new();
        for field in &fields {
            field.encode(&mut bytes);
        }
        if passes_decoded(&descriptor, &rules, &bytes) {
            passed += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        passed >= 20 && refused >= 20,
        "passed {passed}, refused {refused}"
    );
}

#[test]
fn a_score_request_is_checked_on_its_bytes() {
    let score = crate::test_protos::pool()
        .get_message_by_name("protomesh.priority.v1.ScoreRequest")
        .expect("ScoreRequest");
    let rules = MessageRules::compile(&score)
        .expect("compiles")
        .expect("has rules");
    // title "Fix login bug", urgency 9, impact 8: the bytes the benchmarks send.
    let good = b"\x0a\x0dFix login bug\x10\x09\x18\x08";
    assert!(rules.passes_on_wire(good));
    assert!(passes_decoded(&score, &rules, good));
    // Urgency 11 is out of range: undecided here, refused by the full check.
    let bad = b"\x0a\x01t\x10\x0b\x18\x08";
    assert!(!rules.passes_on_wire(bad));
    assert!(!passes_decoded(&score, &rules, bad));
}

#[test]
fn a_message_that_is_not_flat_is_always_left_to_the_full_check() {
    let pool = compiled(FLAT);
    let nested = pool.get_message_by_name("t.Nested").expect("Nested");
    let rules = MessageRules::compile(&nested)
        .expect("compiles")
        .expect("has rules");
    // name "n", flat {raw "r", must 0, n 3}: passes decoded, but the wire check does not decide
    // it.
    let bytes = b"\x12\x01n\x0a\x09\x5a\x01r\xa8\x01\x00\xd0\x01\x03";
    assert!(passes_decoded(&nested, &rules, bytes));
    assert!(!rules.passes_on_wire(bytes));
}

#[test]
fn hand_made_edge_cases_agree() {
    let (descriptor, rules) = flat();
    // raw "r", must 0, n 3: a message that passes, to which each case adds or changes a field.
    let base: &[u8] = b"\x5a\x01r\xa8\x01\x00\xd0\x01\x03";
    let cases: &[(&str, &[u8])] = &[
        ("as it is", b""),
        (
            "an overlong varint value (a = 1 in three bytes)",
            b"\x10\x81\x80\x00",
        ),
        ("an overlong tag", b"\x90\x80\x00\x01"),
        (
            "a negative int32 in ten bytes (a = -1)",
            b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ),
        (
            "a ten-byte varint whose last byte is over 1",
            b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02",
        ),
        (
            "an eleven-byte varint",
            b"\x10\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00",
        ),
        ("field number 0", b"\x00\x01"),
        ("wire type 4 (end group)", b"\x14"),
        (
            "wire type 3 (start group) of an unknown field",
            b"\xfb\x01\xfc\x01",
        ),
        ("wire type 6", b"\x16\x01"),
        ("wire type 7", b"\x17\x01"),
        ("an unknown field numbered 1000", b"\xc0\x3e\x05"),
        (
            "an unknown field in a gap of the numbers (20)",
            b"\xa0\x01\x05",
        ),
        (
            "an unknown length-delimited field cut short",
            b"\xa2\x01\x05ab",
        ),
        ("a length past the end", b"\x0a\x05ab"),
        ("a string that is not UTF-8", b"\x6a\x01\xff"),
        (
            "a wrong wire type for a known field",
            b"\x15\x01\x00\x00\x00",
        ),
        ("n given twice, the last 0", b"\xd0\x01\x00"),
        ("n given twice, the last 5", b"\xd0\x01\x00\xd0\x01\x05"),
        ("word x (in the allowed set, but refused)", b"\xc2\x01\x01x"),
        ("word a", b"\xc2\x01\x01a"),
        ("pick 2 (refused)", b"\xb8\x01\x02"),
        ("mail empty (ignored)", b"\xb2\x01\x00"),
        ("mail not an address", b"\xb2\x01\x01m"),
        ("a NaN double", b"\x29\x00\x00\x00\x00\x00\x00\xf8\x7f"),
        ("a -0.0 float (zero, ignored)", b"\x35\x00\x00\x00\x80"),
    ];
    for (case, extra) in cases {
        let bytes = [base, extra].concat();
        let decoded = passes_decoded(&descriptor, &rules, &bytes);
        let on_wire = rules.passes_on_wire(&bytes);
        assert!(!on_wire || decoded, "{case}: passes on the wire only");
        let clean = !matches!(*case, c if c.contains("wire type") || c.contains("UTF-8"));
        if clean {
            assert_eq!(on_wire, decoded, "{case}");
        }
    }
    // Each answer is reached: the base passes, a broken rule does not.
    assert!(rules.passes_on_wire(base));
    assert!(!passes_decoded(
        &descriptor,
        &rules,
        &[base, b"\xd0\x01\x00"].concat()
    ));
    assert!(
        !passes_decoded(&descriptor, &rules, b"\x5a\x01r"),
        "must and n are needed"
    );
}

#[test]
fn messages_with_a_oneof_or_a_list_are_left_to_the_full_check() {
    let pool = compiled(FLAT);
    for (name, bytes) in [
        ("t.WithOneof", b"\x0a\x01a".as_slice()),
        ("t.WithList", b"\x08\x01\x12\x01n".as_slice()),
    ] {
        let descriptor = pool.get_message_by_name(name).expect(name);
        let rules = MessageRules::compile(&descriptor)
            .expect("compiles")
            .expect("has rules");
        assert!(passes_decoded(&descriptor, &rules, bytes), "{name}");
        assert!(!rules.passes_on_wire(bytes), "{name}");
    }
}
