//! Tests of reading, compiling and checking request rules, on the mesh's own protos and on
//! small protos compiled here.

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::json;

use super::*;

fn mesh(name: &str) -> MessageDescriptor {
    crate::test_protos::pool()
        .get_message_by_name(name)
        .expect(name)
}

fn message(descriptor: &MessageDescriptor, value: serde_json::Value) -> DynamicMessage {
    DynamicMessage::deserialize(descriptor.clone(), value).expect("message")
}

/// The violations of `value` as `field: description` lines.
fn violations(descriptor: &MessageDescriptor, value: serde_json::Value) -> Vec<String> {
    let rules = MessageRules::compile(descriptor)
        .expect("compiles")
        .expect("has rules");
    rules
        .check(&message(descriptor, value))
        .into_iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect()
}

/// A pool of `body` (a proto3 file importing the validate rules) compiled with protox.
pub(super) fn compiled(body: &str) -> DescriptorPool {
    let dir = std::env::temp_dir().join(format!(
        "protomesh-rules-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("t.proto"),
        format!(
            "syntax = \"proto3\";\npackage t;\nimport \"buf/validate/validate.proto\";\n{body}"
        ),
    )
    .expect("write");
    let pool = protox::Compiler::new([dir.as_path(), std::path::Path::new("proto")])
        .and_then(|mut c| {
            c.include_imports(true);
            c.open_file("t.proto")?;
            Ok(c.descriptor_pool())
        })
        .expect("compiles");
    let _ = std::fs::remove_dir_all(&dir);
    pool
}

#[test]
fn score_requests_are_checked_with_every_violation() {
    let score = mesh("protomesh.priority.v1.ScoreRequest");
    assert!(violations(&score, json!({"urgency": 1, "impact": 10})).is_empty());
    assert_eq!(
        violations(&score, json!({"urgency": 11})),
        vec![
            "urgency: must be between 1 and 10, got 11",
            "impact: must be between 1 and 10, got 0",
        ]
    );
}

#[test]
fn nested_and_repeated_messages_get_indexed_paths() {
    let batch = mesh("protomesh.priority.v1.PrioritizeRequest");
    assert_eq!(
        violations(
            &batch,
            json!({"tasks": [{"urgency": 1, "impact": 1}, {"urgency": 0, "impact": 3}]})
        ),
        vec!["tasks[1].urgency: must be between 1 and 10, got 0"]
    );
    let many: Vec<_> = (0..10_001)
        .map(|_| json!({"urgency": 1, "impact": 1}))
        .collect();
    assert_eq!(
        violations(&batch, json!({ "tasks": many })),
        vec!["tasks: must have at most 10000 items, got 10001"]
    );
}

#[test]
fn task_rules_strings_enums_and_required_messages() {
    let create = mesh("protomesh.tasks.v1.CreateTaskRequest");
    assert_eq!(violations(&create, json!({})), vec!["task: is required"]);
    let good = json!({"task": {"title": "ship", "urgency": 3, "impact": 4}});
    assert!(violations(&create, good).is_empty());
    assert_eq!(
        violations(
            &create,
            json!({"task": {"title": "   ", "description": "a\u{0}b", "urgency": 3, "impact": 4,
                    "assignee": "x".repeat(201), "status": "TASK_STATUS_DONE"}})
        ),
        vec![
            "task.title: must match the pattern \"^[^\\\\x00]*[^\\\\x00\\\\t\\\\n\\\\v\\\\f\\\\r ][^\\\\x00]*$\"",
            "task.description: must match the pattern \"^[^\\\\x00]*$\"",
            "task.assignee: must be at most 200 characters, got 201",
        ]
    );
    assert_eq!(
        violations(
            &create,
            json!({"task": {"title": "é".repeat(201), "urgency": 3, "impact": 4}})
        ),
        vec!["task.title: must be at most 200 characters, got 201"]
    );
    let list = mesh("protomesh.tasks.v1.ListTasksRequest");
    assert!(violations(&list, json!({"status": "TASK_STATUS_OPEN"})).is_empty());
    assert_eq!(
        violations(
            &list,
            json!({"status": 9, "pageSize": 1001, "projectId": "nope"})
        ),
        vec![
            "project_id: must be a UUID, got \"nope\"",
            "status: must be one of TASK_STATUS_UNSPECIFIED, TASK_STATUS_OPEN, \
             TASK_STATUS_IN_PROGRESS, TASK_STATUS_DONE, got 9",
            "page_size: must be between 0 and 1000, got 1001",
        ]
    );
    // An empty optional UUID is ignored.
    assert!(violations(&list, json!({"projectId": ""})).is_empty());
}

#[test]
fn an_update_checks_only_the_fields_its_mask_names() {
    let update = mesh("protomesh.tasks.v1.UpdateTaskRequest");
    assert!(violations(
        &update,
        json!({"task": {"title": "new"}, "updateMask": "title"})
    )
    .is_empty());
    assert_eq!(
        violations(
            &update,
            json!({"task": {"title": ""}, "updateMask": "title,urgency"})
        ),
        vec![
            "task.title: must not be empty",
            "task.urgency: must be between 1 and 10, got 0",
        ]
    );
    // No mask: every rule.
    assert_eq!(
        violations(&update, json!({"task": {"title": "t", "urgency": 2}})),
        vec!["task.impact: must be between 1 and 10, got 0"]
    );
}

#[test]
fn emails_uuids_and_lengths() {
    let register = mesh("protomesh.users.v1.RegisterRequest");
    assert_eq!(
        violations(
            &register,
            json!({"email": "", "displayName": "Ada", "password": "short"})
        ),
        vec![
            "email: is required",
            "password: must be at least 12 characters, got 5",
        ]
    );
    assert_eq!(
        violations(
            &register,
            json!({"email": "ada@example", "displayName": "A\u{7}", "password": "long enough pw"})
        )
        .len(),
        2
    );
    assert!(is_email("Ada.Lovelace+x@Example.ORG"));
    assert!(is_email("é@bücher.de"));
    for bad in [
        "ada",
        "ada@",
        "@x.org",
        "a@b@c.org",
        "a b@x.org",
        "a@127.0.0.1",
        ".a@x.org",
        "a..b@x.org",
    ] {
        assert!(!is_email(bad), "{bad}");
    }
    assert!(is_uuid("6F9619FF-8B86-D011-B42D-00C04FC964FF"));
    assert!(!is_uuid("6f9619ff8b86d011b42d00c04fc964ff"));
}

#[test]
fn methods_without_rules_are_not_listed_and_services_are_compiled_alone() {
    let rules = MethodRules::from_descriptor_sets(
        crate::test_protos::SETS,
        &[
            "protomesh.priority.v1.PriorityService",
            "protomesh.users.v1.UsersService",
        ],
    )
    .expect("compiles");
    assert!(rules
        .of("/protomesh.priority.v1.PriorityService/Score")
        .is_some());
    assert!(rules.of("/protomesh.users.v1.UsersService/GetMe").is_none());
    assert!(rules
        .of("/protomesh.tasks.v1.TasksService/GetTask")
        .is_none());
}

#[test]
fn every_mesh_service_compiles() {
    let pool = crate::test_protos::pool();
    let services: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    MethodRules::from_descriptor_sets(crate::test_protos::SETS, &names)
        .expect("every declared rule is supported");
}

#[test]
fn unsupported_rules_are_refused_naming_field_and_rule() {
    let cases = [
        ("message M { string a = 1 [(buf.validate.field).string.contains = \"x\"]; }", "t.M.a: rule `string.contains` is not supported"),
        ("message M { int32 a = 1 [(buf.validate.field).string.min_len = 1]; }", "t.M.a: `string` rules do not fit a field of type int32"),
        ("message M { string a = 1 [(buf.validate.field).cel = {id: \"x\", expression: \"true\"}]; }", "t.M.a: rule `cel` is not supported here"),
        ("message M { option (buf.validate.message).oneof = {fields: [\"a\"]}; string a = 1; }", "t.M: message rules ((buf.validate.message)) are not supported"),
        ("message M { string a = 1 [(buf.validate.field).string.pattern = \"(\"]; }", "t.M.a: rule `string.pattern` does not compile"),
        ("message M { repeated M a = 1 [(buf.validate.field).repeated.min_items = 1]; }", "t.M: rules in a message that holds itself are not supported"),
        ("message M { map<string, N> a = 1; } message N { int32 b = 1 [(buf.validate.field).int32.gt = 0]; }", "t.M.a: rules inside map values are not supported"),
    ];
    for (body, expected) in cases {
        let pool = compiled(body);
        let m = pool.get_message_by_name("t.M").expect("t.M");
        let err = MessageRules::compile(&m).expect_err(body).to_string();
        assert!(err.starts_with(expected), "{body}\n{err}");
    }
}

#[test]
fn compiled_protos_cover_the_remaining_rules() {
    let pool = compiled(
        "enum E { E_UNSPECIFIED = 0; E_A = 1; E_B = 2; }
         message M {
           optional int64 a = 1 [(buf.validate.field).int64 = {gt: 0, lt: 5}];
           double d = 2 [(buf.validate.field).double = {gte: 0.5}];
           repeated string tags = 3 [(buf.validate.field).repeated = {min_items: 1, unique: true, items: {string: {in: [\"x\", \"y\"]}}}];
           E e = 4 [(buf.validate.field).enum = {in: [1]}];
           uint32 u = 5 [(buf.validate.field).uint32 = {not_in: [7]}];
           string s = 6 [(buf.validate.field) = {ignore: IGNORE_ALWAYS, string: {min_len: 3}}];
         }",
    );
    let m = pool.get_message_by_name("t.M").expect("t.M");
    assert!(violations(&m, json!({"d": 1.0, "tags": ["x"], "e": "E_A"})).is_empty());
    assert_eq!(
        violations(
            &m,
            json!({"a": "9", "d": 0.25, "tags": ["x", "z", "x"], "e": "E_B", "u": 7, "s": "a"})
        ),
        vec![
            "a: must be greater than 0 and less than 5, got 9",
            "d: must be at least 0.5, got 0.25",
            "tags[2]: must be unique (repeats tags[0])",
            "tags[1]: must be one of \"x\", \"y\"",
            "e: must be one of E_A, got E_B",
            "u: must not be 7",
        ]
    );
    assert_eq!(
        violations(&m, json!({"d": 1.0, "e": "E_A"})),
        vec!["tags: must have at least 1 items, got 0"]
    );
}
