//! An [OpenAPI 3.0.3] document for the JSON/HTTP API the gateway serves, generated from the live
//! [`RouteTable`]: one operation per route, with the request and response messages as schemas by
//! the [proto3 JSON mapping], the way [`transcode`](crate::transcode) reads and writes them.
//!
//! # Paths
//!
//! Each path template becomes an OpenAPI path:
//!
//! - `{field}` becomes the path parameter `{field}`, typed (and constrained by the rules) of the
//!   bound field; `{a.b}`, a name OpenAPI tools cannot read, becomes `{b}` (`{a_b}` if another
//!   variable of the template ends in `b`), so `PATCH /v1/tasks/{task.id}` is documented under
//!   the same path as `GET /v1/tasks/{id}`. The gateway matches paths by position, so the names
//!   are the document's alone;
//! - a variable with its own template, `{name=shelves/*}`, becomes the single parameter `{name}`,
//!   whose description (and `pattern`) gives the template. OpenAPI path parameters cannot hold a
//!   `/`, while such a value does: the description says to send its `/` unescaped (a `%2F` would not
//!   match the route);
//! - a bare `*` or `**` segment, bound to no field, becomes a parameter `{_segment1}`,
//!   `{_segment2}`, …;
//! - the verb stays in the path as written: `/v1/priority:score`.
//!
//! A route goes under its HTTP method. A `custom` rule whose method has no slot in an OpenAPI path
//! item (anything but GET, PUT, POST, DELETE, PATCH, HEAD, OPTIONS, TRACE) gets no operation: it is
//! listed in the document's `x-custom-methods` instead. So is, in `x-path-collisions`, a route whose
//! OpenAPI path and method are already taken by another route (`/v1/{name=shelves/*}` and
//! `/v1/{name=authors/*}` both render as `/v1/{name}`).
//!
//! # Operations
//!
//! - `operationId`: `Service_Method` (the service's short name); a method's additional bindings
//!   get `Service_Method2`, `Service_Method3`, … in the order of its `google.api.http` rule, and a
//!   name already taken gets a further `_2`, `_3`, ….
//! - `summary`: the first paragraph of the method's comment, `description` the rest, when the
//!   descriptors carry source info; otherwise the summary is the method's full name.
//! - `tags`: the gRPC service's full name (described by its comment in the top-level `tags`).
//! - `parameters`: the path parameters (required), then, unless the rule's `body` is `*`, one query
//!   parameter for every field the path and the body leave unbound that a query parameter can set
//!   (but `update_mask` where the gateway fills it from the body, below):
//!   scalars, enums, the well-known types with a text form (`Timestamp`, `Duration`, `FieldMask`,
//!   `Value`, wrappers), and repeated ones of those (`?tag=a&tag=b`); the fields of a nested
//!   message get dotted names (`filter.state`), down to [`MAX_QUERY_DEPTH`] levels and never
//!   through a message already being expanded. Maps and repeated messages cannot be query
//!   parameters and are left out.
//! - `requestBody` (`application/json`): for `body: "*"` the request message — less the fields the
//!   path binds, inline, when it binds any; for `body: "<field>"` the field's schema, and for a
//!   PATCH whose `update_mask` the gateway fills from the body's keys the resource's update
//!   schema `<full name>-update` (the same properties, none required, at least one given);
//!   none otherwise. `required` when the body must carry something.
//! - `responses`: `200` with the response message (or its `response_body` field); for a
//!   server-streaming method, `application/x-ndjson` and `text/event-stream`, each item being one
//!   message. `default` is the gateway's error body, the schema `Error`.
//! - Extensions: `x-grpc-method` (`/package.Service/Method`) and `x-consul-service`.
//!
//! # Schemas
//!
//! `components/schemas` holds one schema per message and enum type referenced, named by full name
//! (`protomesh.priority.v1.ScoreRequest`), plus `Error` (`gateway-Error` should a message with
//! no package be called `Error`). Properties are named by JSON name
//! (lowerCamelCase) or, with [`JsonOptions::use_proto_names`], by proto name. Types follow the
//! proto3 JSON mapping as the gateway writes it: 32-bit integers are `integer`s, 64-bit integers
//! `string`s (format `int64` / `uint64`), `float`/`double` `number`s, `bytes` base64 `string`s
//! (format `byte`), enums `string`s listing the value names, repeated fields `array`s, maps
//! `object`s with `additionalProperties`, messages `$ref`s. The well-known types are written
//! inline in their JSON forms: `Timestamp` a `date-time` string, `Duration` and `FieldMask`
//! strings, `Struct` an object, `Value` anything, `ListValue` an array, wrappers their (nullable)
//! scalar, `Empty` an object, `Any` an object with `@type`. Comments become descriptions.
//!
//! What the services enforce is in the schemas too (`openapi/rules.rs` maps each field's declared
//! request rules, `(buf.validate.field)`, to keywords): a field whose zero value its rules refuse
//! is `required`; every other property is `nullable` (`null` is the field's default in the
//! proto3 JSON mapping); output-only fields (`(google.api.field_behavior) = OUTPUT_ONLY`) are
//! `readOnly`; and unless [`JsonOptions::allow_unknown_fields`], every message schema has
//! `additionalProperties: false`, as the gateway refuses unknown fields.
//!
//! If two services' descriptors define different messages under one full name, the first route
//! (in the order of the document) decides the schema.
//!
//! The document is deterministic: the same table and options give byte-identical JSON.
//!
//! [OpenAPI 3.0.3]: https://spec.openapis.org/oas/v3.0.3
//! [proto3 JSON mapping]: https://protobuf.dev/programming-guides/json/

use std::collections::{BTreeMap, BTreeSet, HashMap};

use http::Method;
use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, Value as ProtoValue,
};
use prost_types::FileDescriptorProto;
use serde_json::{json, Map, Value};

mod rules;

use crate::routes::{Route, RouteTable};
use crate::template::PathTemplate;
use crate::transcode::{BodyRule, JsonOptions};
use crate::well_known::{has_text_form, is_well_known, WellKnown};

/// How many levels of nested messages query parameters are generated for (`a.b.c` is three).
pub(crate) const MAX_QUERY_DEPTH: usize = 3;

/// The OpenAPI version of the documents [`document`] writes.
pub(crate) const OPENAPI_VERSION: &str = "3.0.3";

/// Full name of the `google.api.http` method option.
const HTTP_OPTION: &str = "google.api.http";

/// Where component schemas are referenced from.
const SCHEMA_PREFIX: &str = "#/components/schemas/";

/// Builds the OpenAPI 3.0.3 document of the routes in `table`, with JSON field names as `options`
/// writes them, and `title` and `version` as its `info` (see the [module documentation](self)).
pub(crate) fn document(
    table: &RouteTable,
    options: &JsonOptions,
    title: &str,
    version: &str,
) -> Value {
    let mut builder = Builder::new(options);

    let mut routes: Vec<(&Route, usize)> = table
        .routes()
        .iter()
        .map(|route| (route.as_ref(), binding_index(route)))
        .collect();
    routes.sort_by(|(a, a_index), (b, b_index)| {
        (
            a.method.parent_service().full_name(),
            a.method.name(),
            *a_index,
            a.http_method.as_str(),
            a.template.to_string(),
            a.service.as_str(),
        )
            .cmp(&(
                b.method.parent_service().full_name(),
                b.method.name(),
                *b_index,
                b.http_method.as_str(),
                b.template.to_string(),
                b.service.as_str(),
            ))
    });

    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut custom_methods = Vec::new();
    let mut collisions = Vec::new();
    let mut tags: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut operation_ids = OperationIds::default();

    for (route, _) in routes {
        let operation_id = operation_ids.next(&route.method);
        let rendered = render_path(&route.template);
        let listing = || {
            json!({
                "method": route.http_method.as_str(),
                "path": route.template.to_string(),
                "operationId": operation_id,
                "x-grpc-method": route.grpc_path(),
                "x-consul-service": route.service,
            })
        };
        let Some(slot) = operation_slot(&route.http_method) else {
            custom_methods.push(listing());
            continue;
        };
        let item = paths.entry(rendered.path.clone()).or_default();
        if let Some(taken) = item.get(slot) {
            let mut entry = listing();
            if let Some(object) = entry.as_object_mut() {
                object.insert(
                    "openapiPath".to_owned(),
                    Value::String(rendered.path.clone()),
                );
                object.insert(
                    "collidesWith".to_owned(),
                    taken.get("operationId").cloned().unwrap_or(Value::Null),
                );
            }
            collisions.push(entry);
            continue;
        }
        let operation = builder.operation(route, &rendered, &operation_id);
        item.insert(slot.to_owned(), operation);
        let service = route.method.parent_service();
        tags.entry(service.full_name().to_owned())
            .or_insert_with(|| builder.comments.of(&service.parent_file(), service.path()));
    }

    let error_name = builder.error_schema_name();
    let error_ref = format!("{SCHEMA_PREFIX}{error_name}");
    for item in paths.values_mut() {
        for operation in item.values_mut() {
            resolve_error_refs(operation, &error_ref);
        }
    }
    let any = any_schema();
    builder.schemas.insert(
        error_name,
        json!({
            "type": "object",
            "description": "An error: the gRPC status of the call (or the gateway's own error), as \
                            the gateway answers it with a non-2xx HTTP status.",
            "properties": {
                "code": {
                    "type": "integer",
                    "format": "int32",
                    "description": "The gRPC status code (`google.rpc.Code`), as a number.",
                },
                "message": {
                    "type": "string",
                    "description": "What went wrong.",
                },
                "details": {
                    "type": "array",
                    "description": "The status details, each a `google.protobuf.Any` in its JSON \
                                    form.",
                    "items": any,
                },
            },
            "required": ["code", "message"],
        }),
    );

    let mut document = Map::new();
    document.insert(
        "openapi".to_owned(),
        Value::String(OPENAPI_VERSION.to_owned()),
    );
    document.insert(
        "info".to_owned(),
        json!({
            "title": title,
            "version": version,
            "description": "The JSON/HTTP API of the protomesh gateway, generated from the \
                            `google.api.http` annotations of the gRPC services it routes to.",
        }),
    );
    document.insert(
        "tags".to_owned(),
        Value::Array(
            tags.into_iter()
                .map(|(name, description)| {
                    let mut tag = Map::new();
                    tag.insert("name".to_owned(), Value::String(name));
                    if let Some(description) = description {
                        tag.insert("description".to_owned(), Value::String(description));
                    }
                    Value::Object(tag)
                })
                .collect(),
        ),
    );
    document.insert(
        "paths".to_owned(),
        Value::Object(
            paths
                .into_iter()
                .filter(|(_, item)| !item.is_empty())
                .map(|(path, item)| (path, Value::Object(item)))
                .collect(),
        ),
    );
    document.insert(
        "components".to_owned(),
        json!({ "schemas": Value::Object(builder.schemas.into_iter().collect()) }),
    );
    if !custom_methods.is_empty() {
        document.insert("x-custom-methods".to_owned(), Value::Array(custom_methods));
    }
    if !collisions.is_empty() {
        document.insert("x-path-collisions".to_owned(), Value::Array(collisions));
    }
    Value::Object(document)
}

/// Adds the auth requirement of every operation of `document` (by its `x-grpc-method`, looked up
/// in `requirements`): the `bearerAuth` (JWT) and `apiKey` (`X-Api-Key`) security schemes in
/// `components.securitySchemes`, and on each operation `security`: `[]` for a public route,
/// either scheme otherwise, and the roles a route needs as `x-required-roles`. Operations whose
/// method is not in `requirements` are left as they are.
pub(crate) fn add_security(
    document: &mut Value,
    requirements: &std::collections::HashMap<String, protomesh::policy::Requirement>,
) {
    use protomesh::policy::Requirement;
    if let Some(components) = document
        .get_mut("components")
        .and_then(Value::as_object_mut)
    {
        components.insert(
            "securitySchemes".to_owned(),
            json!({
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT (RS256 or HS256) from the users service's login.",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Api-Key",
                    "description": "An API key (also accepted as `Authorization: ApiKey KEY`).",
                },
            }),
        );
    }
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for operation in item.values_mut().filter_map(Value::as_object_mut) {
            let Some(requirement) = operation
                .get("x-grpc-method")
                .and_then(Value::as_str)
                .and_then(|method| requirements.get(method))
            else {
                continue;
            };
            let security = match requirement {
                Requirement::Public => json!([]),
                Requirement::Authenticated | Requirement::Role(_) => {
                    json!([{ "bearerAuth": [] }, { "apiKey": [] }])
                }
            };
            operation.insert("security".to_owned(), security);
            if let Requirement::Role(roles) = requirement {
                operation.insert("x-required-roles".to_owned(), json!(roles));
            }
        }
    }
}

/// The key of an operation with this HTTP method in an OpenAPI path item, if it has one.
fn operation_slot(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "get",
        Method::PUT => "put",
        Method::POST => "post",
        Method::DELETE => "delete",
        Method::PATCH => "patch",
        Method::HEAD => "head",
        Method::OPTIONS => "options",
        Method::TRACE => "trace",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Operation IDs

/// Hands out unique operation IDs: `Service_Method`, then `Service_Method2`, … for the method's
/// further routes.
#[derive(Debug, Default)]
struct OperationIds {
    used: BTreeSet<String>,
    per_method: HashMap<String, usize>,
}

impl OperationIds {
    fn next(&mut self, method: &MethodDescriptor) -> String {
        let count = self
            .per_method
            .entry(method.full_name().to_owned())
            .or_default();
        *count += 1;
        let mut base = format!("{}_{}", method.parent_service().name(), method.name());
        if *count > 1 {
            base.push_str(&count.to_string());
        }
        let mut id = base.clone();
        let mut suffix = 1;
        while self.used.contains(&id) {
            suffix += 1;
            id = format!("{base}_{suffix}");
        }
        self.used.insert(id.clone());
        id
    }
}

/// The position of the route's rule among its method's `google.api.http` rule and additional
/// bindings (0 for the rule itself); `usize::MAX` if it is not found there.
fn binding_index(route: &Route) -> usize {
    let method = &route.method;
    let Some(extension) = method.parent_pool().get_extension_by_name(HTTP_OPTION) else {
        return usize::MAX;
    };
    let options = method.options();
    if !options.has_extension(&extension) {
        return usize::MAX;
    }
    let ProtoValue::Message(rule) = options.get_extension(&extension).into_owned() else {
        return usize::MAX;
    };
    let mut rules = vec![rule.clone()];
    if let Some(ProtoValue::List(more)) = rule
        .get_field_by_name("additional_bindings")
        .map(|v| v.into_owned())
    {
        rules.extend(more.into_iter().filter_map(|v| match v {
            ProtoValue::Message(m) => Some(m),
            _ => None,
        }));
    }
    rules
        .iter()
        .position(|rule| {
            rule_pattern(rule).is_some_and(|(verb, path)| {
                verb.eq_ignore_ascii_case(route.http_method.as_str())
                    && PathTemplate::parse(&path).is_ok_and(|t| t == route.template)
            })
        })
        .unwrap_or(usize::MAX)
}

/// The HTTP method and path of an `HttpRule`.
fn rule_pattern(rule: &DynamicMessage) -> Option<(String, String)> {
    let text = |message: &DynamicMessage, name: &str| -> Option<String> {
        if !message.has_field_by_name(name) {
            return None;
        }
        match message.get_field_by_name(name)?.into_owned() {
            ProtoValue::String(text) => Some(text),
            _ => None,
        }
    };
    for verb in ["get", "put", "post", "delete", "patch"] {
        if let Some(path) = text(rule, verb) {
            return Some((verb.to_owned(), path));
        }
    }
    if !rule.has_field_by_name("custom") {
        return None;
    }
    match rule.get_field_by_name("custom")?.into_owned() {
        ProtoValue::Message(custom) => Some((
            text(&custom, "kind").unwrap_or_default(),
            text(&custom, "path").unwrap_or_default(),
        )),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// A path template as an OpenAPI path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RenderedPath {
    /// The OpenAPI path, `/v1/{name}:publish`.
    path: String,
    /// Its parameters, in order.
    parameters: Vec<PathParameter>,
}

/// One `{parameter}` of a rendered path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathParameter {
    /// The parameter's name in the path: the dotted field path, or `_segmentN` for a bare
    /// wildcard.
    name: String,
    /// The bound field (proto names), `None` for a bare wildcard.
    field_path: Option<Vec<String>>,
    /// The segments the value must match, when not a single `*`: `["shelves", "*"]`.
    pattern: Option<Vec<String>>,
}

impl PathParameter {
    /// Whether the value can hold a `/`.
    fn multi_segment(&self) -> bool {
        self.pattern
            .as_ref()
            .is_some_and(|p| p.len() > 1 || p.iter().any(|s| s == "**"))
    }
}

/// Renders `template` as an OpenAPI path (see the [module documentation](self)).
fn render_path(template: &PathTemplate) -> RenderedPath {
    let text = template.to_string();
    let verb = template.verb();
    let body = verb
        .and_then(|verb| text.strip_suffix(&format!(":{verb}")))
        .unwrap_or(&text);
    let mut field_paths = template.variables();

    // Segments of the canonical text, a variable (with its own `/`s) being one.
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in body.strip_prefix('/').unwrap_or(body).chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => {
                segments.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    segments.push(current);

    let variable_names: Vec<String> = template.variables().map(|v| v.join(".")).collect();
    let mut wildcard = 0usize;
    let mut parameters = Vec::new();
    let mut path = String::new();
    for segment in segments {
        path.push('/');
        if let Some(inner) = segment
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
        {
            let (name, pattern) = match inner.split_once('=') {
                Some((name, pattern)) => (name, Some(pattern)),
                None => (inner, None),
            };
            let field_path = field_paths
                .next()
                .map(<[String]>::to_vec)
                .unwrap_or_else(|| name.split('.').map(str::to_owned).collect());
            // `{task.id}` is not a name OpenAPI tools read: it is named by its last field,
            // `{id}` (so `/v1/tasks/{task.id}` is the same path as `/v1/tasks/{id}`, as OpenAPI
            // requires of paths that match the same URLs), or `{task_id}` when another variable
            // ends with the same name. The gateway matches by position: the name is the
            // document's alone.
            let last = field_path.last().cloned().unwrap_or_default();
            let shared = variable_names
                .iter()
                .filter(|v| v.rsplit('.').next() == Some(last.as_str()))
                .count()
                > 1;
            let mut name = if field_path.len() > 1 && shared {
                field_path.join("_")
            } else {
                last
            };
            while parameters.iter().any(|p: &PathParameter| p.name == name)
                || (field_path.len() > 1 && variable_names.contains(&name))
            {
                name.push('_');
            }
            path.push('{');
            path.push_str(&name);
            path.push('}');
            parameters.push(PathParameter {
                name,
                field_path: Some(field_path),
                pattern: pattern
                    .filter(|p| *p != "*")
                    .map(|p| p.split('/').map(str::to_owned).collect()),
            });
        } else if segment == "*" || segment == "**" {
            let name = loop {
                wildcard += 1;
                let name = format!("_segment{wildcard}");
                if !variable_names.contains(&name) {
                    break name;
                }
            };
            path.push('{');
            path.push_str(&name);
            path.push('}');
            parameters.push(PathParameter {
                name,
                field_path: None,
                pattern: (segment == "**").then(|| vec![segment.clone()]),
            });
        } else {
            path.push_str(&segment);
        }
    }
    if let Some(verb) = verb {
        path.push(':');
        path.push_str(verb);
    }
    RenderedPath { path, parameters }
}

/// A regular expression for values of a variable with these segments, unless a literal is
/// percent-encoded (the value is matched decoded, so the pattern would mislead).
fn segments_regex(segments: &[String]) -> Option<String> {
    let mut regex = String::from("^");
    for (i, segment) in segments.iter().enumerate() {
        match segment.as_str() {
            "*" => {
                if i > 0 {
                    regex.push('/');
                }
                regex.push_str("[^/]+");
            }
            "**" if i > 0 => regex.push_str("(/[^/]+)*"),
            "**" => regex.push_str("([^/]+(/[^/]+)*)?"),
            literal if literal.contains('%') => return None,
            literal => {
                if i > 0 {
                    regex.push('/');
                }
                for c in literal.chars() {
                    if "\\^$.|?*+()[]{}".contains(c) {
                        regex.push('\\');
                    }
                    regex.push(c);
                }
            }
        }
    }
    regex.push('$');
    Some(regex)
}

// ---------------------------------------------------------------------------------------------
// Comments

/// The comments of the descriptors' source info, indexed by file and path.
#[derive(Debug, Default)]
struct Comments {
    /// Per file (by the address of its descriptor, which lives as long as its pool): each
    /// element's path and its cleaned-up comment.
    files: HashMap<*const FileDescriptorProto, HashMap<Vec<i32>, String>>,
}

impl Comments {
    /// The comment of the element at `path` in `file` (the leading one, else the trailing one),
    /// cleaned up; `None` if there is none or the file has no source info.
    fn of(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        let proto = file.file_descriptor_proto();
        let index = self
            .files
            .entry(std::ptr::from_ref(proto))
            .or_insert_with(|| {
                proto
                    .source_code_info
                    .iter()
                    .flat_map(|info| &info.location)
                    .filter_map(|location| {
                        let comment = [&location.leading_comments, &location.trailing_comments]
                            .into_iter()
                            .flatten()
                            .find_map(|text| clean_comment(text))?;
                        Some((location.path.clone(), comment))
                    })
                    .collect()
            });
        index.get(path).cloned()
    }
}

/// A comment without the space after each `//` and without blank lines around it.
fn clean_comment(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect();
    let cleaned = lines.join("\n").trim().to_owned();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// A comment as a summary (its first paragraph, on one line) and a description (the rest).
fn split_comment(comment: &str) -> (String, Option<String>) {
    match comment.split_once("\n\n") {
        Some((first, rest)) => (
            first.split_whitespace().collect::<Vec<_>>().join(" "),
            Some(rest.trim().to_owned()).filter(|r| !r.is_empty()),
        ),
        None => (
            comment.split_whitespace().collect::<Vec<_>>().join(" "),
            None,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and schemas

/// The document under construction: the component schemas so far and the comment index.
struct Builder<'o> {
    options: &'o JsonOptions,
    schemas: BTreeMap<String, Value>,
    comments: Comments,
}

impl<'o> Builder<'o> {
    fn new(options: &'o JsonOptions) -> Self {
        Self {
            options,
            schemas: BTreeMap::new(),
            comments: Comments::default(),
        }
    }

    /// The name of the error schema: `Error`, unless a message is called that (with no package),
    /// then `gateway-Error` (no message's full name has a `-`).
    fn error_schema_name(&self) -> String {
        if self.schemas.contains_key("Error") {
            "gateway-Error".to_owned()
        } else {
            "Error".to_owned()
        }
    }

    /// A reference to the error schema, whose name is known only once every message schema is
    /// (see [`resolve_error_refs`]).
    fn error_ref() -> Value {
        json!({ "$ref": ERROR_PLACEHOLDER })
    }

    /// The name `field` goes by in JSON: its JSON name, or its proto name with
    /// [`JsonOptions::use_proto_names`].
    fn property_name<'f>(&self, field: &'f FieldDescriptor) -> &'f str {
        if self.options.use_proto_names {
            field.name()
        } else {
            field.json_name()
        }
    }

    /// The operation for `route`, at `path`.
    fn operation(&mut self, route: &Route, path: &RenderedPath, operation_id: &str) -> Value {
        let method = &route.method;
        let input = method.input();
        let output = method.output();
        let mut operation = Map::new();
        operation.insert(
            "operationId".to_owned(),
            Value::String(operation_id.to_owned()),
        );
        let comment = self.comments.of(&method.parent_file(), method.path());
        let (summary, mut description) = match comment {
            Some(comment) => split_comment(&comment),
            None => (method.full_name().to_owned(), None),
        };
        if method.is_client_streaming() {
            let note = "A client-streaming method: the HTTP request carries exactly one request \
                        message.";
            description = Some(match description {
                Some(text) => format!("{text}\n\n{note}"),
                None => note.to_owned(),
            });
        }
        operation.insert("summary".to_owned(), Value::String(summary));
        if let Some(description) = description {
            operation.insert("description".to_owned(), Value::String(description));
        }
        operation.insert(
            "tags".to_owned(),
            json!([method.parent_service().full_name()]),
        );
        if is_deprecated(&method.options()) {
            operation.insert("deprecated".to_owned(), Value::Bool(true));
        }

        // Parameters: the path's, then the query's.
        let mut parameters = Vec::new();
        let mut bound = Vec::new();
        for parameter in &path.parameters {
            parameters.push(self.path_parameter(&input, parameter));
            if let Some(field_path) = &parameter.field_path {
                bound.push(field_path.clone());
            }
        }
        if route.body != BodyRule::Whole {
            let body_field = match &route.body {
                BodyRule::Field(field) => Some(field.as_str()),
                _ => None,
            };
            let mut query = Vec::new();
            self.query_parameters(
                &input,
                &QueryWalk {
                    bound: &bound,
                    body_field,
                    filled_mask: filled_mask(route).then_some("update_mask"),
                },
                &mut Vec::new(),
                &mut Vec::new(),
                &mut vec![input.full_name().to_owned()],
                &mut query,
            );
            parameters.extend(query);
        }
        if !parameters.is_empty() {
            operation.insert("parameters".to_owned(), Value::Array(parameters));
        }

        // Request body.
        let request_schema = match &route.body {
            BodyRule::None => None,
            BodyRule::Whole => {
                // The fields the path binds are the path's: the body's schema leaves them out.
                let path_fields: Vec<&str> = path
                    .parameters
                    .iter()
                    .filter_map(|p| p.field_path.as_ref())
                    .filter(|f| f.len() == 1)
                    .map(|f| f[0].as_str())
                    .collect();
                let schema = if path_fields.is_empty() {
                    self.message_schema(&input)
                } else {
                    self.message_definition(&input, &Variant::Body(&path_fields))
                };
                let required = if path_fields.is_empty() {
                    input
                        .fields()
                        .any(|f| f.is_required() || rules::must_carry(&f))
                } else {
                    schema.get("required").is_some()
                };
                let description = if path_fields.is_empty() {
                    "The request message."
                } else {
                    "The request message, less the fields the URL path binds."
                };
                Some((schema, description.to_owned(), required))
            }
            BodyRule::Field(name) => input.get_field_by_name(name).map(|field| {
                let schema = match field.kind() {
                    Kind::Message(resource) if filled_mask(route) && !field.is_list() => {
                        self.update_schema(&resource)
                    }
                    _ => self.field_schema(&field),
                };
                let mut description = format!(
                    "The `{}` field of the request message ({}).",
                    self.property_name(&field),
                    input.full_name()
                );
                if filled_mask(route) {
                    description.push_str(
                        " The fields it holds are the ones updated (the update mask); \
                         output-only fields are ignored.",
                    );
                }
                (schema, description, rules::must_carry(&field))
            }),
        };
        if let Some((schema, description, required)) = request_schema {
            operation.insert(
                "requestBody".to_owned(),
                json!({
                    "description": description,
                    "required": required,
                    "content": { "application/json": { "schema": schema } },
                }),
            );
        }

        // Responses.
        let (response_schema, what) = match route
            .response_body
            .as_deref()
            .and_then(|name| output.get_field_by_name(name))
        {
            Some(field) => (
                self.field_schema(&field),
                format!(
                    "the `{}` field of the response message ({})",
                    self.property_name(&field),
                    output.full_name()
                ),
            ),
            None => (
                self.message_schema(&output),
                format!("the response message ({})", output.full_name()),
            ),
        };
        let ok = if method.is_server_streaming() {
            json!({
                "description": format!(
                    "A stream of messages, each {what}: as newline-delimited JSON (one message \
                     per line), or as server-sent events (one `data:` event per message) when the \
                     request's `Accept` header includes `text/event-stream`. An error after the \
                     stream has started ends it with one last item `{{\"error\": Error}}`."
                ),
                "content": {
                    "application/x-ndjson": { "schema": response_schema.clone() },
                    "text/event-stream": { "schema": response_schema },
                },
            })
        } else {
            json!({
                "description": format!("OK: {what}."),
                "content": { "application/json": { "schema": response_schema } },
            })
        };
        operation.insert(
            "responses".to_owned(),
            json!({
                "200": ok,
                "default": {
                    "description": "An error, with the HTTP status of its gRPC code.",
                    "content": { "application/json": { "schema": Self::error_ref() } },
                },
            }),
        );
        operation.insert(
            "x-grpc-method".to_owned(),
            Value::String(route.grpc_path().to_owned()),
        );
        operation.insert(
            "x-consul-service".to_owned(),
            Value::String(route.service.clone()),
        );
        Value::Object(operation)
    }

    /// The parameter object of a path parameter of a route to a method taking `input`.
    fn path_parameter(&mut self, input: &MessageDescriptor, parameter: &PathParameter) -> Value {
        let field = parameter
            .field_path
            .as_ref()
            .and_then(|path| resolve_field(input, path));
        let mut schema = match &field {
            Some(field) => {
                let schema = self.kind_schema(&field.kind());
                rules::constrain(schema, field)
            }
            None => json!({ "type": "string" }),
        };
        let mut notes = Vec::new();
        if let Some(comment) = field
            .as_ref()
            .and_then(|f| self.comments.of(&f.parent_file(), f.path()))
        {
            notes.push(comment);
        }
        if parameter.field_path.is_none() {
            notes.push(
                "A path segment the template matches with a wildcard; it is bound to no field."
                    .to_owned(),
            );
        }
        if let Some(pattern) = &parameter.pattern {
            let pattern_text = pattern.join("/");
            if parameter.field_path.is_some() {
                notes.push(format!(
                    "The value has the form `{pattern_text}` (`*` is one path segment, `**` any \
                     number of them)."
                ));
            }
            if parameter.multi_segment() {
                notes.push(
                    "The value spans several path segments: it contains `/`, which OpenAPI path \
                     parameters cannot express. Send its `/` separators unescaped (a `%2F` does \
                     not match the route); escape other reserved characters as usual."
                        .to_owned(),
                );
            }
            if let (Some(regex), Some(object)) = (segments_regex(pattern), schema.as_object_mut()) {
                if !object.contains_key("$ref") {
                    object.insert("pattern".to_owned(), Value::String(regex));
                }
            }
        }
        let mut object = Map::new();
        object.insert("name".to_owned(), Value::String(parameter.name.clone()));
        object.insert("in".to_owned(), Value::String("path".to_owned()));
        object.insert("required".to_owned(), Value::Bool(true));
        if !notes.is_empty() {
            object.insert("description".to_owned(), Value::String(notes.join("\n\n")));
        }
        object.insert("schema".to_owned(), schema);
        Value::Object(object)
    }

    /// Appends to `out` the query parameters for the fields of `message` (reached by
    /// `proto_path`, named by `names`), recursing into nested messages; `visiting` holds the
    /// messages being expanded.
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        walk: &QueryWalk<'_>,
        proto_path: &mut Vec<String>,
        names: &mut Vec<String>,
        visiting: &mut Vec<String>,
        out: &mut Vec<Value>,
    ) {
        for field in message.fields() {
            if proto_path.is_empty()
                && (walk.body_field == Some(field.name()) || walk.filled_mask == Some(field.name()))
            {
                continue;
            }
            proto_path.push(field.name().to_owned());
            names.push(self.property_name(&field).to_owned());
            if !walk.bound.contains(proto_path) && !field.is_map() {
                match field.kind() {
                    Kind::Message(inner) if has_text_form(&inner) => {
                        out.push(self.query_parameter(&field, names));
                    }
                    Kind::Message(inner) => {
                        if !field.is_list()
                            && !is_well_known(&inner)
                            && proto_path.len() < MAX_QUERY_DEPTH
                            && !visiting.iter().any(|name| name == inner.full_name())
                        {
                            visiting.push(inner.full_name().to_owned());
                            self.query_parameters(&inner, walk, proto_path, names, visiting, out);
                            visiting.pop();
                        }
                    }
                    _ => out.push(self.query_parameter(&field, names)),
                }
            }
            proto_path.pop();
            names.pop();
        }
    }

    /// The query parameter for `field`, named by the dotted `names`.
    fn query_parameter(&mut self, field: &FieldDescriptor, names: &[String]) -> Value {
        let mut object = Map::new();
        object.insert("name".to_owned(), Value::String(names.join(".")));
        object.insert("in".to_owned(), Value::String("query".to_owned()));
        let mut description = self.comments.of(&field.parent_file(), field.path());
        if field.is_list() {
            let note = "Repeat the parameter for each element.";
            description = Some(match description {
                Some(text) => format!("{text}\n\n{note}"),
                None => note.to_owned(),
            });
        }
        if let Some(description) = description {
            object.insert("description".to_owned(), Value::String(description));
        }
        if is_deprecated(&field.options()) {
            object.insert("deprecated".to_owned(), Value::Bool(true));
        }
        if names.len() == 1 && rules::must_carry(field) {
            object.insert("required".to_owned(), Value::Bool(true));
        }
        let item = self.kind_schema(&field.kind());
        let schema = if field.is_list() {
            object.insert("style".to_owned(), Value::String("form".to_owned()));
            object.insert("explode".to_owned(), Value::Bool(true));
            json!({ "type": "array", "items": item })
        } else {
            item
        };
        object.insert("schema".to_owned(), rules::constrain(schema, field));
        Value::Object(object)
    }

    /// The schema of a value of message type `message`: a `$ref` (the schema added to the
    /// components), or the inline JSON form of a well-known type.
    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known_schema(message) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.schemas.contains_key(&name) {
            // A placeholder first, so that a recursive message refers to itself and stops.
            self.schemas.insert(name.clone(), Value::Null);
            let schema = self.message_definition(message, &Variant::Full);
            self.schemas.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("{SCHEMA_PREFIX}{name}") })
    }

    /// The schema of `resource` as the body of an update whose mask the gateway fills from the
    /// body's keys: a `$ref` to `<full name>-update`, whose fields are all optional (and at least
    /// one is given).
    fn update_schema(&mut self, resource: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known_schema(resource) {
            return schema;
        }
        let name = format!("{}-update", resource.full_name());
        if !self.schemas.contains_key(&name) {
            self.schemas.insert(name.clone(), Value::Null);
            let schema = self.message_definition(resource, &Variant::Update);
            self.schemas.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("{SCHEMA_PREFIX}{name}") })
    }

    /// The schema of `message`, as `variant` says.
    fn message_definition(&mut self, message: &MessageDescriptor, variant: &Variant<'_>) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            if matches!(variant, Variant::Body(bound) if bound.contains(&field.name())) {
                continue;
            }
            let name = self.property_name(&field).to_owned();
            let schema = self.field_schema(&field);
            let schema = match variant {
                Variant::Update => rules::constrain_update(schema, &field),
                _ => rules::constrain(schema, &field),
            };
            let mut notes = Vec::new();
            if let Some(comment) = self.comments.of(&field.parent_file(), field.path()) {
                notes.push(comment);
            }
            if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
                let members: Vec<String> = oneof
                    .fields()
                    .map(|f| format!("`{}`", self.property_name(&f)))
                    .collect();
                notes.push(format!(
                    "Part of the oneof `{}`: at most one of {} is set.",
                    oneof.name(),
                    members.join(", ")
                ));
            }
            let description = (!notes.is_empty()).then(|| notes.join("\n\n"));
            let mut schema = annotate(schema, description, is_deprecated(&field.options()));
            if protomesh::rules::is_output_only(&field) {
                schema = read_only(schema);
            }
            let carried = field.is_required() || rules::must_carry(&field);
            if !carried {
                // `null` is the field's default (the proto3 JSON mapping), unless that breaks
                // its rules.
                schema = nullable(schema);
            } else if !matches!(variant, Variant::Update) {
                required.push(Value::String(name.clone()));
            }
            properties.insert(name, schema);
        }
        let mut object = Map::new();
        object.insert("type".to_owned(), Value::String("object".to_owned()));
        if let Some(comment) = self.comments.of(&message.parent_file(), message.path()) {
            object.insert("description".to_owned(), Value::String(comment));
        }
        if !properties.is_empty() {
            object.insert("properties".to_owned(), Value::Object(properties));
        }
        if !required.is_empty() {
            object.insert("required".to_owned(), Value::Array(required));
        }
        if matches!(variant, Variant::Update) {
            object.insert("minProperties".to_owned(), json!(1));
        }
        if !self.options.allow_unknown_fields {
            // The gateway refuses a field the message does not have.
            object.insert("additionalProperties".to_owned(), Value::Bool(false));
        }
        if is_deprecated(&message.options()) {
            object.insert("deprecated".to_owned(), Value::Bool(true));
        }
        Value::Object(object)
    }

    /// The schema of `field`'s value: an array for a repeated field, an object for a map.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            if let Kind::Message(entry) = field.kind() {
                let key = entry.map_entry_key_field().kind();
                let value = self.kind_schema(&entry.map_entry_value_field().kind());
                let mut object = Map::new();
                object.insert("type".to_owned(), Value::String("object".to_owned()));
                object.insert("additionalProperties".to_owned(), value);
                if !matches!(key, Kind::String) {
                    object.insert(
                        "x-map-key-type".to_owned(),
                        Value::String(kind_name(&key).to_owned()),
                    );
                }
                return Value::Object(object);
            }
        }
        let item = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": item })
        } else {
            item
        }
    }

    /// The schema of one value of `kind`.
    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Message(message) => self.message_schema(message),
            Kind::Enum(enumeration) => self.enum_schema(enumeration),
            scalar => scalar_schema(scalar),
        }
    }

    /// The schema of an enum value: a `$ref` to the enum's component schema (`null` for
    /// `google.protobuf.NullValue`).
    fn enum_schema(&mut self, enumeration: &EnumDescriptor) -> Value {
        if enumeration.full_name() == "google.protobuf.NullValue" {
            return json!({ "nullable": true, "enum": [null], "description": "Always `null`." });
        }
        let name = enumeration.full_name().to_owned();
        if !self.schemas.contains_key(&name) {
            let mut names: Vec<Value> = Vec::new();
            let mut value_notes = Vec::new();
            for value in enumeration.values() {
                let value_name = Value::String(value.name().to_owned());
                if !names.contains(&value_name) {
                    names.push(value_name);
                }
                if let Some(comment) = self.comments.of(&value.parent_file(), value.path()) {
                    value_notes.push(format!(
                        "- `{}`: {}",
                        value.name(),
                        comment.split_whitespace().collect::<Vec<_>>().join(" ")
                    ));
                }
            }
            let mut description = self
                .comments
                .of(&enumeration.parent_file(), enumeration.path())
                .unwrap_or_default();
            if !value_notes.is_empty() {
                if !description.is_empty() {
                    description.push_str("\n\n");
                }
                description.push_str(&value_notes.join("\n"));
            }
            let mut object = Map::new();
            object.insert("type".to_owned(), Value::String("string".to_owned()));
            if !description.is_empty() {
                object.insert("description".to_owned(), Value::String(description));
            }
            object.insert("enum".to_owned(), Value::Array(names));
            if is_deprecated(&enumeration.options()) {
                object.insert("deprecated".to_owned(), Value::Bool(true));
            }
            self.schemas.insert(name.clone(), Value::Object(object));
        }
        json!({ "$ref": format!("{SCHEMA_PREFIX}{name}") })
    }
}

/// The state of a query parameter walk that does not change as it goes down.
struct QueryWalk<'a> {
    /// Field paths bound by the URL path (proto names).
    bound: &'a [Vec<String>],
    /// The top-level field that is the body, if any.
    body_field: Option<&'a str>,
    /// The top-level `update_mask` the gateway fills from the body's keys, if any: not a
    /// parameter of the operation.
    filled_mask: Option<&'a str>,
}

/// A reference to no schema (a full name has no `!`), standing for the error schema's until its
/// name is known.
const ERROR_PLACEHOLDER: &str = "#/components/schemas/!error";

/// Replaces every reference to [`ERROR_PLACEHOLDER`] in `value` by `target`.
fn resolve_error_refs(value: &mut Value, target: &str) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object.iter_mut() {
                if key == "$ref" && inner.as_str() == Some(ERROR_PLACEHOLDER) {
                    *inner = Value::String(target.to_owned());
                } else {
                    resolve_error_refs(inner, target);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| resolve_error_refs(item, target)),
        _ => {}
    }
}

/// Adds a description (and `deprecated`) to `schema`; a `$ref` cannot have siblings in OpenAPI
/// 3.0, so it is wrapped in `allOf` first.
fn annotate(schema: Value, description: Option<String>, deprecated: bool) -> Value {
    if description.is_none() && !deprecated {
        return schema;
    }
    let mut object = match schema {
        Value::Object(object) if !object.contains_key("$ref") => object,
        other => {
            let mut object = Map::new();
            object.insert("allOf".to_owned(), Value::Array(vec![other]));
            object
        }
    };
    if let Some(description) = description {
        object.insert("description".to_owned(), Value::String(description));
    }
    if deprecated {
        object.insert("deprecated".to_owned(), Value::Bool(true));
    }
    Value::Object(object)
}

/// `schema` allowing `null` too (a `$ref` wrapped in `allOf` first).
fn nullable(schema: Value) -> Value {
    with_flag(schema, "nullable")
}

/// `schema` marked `readOnly` (a `$ref` wrapped in `allOf` first).
fn read_only(schema: Value) -> Value {
    with_flag(schema, "readOnly")
}

/// `schema` with `flag: true`; a `$ref` cannot carry siblings in OpenAPI 3.0, so it is wrapped in
/// `allOf` first.
fn with_flag(schema: Value, flag: &str) -> Value {
    let mut object = match schema {
        Value::Object(object) if !object.contains_key("$ref") => object,
        other => {
            let mut object = Map::new();
            object.insert("allOf".to_owned(), Value::Array(vec![other]));
            object
        }
    };
    object.insert(flag.to_owned(), Value::Bool(true));
    Value::Object(object)
}

/// Which schema of a message [`Builder::message_definition`] writes.
enum Variant<'a> {
    /// The message as it is (a component).
    Full,
    /// A request message as a body, less these top-level fields (bound by the URL path).
    Body(&'a [&'a str]),
    /// A resource as an update's body: every field optional, at least one given.
    Update,
}

/// Whether the gateway fills the `update_mask` of `route`'s requests from the body's keys: a
/// PATCH whose body is a message field of a request with a `google.protobuf.FieldMask
/// update_mask` (see [`crate::transcode`]).
fn filled_mask(route: &Route) -> bool {
    let BodyRule::Field(body) = &route.body else {
        return false;
    };
    let input = route.method.input();
    route.http_method == Method::PATCH
        && input.get_field_by_name(body).is_some_and(|field| {
            !field.is_list() && matches!(field.kind(), Kind::Message(ref m) if !is_well_known(m))
        })
        && input.get_field_by_name("update_mask").is_some_and(|field| {
            !field.is_list()
                && matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
        })
}

/// The field at the end of `path` (proto names) from `message`.
fn resolve_field(message: &MessageDescriptor, path: &[String]) -> Option<FieldDescriptor> {
    let (last, parents) = path.split_last()?;
    let mut message = message.clone();
    for name in parents {
        match message.get_field_by_name(name)?.kind() {
            Kind::Message(inner) => message = inner,
            _ => return None,
        }
    }
    message.get_field_by_name(last)
}

/// Whether `options` (a descriptor's options message) says `deprecated = true`.
fn is_deprecated(options: &DynamicMessage) -> bool {
    options.has_field_by_name("deprecated")
        && matches!(
            options
                .get_field_by_name("deprecated")
                .map(|v| v.into_owned()),
            Some(ProtoValue::Bool(true))
        )
}

/// The schema of a scalar (not message, not enum) value by the proto3 JSON mapping.
fn scalar_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4_294_967_295u32 })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": "string", "format": "int64" })
        }
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
        Kind::Float => json!({ "type": "number", "format": "float" }),
        Kind::Double => json!({ "type": "number", "format": "double" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte" }),
        // Not scalars: the callers handle them; any value, should one get here.
        Kind::Message(_) | Kind::Enum(_) => json!({}),
    }
}

/// The proto name of a scalar kind (for map keys).
fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
    }
}

/// The JSON form of `google.protobuf.Any`: an object with `@type` and the message's fields (or
/// `value` for a well-known type).
fn any_schema() -> Value {
    json!({
        "type": "object",
        "description": "A message of any type: `@type` names it (`type.googleapis.com/<full \
                        name>`), the other properties are its fields (or `value`, for a \
                        well-known type).",
        "properties": { "@type": { "type": "string" } },
        "required": ["@type"],
        "additionalProperties": true,
    })
}

/// The inline schema of a well-known type with a special JSON form, `None` for other messages.
fn well_known_schema(message: &MessageDescriptor) -> Option<Value> {
    let wrapped = |kind: Kind| {
        let mut schema = scalar_schema(&kind);
        if let Some(object) = schema.as_object_mut() {
            object.insert("nullable".to_owned(), Value::Bool(true));
        }
        schema
    };
    Some(match WellKnown::of(message)? {
        WellKnown::Timestamp => json!({
            "type": "string",
            "format": "date-time",
            "description": "An RFC 3339 timestamp in UTC, e.g. `2024-01-02T03:04:05.5Z`.",
        }),
        WellKnown::Duration => json!({
            "type": "string",
            "description": "A duration in seconds with up to 9 fractional digits, suffixed by \
                            `s`, e.g. `1.5s`.",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        }),
        WellKnown::FieldMask => json!({
            "type": "string",
            "description": "Field paths separated by commas, each field by its lowerCamelCase \
                            name, e.g. `title,owner.displayName`.",
        }),
        WellKnown::Struct => json!({ "type": "object", "additionalProperties": true }),
        WellKnown::Value => json!({}),
        WellKnown::ListValue => json!({ "type": "array", "items": {} }),
        WellKnown::Empty => json!({ "type": "object" }),
        WellKnown::Any => any_schema(),
        WellKnown::Wrapper(kind) => wrapped(kind),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prost::Message;
    use prost_reflect::DescriptorPool;

    fn mesh_pool() -> DescriptorPool {
        crate::test_support::pool()
    }

    fn methods(pool: &DescriptorPool, service: &str) -> Vec<MethodDescriptor> {
        pool.get_service_by_name(service)
            .unwrap()
            .methods()
            .collect()
    }

    fn mesh_table() -> RouteTable {
        let pool = mesh_pool();
        RouteTable::build([
            (
                "priority",
                methods(&pool, "protomesh.priority.v1.PriorityService"),
            ),
            ("probe", methods(&pool, "protomesh.probe.v1.ProbeService")),
        ])
    }

    fn mesh_document(options: &JsonOptions) -> Value {
        document(&mesh_table(), options, "protomesh", "0.1.0")
    }

    /// `properties` (an object of property schemas) without the `nullable` every optional
    /// field has (a `$ref` unwrapped from its `allOf` again), for comparing types.
    fn plain(properties: &Value) -> Value {
        let mut out = properties.clone();
        for schema in out.as_object_mut().unwrap().values_mut() {
            let object = schema.as_object_mut().unwrap();
            if object.remove("nullable").is_some() && object.len() == 1 {
                if let Some(Value::Array(all)) = object.get("allOf") {
                    if all.len() == 1 {
                        *schema = all[0].clone();
                    }
                }
            }
        }
        out
    }

    /// The component schema `$ref` points to.
    fn deref<'d>(document: &'d Value, reference: &Value) -> &'d Value {
        let name = reference["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix(SCHEMA_PREFIX))
            .unwrap_or_else(|| panic!("not a schema reference: {reference}"));
        let schema = &document["components"]["schemas"][name];
        assert!(schema.is_object(), "no schema {name}");
        schema
    }

    /// Every `$ref` in `value`.
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                for (key, inner) in object {
                    match (key.as_str(), inner) {
                        ("$ref", Value::String(target)) => out.push(target.clone()),
                        _ => refs(inner, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
            _ => {}
        }
    }

    fn assert_refs_resolve(document: &Value) {
        let mut found = Vec::new();
        refs(document, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let name = target
                .strip_prefix(SCHEMA_PREFIX)
                .unwrap_or_else(|| panic!("{target} is not a component schema"));
            assert!(
                document["components"]["schemas"][name].is_object(),
                "{target} does not resolve"
            );
        }
    }

    #[test]
    fn the_mesh_services_are_documented() {
        let doc = mesh_document(&JsonOptions::default());
        assert_eq!(doc["openapi"], "3.0.3");
        assert_eq!(doc["info"]["title"], "protomesh");
        assert_eq!(doc["info"]["version"], "0.1.0");
        assert!(doc.get("servers").is_none());

        let score = &doc["paths"]["/v1/priority:score"]["post"];
        assert_eq!(score["operationId"], "PriorityService_Score");
        assert_eq!(
            score["tags"],
            json!(["protomesh.priority.v1.PriorityService"])
        );
        assert!(
            score["summary"]
                .as_str()
                .unwrap()
                .starts_with("Scores one task: score = urgency × impact"),
            "{}",
            score["summary"]
        );
        assert_eq!(
            score["x-grpc-method"],
            "/protomesh.priority.v1.PriorityService/Score"
        );
        assert_eq!(score["x-consul-service"], "priority");
        // body "*": no query parameters.
        assert!(score.get("parameters").is_none());
        let body = &score["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            body["$ref"],
            "#/components/schemas/protomesh.priority.v1.ScoreRequest"
        );
        let request = deref(&doc, body);
        assert_eq!(request["type"], "object");
        assert_eq!(
            request["description"],
            "One task to score. Urgency and impact are each 1..10."
        );
        assert_eq!(request["properties"]["title"]["nullable"], true);
        let properties = &plain(&request["properties"]);
        assert_eq!(properties["title"], json!({ "type": "string" }));
        assert_eq!(properties["urgency"]["type"], "integer");
        assert_eq!(properties["urgency"]["format"], "int32");
        assert_eq!(properties["impact"]["type"], "integer");

        let ok = &score["responses"]["200"]["content"]["application/json"]["schema"];
        let response = deref(&doc, ok);
        let level = deref(&doc, &plain(&response["properties"])["level"]);
        assert_eq!(level["type"], "string");
        assert_eq!(
            level["enum"],
            json!([
                "LEVEL_UNSPECIFIED",
                "LEVEL_LOW",
                "LEVEL_MEDIUM",
                "LEVEL_HIGH",
                "LEVEL_CRITICAL"
            ])
        );
        assert_eq!(
            level["description"],
            "Priority level derived from the score."
        );
        let error = deref(
            &doc,
            &score["responses"]["default"]["content"]["application/json"]["schema"],
        );
        assert_eq!(error["properties"]["code"]["type"], "integer");
        assert_eq!(error["properties"]["message"]["type"], "string");
        assert_eq!(error["properties"]["details"]["type"], "array");
        assert_eq!(
            error["properties"]["details"]["items"]["properties"]["@type"]["type"],
            "string"
        );

        let stats = &doc["paths"]["/v1/probe/stats"]["get"];
        assert_eq!(stats["operationId"], "ProbeService_GetStats");
        assert_eq!(stats["tags"], json!(["protomesh.probe.v1.ProbeService"]));
        assert!(stats.get("requestBody").is_none());
        assert!(stats.get("parameters").is_none());
        let schema = &stats["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(
            schema["$ref"],
            "#/components/schemas/protomesh.probe.v1.GetStatsResponse"
        );
        let stats_schema = deref(&doc, schema);
        let calls = &plain(&stats_schema["properties"])["calls"];
        assert_eq!(calls["type"], "object");
        assert_eq!(
            calls["additionalProperties"],
            json!({ "type": "string", "format": "uint64" })
        );
        assert!(calls["description"]
            .as_str()
            .unwrap()
            .starts_with("Calls received per method name"));
        assert_eq!(
            stats_schema["properties"]["lastGrpcTimeoutUs"]["format"],
            "int64"
        );
        assert_eq!(
            stats_schema["properties"]["lastGrpcTimeoutUs"]["type"],
            "string"
        );

        let echo = &doc["paths"]["/v1/probe:echo"]["post"];
        let echo_request = deref(
            &doc,
            &echo["requestBody"]["content"]["application/json"]["schema"],
        );
        assert_eq!(echo_request["properties"]["delayMs"]["type"], "integer");
        assert_eq!(echo_request["properties"]["delayMs"]["minimum"], 0);
        assert_eq!(echo_request["properties"]["failCode"]["format"], "int32");

        let tags: Vec<&str> = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            tags,
            [
                "protomesh.priority.v1.PriorityService",
                "protomesh.probe.v1.ProbeService"
            ]
        );
        assert!(doc["tags"][1]["description"]
            .as_str()
            .unwrap()
            .starts_with("Answers on demand."));
        assert!(doc.get("x-custom-methods").is_none());
        assert!(doc.get("x-path-collisions").is_none());
        assert_refs_resolve(&doc);
    }

    /// The document of the tasks, timetrack and users routes.
    fn rules_document(options: &JsonOptions) -> Value {
        let pool = mesh_pool();
        let table = RouteTable::build([
            ("tasks", methods(&pool, "protomesh.tasks.v1.TasksService")),
            ("users", methods(&pool, "protomesh.users.v1.UsersService")),
            (
                "priority",
                methods(&pool, "protomesh.priority.v1.PriorityService"),
            ),
        ]);
        document(&table, options, "protomesh", "0.1.0")
    }

    #[test]
    fn the_declared_rules_are_in_the_document() {
        let doc = rules_document(&JsonOptions::default());
        assert_refs_resolve(&doc);
        let schemas = &doc["components"]["schemas"];

        let score = &schemas["protomesh.priority.v1.ScoreRequest"];
        assert_eq!(score["required"], json!(["urgency", "impact"]));
        assert_eq!(score["additionalProperties"], false);
        assert_eq!(
            score["properties"]["urgency"],
            json!({ "type": "integer", "format": "int32", "minimum": 1, "maximum": 10 })
        );
        let batch = &schemas["protomesh.priority.v1.PrioritizeRequest"];
        assert_eq!(batch["properties"]["tasks"]["maxItems"], 10000);

        let task = &schemas["protomesh.tasks.v1.Task"];
        assert_eq!(task["required"], json!(["title", "urgency", "impact"]));
        let title = &task["properties"]["title"];
        assert_eq!(
            (&title["minLength"], &title["maxLength"]),
            (&json!(1), &json!(200))
        );
        assert!(title["pattern"].as_str().unwrap().starts_with("^[^\\x00]*"));
        assert_eq!(task["properties"]["id"]["readOnly"], true);
        assert_eq!(task["properties"]["createdAt"]["readOnly"], true);
        // Unset on create means open, so the zero joins the allowed names.
        assert_eq!(
            task["properties"]["status"]["enum"],
            json!([
                "TASK_STATUS_UNSPECIFIED",
                "TASK_STATUS_OPEN",
                "TASK_STATUS_IN_PROGRESS",
                "TASK_STATUS_DONE"
            ]),
        );

        // The update: its path parameter renamed, the body every field optional.
        let update = &doc["paths"]["/v1/tasks/{id}"]["patch"];
        assert_eq!(update["parameters"][0]["name"], "id");
        assert!(update["parameters"][0]["schema"]["pattern"]
            .as_str()
            .unwrap()
            .ends_with(rules::UUID_PATTERN_FOR_TESTS));
        assert_eq!(update["requestBody"]["required"], true);
        let body = deref(
            &doc,
            &update["requestBody"]["content"]["application/json"]["schema"],
        );
        assert!(body.get("required").is_none());
        assert_eq!(body["properties"]["urgency"]["minimum"], 1);
        assert_eq!(
            body["properties"]["status"]["enum"],
            json!([
                "TASK_STATUS_OPEN",
                "TASK_STATUS_IN_PROGRESS",
                "TASK_STATUS_DONE"
            ])
        );

        // Query parameters: an optional UUID may be empty; bounds; enums.
        let list = &doc["paths"]["/v1/tasks"]["get"];
        let parameter = |name: &str| {
            list["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name}"))
                .clone()
        };
        assert!(parameter("projectId")["schema"]["pattern"]
            .as_str()
            .unwrap()
            .starts_with("^$|"));
        assert_eq!(parameter("pageSize")["schema"]["maximum"], 1000);
        assert!(parameter("pageSize").get("required").is_none());

        // A body "*" with a path-bound field leaves it out of the body.
        let complete = &doc["paths"]["/v1/tasks/{id}:complete"]["post"];
        let body = &complete["requestBody"]["content"]["application/json"]["schema"];
        assert!(body["properties"].get("id").is_none(), "{body}");
        assert_eq!(complete["requestBody"]["required"], false);

        let register = &schemas["protomesh.users.v1.RegisterRequest"];
        assert_eq!(register["properties"]["email"]["format"], "email");
        assert_eq!(register["properties"]["password"]["minLength"], 12);
        assert_eq!(
            register["required"],
            json!(["email", "displayName", "password"])
        );

        // Unknown fields allowed: no additionalProperties: false.
        let lenient = rules_document(&JsonOptions {
            allow_unknown_fields: true,
            ..JsonOptions::default()
        });
        assert!(lenient["components"]["schemas"]["protomesh.tasks.v1.Task"]
            .get("additionalProperties")
            .is_none());
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = mesh_document(&JsonOptions::default());
        let mut ids = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                ids.push(operation["operationId"].as_str().unwrap().to_owned());
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
        assert_eq!(count, 7, "{ids:?}");
    }

    #[test]
    fn the_document_is_deterministic_json() {
        let options = JsonOptions::default();
        let first = serde_json::to_string_pretty(&mesh_document(&options)).unwrap();
        // A table built anew, from a pool decoded anew.
        let second = serde_json::to_string_pretty(&mesh_document(&options)).unwrap();
        assert_eq!(first, second);
        let parsed: Value = serde_json::from_str(&first).unwrap();
        assert_eq!(parsed, mesh_document(&options));
    }

    #[test]
    fn proto_names_when_asked() {
        let doc = mesh_document(&JsonOptions {
            use_proto_names: true,
            ..JsonOptions::default()
        });
        let echo = &doc["components"]["schemas"]["protomesh.probe.v1.EchoRequest"];
        assert!(echo["properties"]["delay_ms"].is_object());
        assert!(echo["properties"].get("delayMs").is_none());
    }

    #[test]
    fn without_source_info_the_summary_is_the_method_name() {
        // Each file re-encoded without its source info; going through a dynamic message keeps
        // the extension options (google.api.http) that the prost types would drop.
        let pool = mesh_pool();
        let file_type = pool
            .get_message_by_name("google.protobuf.FileDescriptorProto")
            .unwrap();
        let mut stripped = DescriptorPool::new();
        for file in pool.files() {
            let mut dynamic =
                DynamicMessage::decode(file_type.clone(), file.encode_to_vec().as_slice()).unwrap();
            dynamic.clear_field_by_name("source_code_info");
            stripped
                .decode_file_descriptor_proto(dynamic.encode_to_vec().as_slice())
                .unwrap();
        }
        let table = RouteTable::build([(
            "priority",
            methods(&stripped, "protomesh.priority.v1.PriorityService"),
        )]);
        assert_eq!(table.routes().len(), 2);
        let doc = document(&table, &JsonOptions::default(), "t", "1");
        let score = &doc["paths"]["/v1/priority:score"]["post"];
        assert_eq!(
            score["summary"],
            "protomesh.priority.v1.PriorityService.Score"
        );
        assert!(score.get("description").is_none());
        let request = &doc["components"]["schemas"]["protomesh.priority.v1.ScoreRequest"];
        assert!(request.get("description").is_none());
        assert_refs_resolve(&doc);
    }

    fn field(name: &str, number: i32, kind: &str) -> Value {
        let mut field = json!({
            "name": name,
            "number": number,
            "label": "LABEL_OPTIONAL",
            "jsonName": json_name(name),
        });
        if kind.starts_with('.') {
            field["typeName"] = json!(kind);
        } else {
            field["type"] = json!(kind);
        }
        field
    }

    fn typed(name: &str, number: i32, kind: &str, type_name: &str) -> Value {
        let mut field = field(name, number, kind);
        field["typeName"] = json!(type_name);
        field
    }

    fn repeated(mut field: Value) -> Value {
        field["label"] = json!("LABEL_REPEATED");
        field
    }

    fn json_name(name: &str) -> String {
        let mut out = String::new();
        let mut upper = false;
        for c in name.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                out.push(c.to_ascii_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    }

    /// A library API exercising what the mesh's own protos do not: path patterns, additional
    /// bindings, query parameters, a body field, response_body, streaming, a custom method,
    /// well-known types, maps and recursion. No source info.
    fn library_pool() -> DescriptorPool {
        let mut pool = mesh_pool();
        let global = DescriptorPool::global();
        for name in [
            "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/empty.proto",
        ] {
            if pool.get_file_by_name(name).is_none() {
                let file = global.get_file_by_name(name).unwrap();
                pool.add_file_descriptor_proto(file.file_descriptor_proto().clone())
                    .unwrap();
            }
        }
        let message = |kind: &str| format!(".test.library.v1.{kind}");
        let http = |rule: Value| json!({ "[google.api.http]": rule });
        let file = json!({
            "name": "test/library.proto",
            "package": "test.library.v1",
            "syntax": "proto3",
            "dependency": [
                "google/api/annotations.proto",
                "google/protobuf/timestamp.proto",
                "google/protobuf/wrappers.proto",
                "google/protobuf/field_mask.proto",
                "google/protobuf/struct.proto",
                "google/protobuf/empty.proto",
            ],
            "messageType": [
                {
                    "name": "Book",
                    "field": [
                        field("name", 1, "TYPE_STRING"),
                        field("display_name", 2, "TYPE_STRING"),
                        repeated(field("tags", 3, "TYPE_STRING")),
                        typed("published", 4, "TYPE_MESSAGE", ".google.protobuf.Timestamp"),
                        typed("rating", 5, "TYPE_MESSAGE", ".google.protobuf.DoubleValue"),
                        repeated(typed("attributes", 6, "TYPE_MESSAGE", &message("Book.AttributesEntry"))),
                        typed("sequel", 7, "TYPE_MESSAGE", &message("Book")),
                        typed("state", 8, "TYPE_ENUM", &message("State")),
                        field("size_bytes", 9, "TYPE_INT64"),
                        field("cover", 10, "TYPE_BYTES"),
                        typed("metadata", 11, "TYPE_MESSAGE", ".google.protobuf.Struct"),
                    ],
                    "nestedType": [{
                        "name": "AttributesEntry",
                        "field": [field("key", 1, "TYPE_STRING"), field("value", 2, "TYPE_INT32")],
                        "options": { "mapEntry": true },
                    }],
                },
                {
                    "name": "Filter",
                    "field": [
                        typed("state", 1, "TYPE_ENUM", &message("State")),
                        field("author", 2, "TYPE_STRING"),
                        typed("since", 3, "TYPE_MESSAGE", ".google.protobuf.Timestamp"),
                        typed("inner", 4, "TYPE_MESSAGE", &message("Filter")),
                        repeated(typed("books", 5, "TYPE_MESSAGE", &message("Book"))),
                        typed("range", 6, "TYPE_MESSAGE", &message("Range")),
                        repeated(typed("states", 7, "TYPE_ENUM", &message("State"))),
                    ],
                },
                {
                    "name": "Range",
                    "field": [
                        field("min", 1, "TYPE_INT32"),
                        typed("window", 2, "TYPE_MESSAGE", &message("Window")),
                    ],
                },
                { "name": "Window", "field": [field("start", 1, "TYPE_INT32")] },
                {
                    "name": "GetBookRequest",
                    "field": [
                        field("name", 1, "TYPE_STRING"),
                        typed("view", 2, "TYPE_MESSAGE", &message("Filter")),
                        typed("read_mask", 3, "TYPE_MESSAGE", ".google.protobuf.FieldMask"),
                        field("page_size", 4, "TYPE_INT32"),
                    ],
                },
                {
                    "name": "UpdateBookRequest",
                    "field": [
                        typed("book", 1, "TYPE_MESSAGE", &message("Book")),
                        typed("update_mask", 2, "TYPE_MESSAGE", ".google.protobuf.FieldMask"),
                    ],
                },
                {
                    "name": "ListBooksResponse",
                    "field": [
                        repeated(typed("books", 1, "TYPE_MESSAGE", &message("Book"))),
                        field("next_page_token", 2, "TYPE_STRING"),
                    ],
                },
            ],
            "enumType": [{
                "name": "State",
                "value": [
                    { "name": "STATE_UNSPECIFIED", "number": 0 },
                    { "name": "DRAFT", "number": 1 },
                ],
            }],
            "service": [{
                "name": "LibraryService",
                "method": [
                    {
                        "name": "GetBook",
                        "inputType": message("GetBookRequest"),
                        "outputType": message("Book"),
                        "options": http(json!({
                            "get": "/v1/{name=shelves/*/books/*}",
                            "additionalBindings": [
                                { "get": "/v1/{name=authors/*/books/*}" },
                                { "get": "/v2/{name=shelves/*/books/*}" },
                            ],
                        })),
                    },
                    {
                        "name": "UpdateBook",
                        "inputType": message("UpdateBookRequest"),
                        "outputType": message("Book"),
                        "options": http(json!({
                            "patch": "/v1/{book.name=shelves/*/books/*}",
                            "body": "book",
                        })),
                    },
                    {
                        "name": "ListBooks",
                        "inputType": message("Filter"),
                        "outputType": message("ListBooksResponse"),
                        "options": http(json!({ "get": "/v1/books", "responseBody": "books" })),
                    },
                    {
                        "name": "WatchBooks",
                        "inputType": message("Filter"),
                        "outputType": message("Book"),
                        "serverStreaming": true,
                        "options": http(json!({ "get": "/v1/books:watch" })),
                    },
                    {
                        "name": "PurgeBook",
                        "inputType": message("GetBookRequest"),
                        "outputType": ".google.protobuf.Empty",
                        "options": http(json!({
                            "custom": { "kind": "PURGE", "path": "/v1/{name=shelves/*/books/*}" },
                        })),
                    },
                    {
                        "name": "Browse",
                        "inputType": message("GetBookRequest"),
                        "outputType": ".google.protobuf.Empty",
                        "options": http(json!({ "get": "/v1/browse/*/{page_size}/**" })),
                    },
                ],
            }],
        });
        let file_type = pool
            .get_message_by_name("google.protobuf.FileDescriptorProto")
            .unwrap();
        let file = DynamicMessage::deserialize(file_type, file).unwrap();
        pool.decode_file_descriptor_proto(file.encode_to_vec().as_slice())
            .unwrap();
        pool
    }

    fn library_document(options: &JsonOptions) -> Value {
        let pool = library_pool();
        let table =
            RouteTable::build([("library", methods(&pool, "test.library.v1.LibraryService"))]);
        assert!(table.errors().is_empty(), "{:?}", table.errors());
        assert!(table.conflicts().is_empty(), "{:?}", table.conflicts());
        document(&table, options, "library", "1")
    }

    fn parameter_names(operation: &Value) -> Vec<&str> {
        operation["parameters"]
            .as_array()
            .map(|parameters| {
                parameters
                    .iter()
                    .map(|p| p["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn path_patterns_query_parameters_and_bindings() {
        let doc = library_document(&JsonOptions::default());
        assert_refs_resolve(&doc);

        let get = &doc["paths"]["/v1/{name}"]["get"];
        assert_eq!(get["operationId"], "LibraryService_GetBook");
        assert_eq!(get["summary"], "test.library.v1.LibraryService.GetBook");
        let name = &get["parameters"][0];
        assert_eq!(name["in"], "path");
        assert_eq!(name["required"], true);
        assert_eq!(name["schema"]["type"], "string");
        assert_eq!(name["schema"]["pattern"], "^shelves/[^/]+/books/[^/]+$");
        let description = name["description"].as_str().unwrap();
        assert!(description.contains("`shelves/*/books/*`"), "{description}");
        assert!(description.contains("%2F"), "{description}");
        // Every unbound field a query parameter can set; not the bound `name`, not repeated
        // messages, not through the recursive `inner`, and not deeper than three levels.
        assert_eq!(
            parameter_names(get),
            [
                "name",
                "view.state",
                "view.author",
                "view.since",
                "view.range.min",
                "view.states",
                "readMask",
                "pageSize",
            ]
        );
        let parameters = get["parameters"].as_array().unwrap();
        assert!(parameters[1..].iter().all(|p| p["in"] == "query"));
        assert_eq!(
            parameters[1]["schema"]["$ref"],
            "#/components/schemas/test.library.v1.State"
        );
        assert_eq!(parameters[3]["schema"]["format"], "date-time");
        assert_eq!(parameters[5]["schema"]["type"], "array");
        assert_eq!(parameters[5]["explode"], true);
        assert_eq!(parameters[6]["schema"]["type"], "string");
        assert_eq!(parameters[7]["schema"]["format"], "int32");

        // The first additional binding renders as the same path and method: listed, not lost.
        let collisions = doc["x-path-collisions"].as_array().unwrap();
        assert_eq!(collisions.len(), 1);
        assert_eq!(collisions[0]["operationId"], "LibraryService_GetBook2");
        assert_eq!(collisions[0]["collidesWith"], "LibraryService_GetBook");
        assert_eq!(collisions[0]["path"], "/v1/{name=authors/*/books/*}");
        assert_eq!(
            doc["paths"]["/v2/{name}"]["get"]["operationId"],
            "LibraryService_GetBook3"
        );

        // body: "book", the rest from the path and the query; a PATCH whose update mask the
        // gateway fills from the body's keys has no `updateMask` parameter, and its body is the
        // update schema (every field optional, at least one).
        let update = &doc["paths"]["/v1/{name}"]["patch"];
        assert_eq!(parameter_names(update), ["name"]);
        assert_eq!(
            update["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/test.library.v1.Book-update"
        );
        let book_update = &doc["components"]["schemas"]["test.library.v1.Book-update"];
        assert_eq!(book_update["minProperties"], 1);
        assert!(book_update.get("required").is_none(), "{book_update}");

        // response_body: "books".
        let list = &doc["paths"]["/v1/books"]["get"];
        assert_eq!(
            list["responses"]["200"]["content"]["application/json"]["schema"],
            json!({ "type": "array", "items": { "$ref": "#/components/schemas/test.library.v1.Book" } })
        );

        // A server stream.
        let watch = &doc["paths"]["/v1/books:watch"]["get"];
        let content = &watch["responses"]["200"]["content"];
        for media in ["application/x-ndjson", "text/event-stream"] {
            assert_eq!(
                content[media]["schema"]["$ref"],
                "#/components/schemas/test.library.v1.Book"
            );
        }
        assert!(content.get("application/json").is_none());
        assert!(watch["responses"]["200"]["description"]
            .as_str()
            .unwrap()
            .contains("newline-delimited"));

        // A custom method has no slot.
        let custom = doc["x-custom-methods"].as_array().unwrap();
        assert_eq!(custom.len(), 1);
        assert_eq!(custom[0]["method"], "PURGE");
        assert_eq!(custom[0]["operationId"], "LibraryService_PurgeBook");
        assert_eq!(
            custom[0]["x-grpc-method"],
            "/test.library.v1.LibraryService/PurgeBook"
        );

        // Bare wildcards become parameters bound to no field; Empty is an inline object.
        let browse = &doc["paths"]["/v1/browse/{_segment1}/{pageSize}/{_segment2}"];
        assert!(
            browse.is_null(),
            "path parameters are named by proto field paths"
        );
        let browse = &doc["paths"]["/v1/browse/{_segment1}/{page_size}/{_segment2}"]["get"];
        assert_eq!(
            &parameter_names(browse)[..4],
            ["_segment1", "page_size", "_segment2", "name"]
        );
        assert!(!parameter_names(browse).contains(&"pageSize"));
        assert_eq!(browse["parameters"][1]["schema"]["format"], "int32");
        assert_eq!(
            browse["responses"]["200"]["content"]["application/json"]["schema"],
            json!({ "type": "object" })
        );
    }

    #[test]
    fn schemas_follow_the_json_mapping() {
        let doc = library_document(&JsonOptions::default());
        let book = &plain(&doc["components"]["schemas"]["test.library.v1.Book"]["properties"]);
        assert_eq!(book["displayName"], json!({ "type": "string" }));
        assert_eq!(
            book["tags"],
            json!({ "type": "array", "items": { "type": "string" } })
        );
        assert_eq!(book["published"]["type"], "string");
        assert_eq!(book["published"]["format"], "date-time");
        // A wrapper: its schema is nullable by itself.
        assert_eq!(
            book["rating"],
            json!({ "type": "number", "format": "double" })
        );
        assert_eq!(
            book["attributes"],
            json!({ "type": "object", "additionalProperties": { "type": "integer", "format": "int32" } })
        );
        assert_eq!(
            book["sequel"],
            json!({ "$ref": "#/components/schemas/test.library.v1.Book" })
        );
        assert_eq!(
            book["state"],
            json!({ "$ref": "#/components/schemas/test.library.v1.State" })
        );
        assert_eq!(
            book["sizeBytes"],
            json!({ "type": "string", "format": "int64" })
        );
        assert_eq!(book["cover"], json!({ "type": "string", "format": "byte" }));
        assert_eq!(
            book["metadata"],
            json!({ "type": "object", "additionalProperties": true })
        );
        assert_eq!(
            doc["components"]["schemas"]["test.library.v1.State"],
            json!({ "type": "string", "enum": ["STATE_UNSPECIFIED", "DRAFT"] })
        );
        // Only the types the routes reach.
        assert!(doc["components"]["schemas"]
            .get("test.library.v1.Window")
            .is_none());

        let doc = library_document(&JsonOptions {
            use_proto_names: true,
            ..JsonOptions::default()
        });
        let book = &plain(&doc["components"]["schemas"]["test.library.v1.Book"]["properties"]);
        assert!(book["display_name"].is_object());
        let get = &doc["paths"]["/v1/{name}"]["get"];
        assert!(parameter_names(get).contains(&"read_mask"));
        assert_refs_resolve(&doc);
    }

    #[test]
    fn rendered_paths() {
        let render = |text: &str| render_path(&PathTemplate::parse(text).unwrap());
        let rendered = render("/v1/{name=shelves/*/books/*}:publish");
        assert_eq!(rendered.path, "/v1/{name}:publish");
        assert_eq!(rendered.parameters.len(), 1);
        assert_eq!(
            rendered.parameters[0].pattern,
            Some(vec![
                "shelves".to_owned(),
                "*".to_owned(),
                "books".to_owned(),
                "*".to_owned()
            ])
        );
        assert!(rendered.parameters[0].multi_segment());

        // A dotted variable is named by its last field, unless another variable ends so.
        let rendered = render("/v1/{task.id}/tags/{tag=*}");
        assert_eq!(rendered.path, "/v1/{id}/tags/{tag}");
        assert_eq!(render("/v1/{task.id}/{id}").path, "/v1/{task_id}/{id}");
        assert_eq!(
            render("/v1/{task.id}/{user.id}").path,
            "/v1/{task_id}/{user_id}"
        );
        assert_eq!(render("/v1/{task.id}/{task_id}").path, "/v1/{id}/{task_id}");
        assert_eq!(
            render("/v1/{task.id}/{task_id}/{id}").path,
            "/v1/{task_id_}/{task_id}/{id}"
        );
        assert_eq!(
            rendered.parameters[0].field_path,
            Some(vec!["task".to_owned(), "id".to_owned()])
        );
        assert_eq!(rendered.parameters[1].pattern, None);
        assert!(!rendered.parameters[1].multi_segment());

        let rendered = render("/v1/{path=**}");
        assert_eq!(rendered.path, "/v1/{path}");
        assert!(rendered.parameters[0].multi_segment());

        assert_eq!(render("/v1/priority:score").path, "/v1/priority:score");
        assert_eq!(render("/v1/*/x:do").path, "/v1/{_segment1}/x:do");
        let rendered = render("/v1/{_segment1}/*");
        assert_eq!(rendered.path, "/v1/{_segment1}/{_segment2}");
    }

    #[test]
    fn variable_patterns_as_regexes() {
        let regex = |pattern: &str| {
            segments_regex(&pattern.split('/').map(str::to_owned).collect::<Vec<_>>())
        };
        assert_eq!(regex("shelves/*").as_deref(), Some("^shelves/[^/]+$"));
        assert_eq!(regex("a.b/**").as_deref(), Some("^a\\.b(/[^/]+)*$"));
        assert_eq!(regex("**").as_deref(), Some("^([^/]+(/[^/]+)*)?$"));
        assert_eq!(regex("a%2Fb/*"), None);
    }
}
