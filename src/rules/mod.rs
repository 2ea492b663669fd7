//! Request rules declared in the proto, next to the fields, in buf's
//! [protovalidate](https://protovalidate.com) vocabulary (`(buf.validate.field)`, schema vendored
//! as `proto/buf/validate/validate.proto`), read from the descriptors: [`FieldRules::declared`]
//! reads one field's rules (the gateway's OpenAPI document publishes them), [`MessageRules`]
//! compiles a request message's rules once and checks decoded messages against them (the
//! runtime enforces them before the handler runs, see `protomesh::server`).
//!
//! ```proto
//! import "buf/validate/validate.proto";
//!
//! message ScoreRequest {
//!   string title = 1 [(buf.validate.field).string.max_len = 200];
//!   int32 urgency = 2 [(buf.validate.field).int32 = {gte: 1, lte: 10}];
//! }
//! ```
//!
//! Supported (anything else declared is refused when the rules are read, naming the field and
//! the rule, so that no declared rule is silently ignored; CEL expressions are not supported):
//!
//! | rule | meaning |
//! |---|---|
//! | `required` | set: a non-zero scalar, a present message, a non-empty list |
//! | `ignore: IGNORE_IF_ZERO_VALUE` | the other rules do not apply to the zero value (`""`, `0`, empty list) |
//! | `ignore: IGNORE_ALWAYS` | no rule applies |
//! | `string`: `min_len`, `max_len` | length in characters (Unicode scalar values) |
//! | `string`: `pattern` | a regular expression ([`regex`] syntax, RE2-like) the value must contain a match of |
//! | `string`: `uuid`, `email` | a hyphenated UUID (any case); an address of sane shape ([`is_email`]) |
//! | `string`: `in`, `not_in` | allowed and refused values |
//! | integers (`int32` … `sfixed64`): `gt`, `gte`, `lt`, `lte`, `in`, `not_in` | bounds and sets |
//! | `float`, `double`: `gt`, `gte`, `lt`, `lte` | bounds |
//! | `enum`: `defined_only`, `in`, `not_in` | a value the enum defines; allowed and refused numbers |
//! | `repeated`: `min_items`, `max_items`, `unique`, `items` | list size, distinct scalar items, rules of each item |
//! | `example` (any type) | documentation only |
//!
//! A set message field is checked by its own message's rules, each item of a repeated message
//! field too. Field paths are dotted and indexed as in the request (`task.title`,
//! `tasks[2].urgency`).
//!
//! Update methods ([AIP-134](https://google.aip.dev/134)): when a request message has a
//! `google.protobuf.FieldMask update_mask` field and exactly one other singular message field (the
//! resource), the rules of the resource's fields apply only to the fields the mask names (by the
//! first segment of each path), so a partial update need not carry the fields it leaves alone.
//! An empty mask checks every field.

mod check;
mod declared;
mod value;
mod wire;

pub use check::{MessageRules, MethodRules};
pub use declared::*;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;
