//! What transcoding is told: the route's [`BodyRule`], the [`JsonOptions`] and the parts of the
//! HTTP request ([`RequestParts`]).

/// Where the request message is in the HTTP body: the `body` of a `google.api.http` rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum BodyRule {
    /// No `body`: the request has no body; every field the path does not bind is a query
    /// parameter.
    #[default]
    None,
    /// `body: "*"`: the body is the whole request message (fields bound by the path excepted).
    Whole,
    /// `body: "<field>"`: the body is the value of this top-level field (its proto name).
    Field(String),
}

/// How JSON is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsonOptions {
    /// Write fields by their proto names (`display_name`) instead of their lowerCamelCase JSON
    /// names (`displayName`). Reading always accepts both.
    pub use_proto_names: bool,
    /// Write fields that have their default value (`0`, `""`, `[]`, ...) instead of leaving them
    /// out. Unset message fields are still left out.
    pub emit_defaults: bool,
    /// Skip unknown fields (in the body and the query string) and unknown enum value names instead
    /// of rejecting them.
    pub allow_unknown_fields: bool,
}

/// The parts of an HTTP request that make a request message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestParts<'a> {
    /// The values the path template bound: each a field path (proto names, from the top of the
    /// request message) and its percent-decoded value.
    pub path_bindings: &'a [(Vec<String>, String)],
    /// The raw (percent-encoded) query string, without the `?` (a leading `?` is tolerated).
    pub query: Option<&'a str>,
    /// The request body.
    pub body: &'a [u8],
    /// The route's body rule.
    pub body_rule: &'a BodyRule,
    /// Fill an empty `update_mask` from the keys of the body (set for PATCH requests).
    pub fill_update_mask: bool,
}
