//! The direct transcoder: JSON straight to protobuf wire bytes and wire bytes straight to JSON,
//! by a [`TranscodePlan`] built once per route (field tables by JSON and proto name, by number).
//! No `serde_json::Value` and no `DynamicMessage` is built on this path, and the bytes go to the
//! service through a pass-through codec ([`crate::codec::BytesCodec`]).
//!
//! It covers the requests and responses that make up the traffic: bodies of `"*"` or none, path
//! bindings, no query string (or one a `"*"` body makes ignored); responses without
//! `response_body`; messages of scalars, enums, nested messages and lists. For everything else —
//! and for every input that is wrong — it gives up, and the descriptor-driven transcoder
//! ([`super::request_message`], [`super::response_json`]) does the work and words the error.
//! Where both take an input they agree: the differential tests (`differential`, test builds only)
//! compare them on every table case and on generated inputs.

mod decode;
#[cfg(test)]
pub(super) mod differential;
mod encode;
mod plan;

use prost_reflect::MessageDescriptor;

use self::decode::{decode_to_json, JsonStyle};
use self::encode::{encode_json, encode_text_at, GiveUp};
use self::plan::{plannable, MessageIndex, MessagePlans};
use super::options::{BodyRule, JsonOptions};

/// How one route transcodes without descriptors, where it can.
#[derive(Debug)]
pub(crate) struct TranscodePlan {
    plans: MessagePlans,
    /// The request message, when the route's requests can be encoded directly.
    input: Option<MessageIndex>,
    /// The response message, when the route's responses can be written directly.
    output: Option<MessageIndex>,
    /// The route's body is `"*"` (the query string is then ignored).
    whole_body: bool,
}

impl TranscodePlan {
    /// The plan for a method taking `input` and answering `output`, behind a route with this
    /// body rule and `response_body`.
    pub(crate) fn new(
        input: &MessageDescriptor,
        output: &MessageDescriptor,
        body: &BodyRule,
        response_body: Option<&str>,
    ) -> Self {
        let mut plans = MessagePlans::default();
        let input = (plannable(input) && matches!(body, BodyRule::None | BodyRule::Whole))
            .then(|| plans.add(input));
        let output = (plannable(output) && response_body.is_none_or(str::is_empty))
            .then(|| plans.add(output));
        Self {
            plans,
            input,
            output,
            whole_body: *body == BodyRule::Whole,
        }
    }

    /// The request message's wire bytes, or `None` when this request is for the
    /// descriptor-driven transcoder.
    pub(crate) fn request<'a>(
        &self,
        bindings: impl IntoIterator<Item = (&'a [String], &'a str)>,
        query: Option<&str>,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        let input = self.input?;
        let query = query.map(|q| q.trim_start_matches('?')).unwrap_or("");
        if !query.is_empty() && !self.whole_body {
            return None;
        }
        let blank = body
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        let mut out = Vec::with_capacity(body.len() + 16);
        if !blank {
            if !self.whole_body {
                return None;
            }
            encode_json(&self.plans, input, body, &mut out).ok()?;
        }
        // After the body: for singular fields the last value read wins, so the path wins.
        for (path, value) in bindings {
            encode_text_at(&self.plans, input, path, value, &mut out).ok()?;
        }
        Some(out)
    }

    /// The response message `wire` as JSON, or `None` when it is for the descriptor-driven
    /// transcoder.
    pub(crate) fn response(&self, wire: &[u8], options: &JsonOptions) -> Option<Vec<u8>> {
        let output = self.output?;
        let style = JsonStyle {
            proto_names: options.use_proto_names,
            emit_defaults: options.emit_defaults,
        };
        let mut out = Vec::with_capacity(wire.len() * 2 + 16);
        match decode_to_json(&self.plans, output, wire, style, &mut out) {
            Ok(()) => Some(out),
            Err(GiveUp) => None,
        }
    }
}
