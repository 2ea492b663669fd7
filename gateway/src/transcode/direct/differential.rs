//! The direct transcoder against the descriptor-driven one. The transcoder's own tests call
//! [`check_request`] and [`check_response`] on every request and response they make (table
//! cases and property tests alike), and the property tests here feed both generated JSON and
//! generated wire bytes: wherever the direct path takes an input, the other must take it too and
//! give the same message, or byte for byte the same JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};

use super::TranscodePlan;
use crate::transcode::error::TranscodeError;
use crate::transcode::options::{BodyRule, JsonOptions, RequestParts};

/// How many requests and responses the direct path took in the checks (for tests that make
/// sure it is used at all).
pub(crate) static TAKEN: AtomicUsize = AtomicUsize::new(0);

/// If the direct path takes this request, the descriptor-driven one must have built the same
/// message (`old`).
pub(crate) fn check_request(
    input: &MessageDescriptor,
    parts: &RequestParts<'_>,
    old: &Result<DynamicMessage, TranscodeError>,
) {
    let plan = TranscodePlan::new(input, input, parts.body_rule, None);
    let bindings = parts
        .path_bindings
        .iter()
        .map(|(path, value)| (path.as_slice(), value.as_str()));
    let Some(bytes) = plan.request(bindings, parts.query, parts.body) else {
        return;
    };
    TAKEN.fetch_add(1, Ordering::Relaxed);
    let body = String::from_utf8_lossy(parts.body);
    let old = old.as_ref().unwrap_or_else(|err| {
        panic!("the direct encoder took what the transcoder refuses ({err}): {body}")
    });
    let direct = DynamicMessage::decode(input.clone(), bytes.as_slice()).unwrap_or_else(|err| {
        panic!("the direct encoder wrote bytes that do not decode ({err}): {body}")
    });
    assert_eq!(
        direct.encode_to_vec(),
        old.encode_to_vec(),
        "direct {direct:?} != transcoded {old:?} for {body} with {:?}",
        parts.path_bindings
    );
}

/// If the direct path writes this message's bytes as JSON, it must be what the transcoder writes
/// for the message those bytes decode to (as the gateway receives it: a value the encoding
/// leaves out, such as a float's `-0.0`, is not in it), byte for byte.
pub(crate) fn check_response(
    message: &DynamicMessage,
    response_body: Option<&str>,
    options: &JsonOptions,
) {
    check_wire(
        &message.descriptor(),
        &message.encode_to_vec(),
        response_body,
        options,
    );
}

/// Wire bytes the direct decoder takes must decode, and give the same JSON.
fn check_wire(
    descriptor: &MessageDescriptor,
    wire: &[u8],
    response_body: Option<&str>,
    options: &JsonOptions,
) {
    let plan = TranscodePlan::new(descriptor, descriptor, &BodyRule::None, response_body);
    let Some(json) = plan.response(wire, options) else {
        return;
    };
    TAKEN.fetch_add(1, Ordering::Relaxed);
    let json = String::from_utf8_lossy(&json);
    let message = DynamicMessage::decode(descriptor.clone(), wire).unwrap_or_else(|err| {
        panic!("the direct decoder took bytes that do not decode ({err}), writing {json}")
    });
    let old =
        crate::transcode::response_json(&message, response_body, options).unwrap_or_else(|err| {
            panic!("the direct decoder wrote {json}, the transcoder fails: {err}")
        });
    assert_eq!(json, String::from_utf8_lossy(&old), "with {options:?}");
}

mod generated {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::transcode::tests::{descriptor, EVERYTHING};

    /// Keys of `testing.v1.Everything` and `Nested` (both spellings), and a few that name nothing.
    const KEYS: &[&str] = &[
        "name",
        "id",
        "big",
        "small",
        "count",
        "flag",
        "ratio",
        "weight",
        "blob",
        "color",
        "nested",
        "tags",
        "ids",
        "colors",
        "labels",
        "when",
        "items",
        "left",
        "right",
        "signed",
        "opt",
        "display_name",
        "displayName",
        "maybeId",
        "text",
        "level",
        "inner",
        "deepValue",
        "deep_value",
        "notes",
        "nope",
    ];

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(|n| Value::from(n.to_string())),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-4i32..4).prop_map(|n| Value::from(f64::from(n) * 0.5)),
            "[a-zA-Z0-9 _\\\\\"é-]{0,8}".prop_map(Value::from),
            prop_oneof![
                Just("COLOR_RED"),
                Just("COLOR_GREEN"),
                Just("COLOR_UNSPECIFIED"),
                Just("COLOR_BLUE"),
                Just("007"),
                Just("-0"),
                Just("NaN"),
            ]
            .prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(
                    |entries| {
                        Value::Object(
                            entries
                                .into_iter()
                                .map(|(key, value)| (key.to_owned(), value))
                                .collect::<Map<_, _>>(),
                        )
                    }
                ),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Value> {
        prop::collection::vec((prop::sample::select(KEYS), value()), 0..8).prop_map(|entries| {
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value))
                    .collect(),
            )
        })
    }

    /// Mostly a value of the field's own type; sometimes any value.
    fn typed(valid: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
        prop_oneof![8 => valid, 1 => scalar()].boxed()
    }

    fn int_text<T: Arbitrary + ToString + serde::Serialize + 'static>(
    ) -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<T>().prop_map(|n| Value::from(n.to_string())),
            any::<T>().prop_map(|n| json!(n)),
        ]
    }

    fn colors() -> impl Strategy<Value = Value> {
        prop::sample::select(&["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN"][..])
            .prop_map(Value::from)
    }

    /// Fields of `testing.v1.Nested` (below the top) and of `Everything`, each maybe given.
    fn typed_object(depth: u32) -> BoxedStrategy<Value> {
        let text = || "[a-z \\\"é]{0,6}".prop_map(Value::from);
        let mut fields: Vec<(&'static str, BoxedStrategy<Value>)> = vec![
            ("text", typed(text())),
            ("level", typed(any::<i32>().prop_map(Value::from))),
            (
                "notes",
                typed(prop::collection::vec(text(), 0..3).prop_map(Value::Array)),
            ),
            ("inner", typed(text().prop_map(|t| json!({"deepValue": t})))),
        ];
        if depth == 0 {
            fields = vec![
                ("name", typed(text())),
                ("display_name", typed(text())),
                ("displayName", typed(text())),
                ("id", typed(int_text::<i64>())),
                ("big", typed(int_text::<u64>())),
                ("signed", typed(int_text::<i64>())),
                ("small", typed(any::<i32>().prop_map(Value::from))),
                ("count", typed(any::<u32>().prop_map(Value::from))),
                ("opt", typed((-2i32..2).prop_map(Value::from))),
                ("flag", typed(any::<bool>().prop_map(Value::from))),
                (
                    "ratio",
                    typed(
                        any::<f64>()
                            .prop_filter("finite", |f| f.is_finite())
                            .prop_map(Value::from),
                    ),
                ),
                (
                    "weight",
                    typed(
                        any::<f32>()
                            .prop_filter("finite", |f| f.is_finite())
                            .prop_map(Value::from),
                    ),
                ),
                ("color", typed(colors())),
                (
                    "colors",
                    typed(prop::collection::vec(colors(), 0..3).prop_map(Value::Array)),
                ),
                (
                    "tags",
                    typed(prop::collection::vec(text(), 0..3).prop_map(Value::Array)),
                ),
                (
                    "ids",
                    typed(prop::collection::vec(int_text::<i64>(), 0..3).prop_map(Value::Array)),
                ),
                ("left", typed(text())),
                ("right", typed(any::<i32>().prop_map(Value::from))),
                ("nested", typed_object(1)),
                (
                    "items",
                    prop::collection::vec(typed_object(1), 0..3)
                        .prop_map(Value::Array)
                        .boxed(),
                ),
            ];
        }
        let chosen: Vec<_> = fields
            .into_iter()
            .map(|(key, value)| prop::option::weighted(0.3, value).prop_map(move |v| (key, v)))
            .collect();
        chosen
            .prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
                        .collect(),
                )
            })
            .boxed()
    }

    fn options() -> impl Strategy<Value = JsonOptions> {
        (any::<bool>(), any::<bool>()).prop_map(|(use_proto_names, emit_defaults)| JsonOptions {
            use_proto_names,
            emit_defaults,
            allow_unknown_fields: false,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Generated bodies (with a path binding or not): requests and the responses made of
        /// them agree.
        #[test]
        fn direct_and_transcoded_agree(
            body in prop_oneof![3 => typed_object(0), 1 => object()],
            binding in prop::option::of(("name|small|id|color|nested\\.text|nested\\.level",
                                         "[a-zA-Z0-9_-]{0,6}")),
            options in options(),
        ) {
            let text = body.to_string();
            let bindings: Vec<(Vec<String>, String)> = binding
                .into_iter()
                .map(|(path, value)| (path.split('.').map(str::to_owned).collect(), value))
                .collect();
            let input = descriptor(EVERYTHING);
            let parts = RequestParts {
                path_bindings: &bindings,
                query: None,
                body: text.as_bytes(),
                body_rule: &BodyRule::Whole,
                fill_update_mask: false,
            };
            let old = crate::transcode::request_message(&input, &parts, &JsonOptions::default());
            check_request(&input, &parts, &old);
            if let Ok(message) = old {
                check_response(&message, None, &options);
            }
        }

        /// Arbitrary bytes, and valid encodings cut or with a byte changed.
        #[test]
        fn direct_decoder_takes_only_what_decodes(
            body in typed_object(0),
            noise in prop::collection::vec(any::<u8>(), 0..48),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
            options in options(),
        ) {
            let input = descriptor(EVERYTHING);
            check_wire(&input, &noise, None, &options);
            let text = body.to_string();
            let parts = RequestParts {
                path_bindings: &[],
                query: None,
                body: text.as_bytes(),
                body_rule: &BodyRule::Whole,
                fill_update_mask: false,
            };
            if let Ok(message) =
                crate::transcode::request_message(&input, &parts, &JsonOptions::default())
            {
                let wire = message.encode_to_vec();
                if !wire.is_empty() {
                    check_wire(&input, &wire[..cut.index(wire.len())], None, &options);
                    let mut flipped = wire.clone();
                    let at = flip.0.index(wire.len());
                    flipped[at] ^= flip.1;
                    check_wire(&input, &flipped, None, &options);
                }
            }
        }
    }

    /// Inputs where the two once differed, from a review: a JSON integer for a `float` (rounded
    /// once, not twice) and an empty packed run of a repeated scalar (left out, not `[]`).
    #[test]
    fn the_reviewed_cases_agree() {
        let input = descriptor(EVERYTHING);
        let body = br#"{"weight":1152921573326323713}"#;
        let parts = RequestParts {
            path_bindings: &[],
            query: None,
            body,
            body_rule: &BodyRule::Whole,
            fill_update_mask: false,
        };
        let old = crate::transcode::request_message(&input, &parts, &JsonOptions::default());
        check_request(&input, &parts, &old);
        // `ids` (13, packed int64) given as an empty run.
        let wire = [0x6a, 0x00];
        for emit_defaults in [false, true] {
            let options = JsonOptions {
                emit_defaults,
                ..JsonOptions::default()
            };
            check_wire(&input, &wire, None, &options);
        }
    }

    /// An answer nested deeper than prost decodes is left to the descriptor-driven path (which
    /// refuses it) instead of exhausting the stack.
    #[test]
    fn deeply_nested_answers_are_left_to_the_descriptors() {
        use prost_types::field_descriptor_proto::{Label, Type};
        use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};

        let child = FieldDescriptorProto {
            name: Some("child".to_owned()),
            number: Some(1),
            label: Some(Label::Optional as i32),
            r#type: Some(Type::Message as i32),
            type_name: Some(".deep.v1.Node".to_owned()),
            ..Default::default()
        };
        let mut pool = prost_reflect::DescriptorPool::new();
        pool.add_file_descriptor_proto(FileDescriptorProto {
            name: Some("deep/v1/node.proto".to_owned()),
            package: Some("deep.v1".to_owned()),
            message_type: vec![DescriptorProto {
                name: Some("Node".to_owned()),
                field: vec![child],
                ..Default::default()
            }],
            syntax: Some("proto3".to_owned()),
            ..Default::default()
        })
        .unwrap();
        let node = pool.get_message_by_name("deep.v1.Node").unwrap();
        let plan = TranscodePlan::new(&node, &node, &BodyRule::None, None);
        // `child` nested `depth` times: tag 0x0a, then the length of what is inside.
        let nested = |depth: usize| {
            let mut wire = Vec::new();
            for _ in 0..depth {
                let mut outer = vec![0x0a];
                prost::encoding::encode_varint(wire.len() as u64, &mut outer);
                outer.extend_from_slice(&wire);
                wire = outer;
            }
            wire
        };
        let options = JsonOptions::default();
        let json = plan.response(&nested(3), &options).unwrap();
        assert_eq!(json, br#"{"child":{"child":{"child":{}}}}"#);
        assert!(plan.response(&nested(99), &options).is_some());
        assert!(plan.response(&nested(100_000), &options).is_none());
        assert!(DynamicMessage::decode(node, nested(100_000).as_slice()).is_err());
    }

    /// The generated inputs are not all for the fallback: enough of them reach the direct path
    /// for the comparisons above to mean something.
    #[test]
    fn generated_inputs_reach_the_direct_path() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let input = descriptor(EVERYTHING);
        let plan = TranscodePlan::new(&input, &input, &BodyRule::Whole, None);
        let none: [(&[String], &str); 0] = [];
        let mut runner = TestRunner::deterministic();
        let strategy = typed_object(0);
        let (mut requests, mut responses) = (0, 0);
        for _ in 0..200 {
            let body = strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .to_string();
            if let Some(wire) = plan.request(none, None, body.as_bytes()) {
                requests += 1;
                // As a service would answer: fields in number order.
                let canonical = DynamicMessage::decode(input.clone(), wire.as_slice())
                    .unwrap()
                    .encode_to_vec();
                if plan.response(&canonical, &JsonOptions::default()).is_some() {
                    responses += 1;
                }
            }
        }
        assert!(
            requests >= 40 && responses >= 40,
            "{requests} requests, {responses} responses"
        );
    }

    #[test]
    fn the_direct_path_takes_plain_messages_and_leaves_the_rest() {
        let input = descriptor(EVERYTHING);
        let plan = TranscodePlan::new(&input, &input, &BodyRule::Whole, None);
        let none: [(&[String], &str); 0] = [];
        let plain = json!({"name": "n", "id": "-5", "small": -1, "color": "COLOR_RED",
                           "nested": {"text": "t", "notes": ["a", "b"]}, "ids": [1, "2"],
                           "items": [{"level": 3}], "right": 0, "weight": 1.5});
        assert!(plan
            .request(none, None, plain.to_string().as_bytes())
            .is_some());
        for left in [
            r#"{"blob":"aGk="}"#,
            r#"{"labels":{"a":1}}"#,
            r#"{"when":"2024-01-02T03:04:05Z"}"#,
            r#"{"name":null}"#,
            r#"{"nope":1}"#,
            r#"{"name":"a","name":"b"}"#,
            r#"{"displayName":"a","display_name":"b"}"#,
            r#"{"left":"a","right":1}"#,
            r#"{"small":1.0}"#,
            r#"{"name":"a"} x"#,
        ] {
            assert!(
                plan.request(none, None, left.as_bytes()).is_none(),
                "{left}"
            );
        }
        let get = TranscodePlan::new(&input, &input, &BodyRule::None, None);
        assert!(get.request(none, Some("name=x"), b"").is_none());
        assert!(get.request(none, None, b"").is_some());
        let response_body = TranscodePlan::new(&input, &input, &BodyRule::None, Some("nested"));
        assert!(response_body
            .response(b"", &JsonOptions::default())
            .is_none());
    }
}
