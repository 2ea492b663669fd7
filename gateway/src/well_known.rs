//! The well-known types with a JSON form of their own (the proto3 JSON mapping), listed once for
//! the transcoder ([`crate::transcode`]) and the OpenAPI document ([`crate::openapi`]).

use prost_reflect::{Kind, MessageDescriptor};

/// A well-known type with a JSON form that is not a plain object of its fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WellKnown {
    /// `google.protobuf.Any`: an object with `@type`.
    Any,
    /// `google.protobuf.Timestamp`: an RFC 3339 string.
    Timestamp,
    /// `google.protobuf.Duration`: seconds as a string, suffixed by `s`.
    Duration,
    /// `google.protobuf.FieldMask`: paths separated by commas.
    FieldMask,
    /// `google.protobuf.Struct`: any object.
    Struct,
    /// `google.protobuf.ListValue`: any array.
    ListValue,
    /// `google.protobuf.Value`: any JSON value.
    Value,
    /// `google.protobuf.Empty`: an empty object.
    Empty,
    /// A `google.protobuf.*Value` wrapper: the wrapped value, or `null`.
    Wrapper(Kind),
}

impl WellKnown {
    /// The well-known type `message` is, if it is one.
    pub(crate) fn of(message: &MessageDescriptor) -> Option<Self> {
        Some(match message.full_name() {
            "google.protobuf.Any" => Self::Any,
            "google.protobuf.Timestamp" => Self::Timestamp,
            "google.protobuf.Duration" => Self::Duration,
            "google.protobuf.FieldMask" => Self::FieldMask,
            "google.protobuf.Struct" => Self::Struct,
            "google.protobuf.ListValue" => Self::ListValue,
            "google.protobuf.Value" => Self::Value,
            "google.protobuf.Empty" => Self::Empty,
            "google.protobuf.DoubleValue" => Self::Wrapper(Kind::Double),
            "google.protobuf.FloatValue" => Self::Wrapper(Kind::Float),
            "google.protobuf.Int64Value" => Self::Wrapper(Kind::Int64),
            "google.protobuf.UInt64Value" => Self::Wrapper(Kind::Uint64),
            "google.protobuf.Int32Value" => Self::Wrapper(Kind::Int32),
            "google.protobuf.UInt32Value" => Self::Wrapper(Kind::Uint32),
            "google.protobuf.BoolValue" => Self::Wrapper(Kind::Bool),
            "google.protobuf.StringValue" => Self::Wrapper(Kind::String),
            "google.protobuf.BytesValue" => Self::Wrapper(Kind::Bytes),
            _ => return None,
        })
    }
}

/// Whether `message` is a well-known type with a JSON form of its own.
pub(crate) fn is_well_known(message: &MessageDescriptor) -> bool {
    WellKnown::of(message).is_some()
}

/// Whether a message type has a scalar JSON form that a text value (a path binding or a query
/// parameter) can give.
pub(crate) fn has_text_form(message: &MessageDescriptor) -> bool {
    matches!(
        WellKnown::of(message),
        Some(
            WellKnown::Timestamp
                | WellKnown::Duration
                | WellKnown::FieldMask
                | WellKnown::Value
                | WellKnown::Wrapper(_)
        )
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A well-known type (prost-reflect's global pool holds them all) or a message of the mesh.
    fn message(name: &str) -> MessageDescriptor {
        prost_reflect::DescriptorPool::global()
            .get_message_by_name(name)
            .or_else(|| crate::test_support::pool().get_message_by_name(name))
            .unwrap_or_else(|| panic!("no message {name}"))
    }

    #[test]
    fn the_list_tells_wrappers_text_forms_and_plain_messages_apart() {
        let timestamp = message("google.protobuf.Timestamp");
        assert_eq!(WellKnown::of(&timestamp), Some(WellKnown::Timestamp));
        assert!(has_text_form(&timestamp));
        let wrapper = message("google.protobuf.Int32Value");
        assert_eq!(
            WellKnown::of(&wrapper),
            Some(WellKnown::Wrapper(Kind::Int32))
        );
        assert!(has_text_form(&wrapper));
        let any = message("google.protobuf.Any");
        assert!(is_well_known(&any) && !has_text_form(&any));
        let plain = message("protomesh.priority.v1.ScoreRequest");
        assert!(!is_well_known(&plain) && !has_text_form(&plain));
    }
}
