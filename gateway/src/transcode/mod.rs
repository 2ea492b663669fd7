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

mod body;
mod direct;
mod error;
mod fields;
mod options;
mod query;
mod request;
mod response;
mod strict_json;
mod update_mask;

pub(crate) use direct::TranscodePlan;
pub use options::JsonOptions;
pub(crate) use options::{BodyRule, RequestParts};
pub(crate) use request::request_message;
pub(crate) use response::response_json;

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
    use super::{error::*, fields::*};

    use prost_reflect::{DynamicMessage, Kind, MessageDescriptor};

    /// The transcoder, with every request checked against the direct encoder
    /// ([`direct::differential`]).
    fn request_message(
        input: &MessageDescriptor,
        parts: &RequestParts<'_>,
        options: &JsonOptions,
    ) -> Result<DynamicMessage, TranscodeError> {
        let old = super::request_message(input, parts, options);
        direct::differential::check_request(input, parts, &old);
        old
    }

    /// The transcoder, with every response checked against the direct decoder.
    fn response_json(
        message: &DynamicMessage,
        response_body: Option<&str>,
        options: &JsonOptions,
    ) -> Result<Vec<u8>, TranscodeError> {
        direct::differential::check_response(message, response_body, options);
        super::response_json(message, response_body, options)
    }

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

    pub(in crate::transcode) fn descriptor(full_name: &str) -> MessageDescriptor {
        static TEST: OnceLock<DescriptorPool> = OnceLock::new();
        static MESH: OnceLock<DescriptorPool> = OnceLock::new();
        let test = TEST.get_or_init(|| {
            let mut pool = DescriptorPool::global();
            pool.add_file_descriptor_proto(test_file())
                .expect("the test file is valid");
            pool
        });
        let mesh = MESH.get_or_init(crate::test_support::pool);
        test.get_message_by_name(full_name)
            .or_else(|| mesh.get_message_by_name(full_name))
            .unwrap_or_else(|| panic!("no message {full_name}"))
    }

    pub(in crate::transcode) const EVERYTHING: &str = "testing.v1.Everything";
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
