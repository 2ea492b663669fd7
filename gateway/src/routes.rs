//! The route table: every `google.api.http` rule (and its `additional_bindings`) of every method of
//! every service the gateway knows, as HTTP method + path template → gRPC method. Built from the
//! descriptors each service serves over reflection; conflicting routes (same method, same template
//! shape) are reported when the table is built, and the first one (by service name, then method)
//! keeps the route. Lookups try the most specific matching template first; a path whose verb some
//! template has belongs to the routes with that verb alone.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::Method;
use prost_reflect::{DynamicMessage, MethodDescriptor, Value};

use crate::template::{Binding, PathTemplate};
use crate::transcode::{BodyRule, TranscodePlan};

/// Full name of the `google.api.http` method option.
const HTTP_OPTION: &str = "google.api.http";

/// One HTTP route to a gRPC method.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// HTTP method (a `custom` rule's kind becomes an extension method).
    pub http_method: Method,
    /// Path template.
    pub template: PathTemplate,
    /// Where the request message comes from in the body.
    pub body: BodyRule,
    /// The response field sent as the body instead of the whole response, if set.
    pub response_body: Option<String>,
    /// The gRPC method.
    pub method: MethodDescriptor,
    /// The Consul service that serves it.
    pub service: String,
    /// The gRPC path of the method, `/package.Service/Method`.
    pub grpc_path: http::uri::PathAndQuery,
    /// How requests and responses are transcoded without descriptors, where they can be.
    pub plan: Arc<TranscodePlan>,
}

impl Route {
    /// The gRPC path of the target method, `/package.Service/Method`.
    pub(crate) fn grpc_path(&self) -> &str {
        self.grpc_path.as_str()
    }

    /// Whether its method streams (server, client or both ways): a WebSocket may open on it.
    pub(crate) fn is_streaming(&self) -> bool {
        self.method.is_client_streaming() || self.method.is_server_streaming()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} → {}{} ({})",
            self.http_method,
            self.template,
            self.method.parent_service().full_name(),
            format_args!(".{}", self.method.name()),
            self.service
        )
    }
}

/// A route left out because another one already takes the same requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteConflict {
    /// The route that was kept, as text.
    pub kept: String,
    /// The route that was left out, as text.
    pub dropped: String,
}

impl fmt::Display for RouteConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {} conflicts with {} (kept)",
            self.dropped, self.kept
        )
    }
}

/// A rule that could not become a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleError {
    /// `package.Service.Method`.
    pub method: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.method, self.reason)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// The route and the values its template bound.
    Found(&'a Arc<Route>, Vec<Binding>),
    /// Some route matches the path, but none for this method; these methods have one.
    MethodNotAllowed(Vec<Method>),
    /// No route matches the path.
    NotFound,
}

/// All routes, ready for lookups.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    /// Routes, most specific template first (shared: a request holds its route cheaply).
    routes: Vec<Arc<Route>>,
    conflicts: Vec<RouteConflict>,
    errors: Vec<RuleError>,
}

impl RouteTable {
    /// The routes of `services`: each Consul service name with the gRPC methods it serves.
    pub(crate) fn build<'a>(
        services: impl IntoIterator<Item = (&'a str, Vec<MethodDescriptor>)>,
    ) -> Self {
        let mut sorted: BTreeMap<&str, Vec<MethodDescriptor>> = BTreeMap::new();
        for (service, methods) in services {
            sorted.entry(service).or_default().extend(methods);
        }
        let mut table = Self::default();
        for (service, mut methods) in sorted {
            methods.sort_by(|a, b| a.full_name().cmp(b.full_name()));
            for method in methods {
                for rule in http_rules(&method) {
                    match route_from_rule(service, &method, &rule) {
                        Ok(route) => table.insert(route),
                        Err(reason) => table.errors.push(RuleError {
                            method: method.full_name().to_owned(),
                            reason,
                        }),
                    }
                }
            }
        }
        table
            .routes
            .sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));
        table
    }

    fn insert(&mut self, route: Route) {
        if let Some(existing) = self.routes.iter().find(|r| {
            r.http_method == route.http_method && r.template.conflicts_with(&route.template)
        }) {
            self.conflicts.push(RouteConflict {
                kept: existing.to_string(),
                dropped: route.to_string(),
            });
            return;
        }
        self.routes.push(Arc::new(route));
    }

    /// The route for `method` and `path` (the raw, percent-encoded request path). A path whose
    /// verb (an unescaped `:` in its last segment) a route's template has calls that custom
    /// method: only the routes with that verb are its routes (`GET /v1/tasks/1:complete` is 405
    /// when only `POST …:complete` has the verb, not `GetTask` of the id `1:complete`; a value's
    /// own `:` is sent as `%3A`).
    pub(crate) fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let mut allowed = Vec::new();
        let mut verb_matched = false;
        for route in &self.routes {
            // Most specific first: every template with a verb comes before those without.
            if verb_matched && route.template.verb().is_none() {
                break;
            }
            if let Some(bindings) = route.template.matches(path) {
                verb_matched |= route.template.verb().is_some();
                if route.http_method == *method {
                    return Lookup::Found(route, bindings);
                }
                if !allowed.contains(&route.http_method) {
                    allowed.push(route.http_method.clone());
                }
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }

    /// The streaming route (server, client or bidirectional) whose template matches `path`,
    /// whatever its HTTP method: a WebSocket opens on it with `GET`.
    pub(crate) fn lookup_streaming(&self, path: &str) -> Option<(&Arc<Route>, Vec<Binding>)> {
        self.routes
            .iter()
            .filter(|r| r.is_streaming())
            .find_map(|r| r.template.matches(path).map(|bindings| (r, bindings)))
    }

    /// Every route, most specific first.
    pub(crate) fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Routes left out because they conflict with kept ones.
    pub(crate) fn conflicts(&self) -> &[RouteConflict] {
        &self.conflicts
    }

    /// Rules that could not become routes.
    pub(crate) fn errors(&self) -> &[RuleError] {
        &self.errors
    }
}

/// The `google.api.http` rule of `method` and its additional bindings (none when unannotated).
fn http_rules(method: &MethodDescriptor) -> Vec<DynamicMessage> {
    let pool = method.parent_pool();
    let Some(extension) = pool.get_extension_by_name(HTTP_OPTION) else {
        return Vec::new();
    };
    let options = method.options();
    if !options.has_extension(&extension) {
        return Vec::new();
    }
    let Value::Message(rule) = options.get_extension(&extension).into_owned() else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    if let Some(Value::List(more)) = rule
        .get_field_by_name("additional_bindings")
        .map(|v| v.into_owned())
    {
        rules.extend(more.into_iter().filter_map(|v| match v {
            Value::Message(m) => Some(m),
            _ => None,
        }));
    }
    rules.insert(0, rule);
    rules
}

fn string_field(message: &DynamicMessage, name: &str) -> Option<String> {
    if !message.has_field_by_name(name) {
        return None;
    }
    match message.get_field_by_name(name)?.into_owned() {
        Value::String(text) => Some(text),
        _ => None,
    }
}

/// One rule as a route, or why it cannot be one.
fn route_from_rule(
    service: &str,
    method: &MethodDescriptor,
    rule: &DynamicMessage,
) -> Result<Route, String> {
    let verbs = [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ];
    let (http_method, path) = match verbs
        .into_iter()
        .find_map(|(field, verb)| string_field(rule, field).map(|path| (verb, path)))
    {
        Some(found) => found,
        None => {
            let custom = match rule.get_field_by_name("custom").map(|v| v.into_owned()) {
                Some(Value::Message(custom)) if rule.has_field_by_name("custom") => custom,
                _ => return Err("the http rule has no pattern".to_owned()),
            };
            let kind = string_field(&custom, "kind").unwrap_or_default();
            let verb = Method::from_bytes(kind.as_bytes())
                .map_err(|_| format!("invalid custom method {kind:?}"))?;
            let path = string_field(&custom, "path").unwrap_or_default();
            (verb, path)
        }
    };
    let template = PathTemplate::parse(&path).map_err(|err| format!("path {path:?}: {err}"))?;
    let input = method.input();
    let body = match string_field(rule, "body").as_deref() {
        None | Some("") => BodyRule::None,
        Some("*") => BodyRule::Whole,
        Some(field) => {
            if input.get_field_by_name(field).is_none() {
                return Err(format!(
                    "body field {field:?} is not a field of {}",
                    input.full_name()
                ));
            }
            BodyRule::Field(field.to_owned())
        }
    };
    for variable in template.variables() {
        let mut message = input.clone();
        for (i, part) in variable.iter().enumerate() {
            let field = message.get_field_by_name(part).ok_or_else(|| {
                format!(
                    "path variable {} names no field of {}",
                    variable.join("."),
                    input.full_name()
                )
            })?;
            if i + 1 < variable.len() {
                match field.kind() {
                    prost_reflect::Kind::Message(inner) => message = inner,
                    _ => {
                        return Err(format!(
                            "path variable {}: {part} is not a message",
                            variable.join(".")
                        ))
                    }
                }
            }
        }
    }
    let response_body = string_field(rule, "response_body").filter(|f| !f.is_empty());
    if let Some(field) = &response_body {
        if method.output().get_field_by_name(field).is_none() {
            return Err(format!(
                "response_body {field:?} is not a field of {}",
                method.output().full_name()
            ));
        }
    }
    let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name())
        .parse()
        .map_err(|err| format!("the method's gRPC path is not a valid URI path: {err}"))?;
    let plan = Arc::new(TranscodePlan::new(
        &method.input(),
        &method.output(),
        &body,
        response_body.as_deref(),
    ));
    Ok(Route {
        http_method,
        template,
        body,
        response_body,
        method: method.clone(),
        service: service.to_owned(),
        grpc_path,
        plan,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn methods(service: &str) -> Vec<MethodDescriptor> {
        let pool = crate::test_support::pool();
        pool.get_service_by_name(service)
            .unwrap()
            .methods()
            .collect()
    }

    #[test]
    fn routes_come_from_the_http_options() {
        let table = RouteTable::build([
            ("priority", methods("protomesh.priority.v1.PriorityService")),
            ("probe", methods("protomesh.probe.v1.ProbeService")),
        ]);
        assert!(table.conflicts().is_empty(), "{:?}", table.conflicts());
        assert!(table.errors().is_empty(), "{:?}", table.errors());
        let Lookup::Found(route, bindings) = table.lookup(&Method::POST, "/v1/priority:score")
        else {
            panic!("no route for POST /v1/priority:score");
        };
        assert_eq!(
            route.grpc_path(),
            "/protomesh.priority.v1.PriorityService/Score"
        );
        assert_eq!(route.service, "priority");
        assert_eq!(route.body, BodyRule::Whole);
        assert!(bindings.is_empty());
        assert!(matches!(
            table.lookup(&Method::GET, "/v1/probe/stats"),
            Lookup::Found(..)
        ));
    }

    #[test]
    fn a_known_path_with_the_wrong_method_lists_the_allowed_ones() {
        let table =
            RouteTable::build([("priority", methods("protomesh.priority.v1.PriorityService"))]);
        match table.lookup(&Method::GET, "/v1/priority:score") {
            Lookup::MethodNotAllowed(allowed) => assert_eq!(allowed, vec![Method::POST]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            table.lookup(&Method::GET, "/v1/nothing"),
            Lookup::NotFound
        ));
    }

    #[test]
    fn a_path_with_a_routed_verb_belongs_to_that_verb_alone() {
        let table = RouteTable::build([("tasks", methods("protomesh.tasks.v1.TasksService"))]);
        let id = "0b6c3b2e-6e51-4a5e-9a47-0e0d2f0b8a11";
        match table.lookup(&Method::GET, &format!("/v1/tasks/{id}:complete")) {
            Lookup::MethodNotAllowed(allowed) => assert_eq!(allowed, vec![Method::POST]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            table.lookup(&Method::POST, &format!("/v1/tasks/{id}:complete")),
            Lookup::Found(route, _) if route.method.name() == "CompleteTask"
        ));
        // A `:` sent escaped is part of the value.
        assert!(matches!(
            table.lookup(&Method::GET, &format!("/v1/tasks/{id}%3Acomplete")),
            Lookup::Found(route, _) if route.method.name() == "GetTask"
        ));
        // A verb no route has: the `:` is ordinary text.
        assert!(matches!(
            table.lookup(&Method::GET, &format!("/v1/tasks/{id}:other")),
            Lookup::Found(route, _) if route.method.name() == "GetTask"
        ));
    }

    #[test]
    fn the_same_routes_twice_conflict_and_the_first_service_keeps_them() {
        let table = RouteTable::build([
            (
                "priority-a",
                methods("protomesh.priority.v1.PriorityService"),
            ),
            (
                "priority-b",
                methods("protomesh.priority.v1.PriorityService"),
            ),
        ]);
        assert_eq!(table.conflicts().len(), 2, "{:?}", table.conflicts());
        assert!(table.conflicts()[0].to_string().contains("priority-b"));
        let Lookup::Found(route, _) = table.lookup(&Method::POST, "/v1/priority:score") else {
            panic!("route kept");
        };
        assert_eq!(route.service, "priority-a");
    }
}
