//! Rich gRPC errors: `tonic::Status` values that carry `google.rpc` details (the field a request got
//! wrong), so grpcurl and the gateway can name the field; the shared checks of request text
//! ([`text`]: length, no NUL) and the shortening of client input repeated in a message ([`echo`]);
//! assertions on them for tests (`testing`, feature `test-util`).

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::borrow::Cow;

use prost::Message;
use tonic::{Code, Status};

use crate::proto::google::rpc;

/// Type URL of `google.rpc.BadRequest` inside a `google.protobuf.Any`.
const BAD_REQUEST_TYPE_URL: &str = "type.googleapis.com/google.rpc.BadRequest";

/// One field of a request and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, dotted and indexed as in the request (`tasks[2].urgency`).
    pub field: String,
    /// What is wrong, for a person to read (`must be between 1 and 10, got 11`).
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// The violations of one request, collected so the caller learns about all of them at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is wrong.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the error of `result`, if any, and returns its value.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(violation) => {
                self.0.push(violation);
                None
            }
        }
    }

    /// Checks a string field to be stored ([`text`]) and records what is wrong with it.
    pub fn text(&mut self, field: &str, value: &str, max_chars: usize) -> bool {
        self.check(text(field, value, max_chars)).is_some()
    }

    /// `INVALID_ARGUMENT` naming every violation, or `Ok` when there is none.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad_request(self.0))
        }
    }
}

/// Most characters of client input an error message repeats (see [`echo`]).
pub const MAX_ECHO_CHARS: usize = 128;

/// Client input as an error message may repeat it: whole when at most [`MAX_ECHO_CHARS`]
/// characters, else its first [`MAX_ECHO_CHARS`] characters followed by `…` (cut on a character
/// boundary). Every message that quotes a request's field, path, symbol or token goes through
/// it, so an answer never repeats kilobytes of what the caller sent.
pub fn echo(input: &str) -> Cow<'_, str> {
    shorten(input, MAX_ECHO_CHARS)
}

/// `text` whole when at most `max_chars` characters, else its first `max_chars` characters
/// followed by `…` (cut on a character boundary): for a message that may quote client input
/// somewhere inside (a parser's error, say).
pub fn shorten(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
    }
}

/// A string field a service stores: at most `max_chars` characters and no NUL (U+0000), which
/// Postgres `text` cannot hold. (Every other character of a Rust string can be stored: a `str`
/// is valid UTF-8, without surrogates.) The violation names `field` and never repeats the value.
pub fn text(field: &str, value: &str, max_chars: usize) -> Result<(), FieldViolation> {
    if value.contains('\0') {
        return Err(FieldViolation::new(
            field,
            "must not contain NUL characters (U+0000)",
        ));
    }
    let count = value.chars().count();
    if count > max_chars {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max_chars} characters, got {count}"),
        ));
    }
    Ok(())
}

/// A required UUID in the hyphenated form the services hand out (any case).
pub fn uuid(field: &str, text: &str) -> Result<uuid::Uuid, FieldViolation> {
    if text.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    let invalid = || FieldViolation::new(field, format!("must be a UUID, got {:?}", echo(text)));
    if text.len() != 36 {
        return Err(invalid());
    }
    uuid::Uuid::parse_str(text).map_err(|_| invalid())
}

/// `INVALID_ARGUMENT` naming one field, in the message and as a `google.rpc.BadRequest` detail.
pub fn invalid_argument(field: impl Into<String>, description: impl Into<String>) -> Status {
    bad_request(vec![FieldViolation::new(field, description)])
}

/// `INVALID_ARGUMENT` naming every violation, in the message and as a `google.rpc.BadRequest` detail.
pub fn bad_request(violations: Vec<FieldViolation>) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let detail = rpc::BadRequest {
        field_violations: violations
            .into_iter()
            .map(|v| rpc::bad_request::FieldViolation {
                field: v.field,
                description: v.description,
                ..Default::default()
            })
            .collect(),
    };
    with_details(
        Code::InvalidArgument,
        message,
        detail.encode_to_vec(),
        BAD_REQUEST_TYPE_URL,
    )
}

/// A status whose `grpc-status-details-bin` is a `google.rpc.Status` holding one detail.
fn with_details(code: Code, message: String, detail: Vec<u8>, type_url: &str) -> Status {
    let status = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: type_url.to_owned(),
            value: detail,
        }],
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// The field violations of a status built by [`bad_request`] (or any server that sends
/// `google.rpc.BadRequest` details); empty when it has none.
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    let Ok(rpc_status) = rpc::Status::decode(status.details()) else {
        return Vec::new();
    };
    rpc_status
        .details
        .iter()
        .filter(|any| any.type_url == BAD_REQUEST_TYPE_URL)
        .filter_map(|any| rpc::BadRequest::decode(any.value.as_slice()).ok())
        .flat_map(|br| br.field_violations)
        .map(|v| FieldViolation::new(v.field, v.description))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_violation_repeats_little_of_the_input() {
        let violation = uuid("id", &"x".repeat(4_000_000)).unwrap_err();
        assert!(
            violation.description.len() < 200,
            "{}",
            violation.description.len()
        );
    }

    #[test]
    fn invalid_argument_names_the_field_in_message_and_details() {
        let status = invalid_argument("urgency", "must be between 1 and 10, got 11");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "urgency: must be between 1 and 10, got 11"
        );
        assert_eq!(
            field_violations(&status),
            vec![FieldViolation::new(
                "urgency",
                "must be between 1 and 10, got 11"
            )]
        );
    }

    #[test]
    fn bad_request_joins_every_violation() {
        let status = bad_request(vec![
            FieldViolation::new("urgency", "too low"),
            FieldViolation::new("impact", "too high"),
        ]);
        assert_eq!(status.message(), "urgency: too low; impact: too high");
        assert_eq!(field_violations(&status).len(), 2);
    }

    #[test]
    fn echoed_input_is_cut_on_a_character_boundary() {
        assert_eq!(echo("short"), "short");
        let exact = "é".repeat(MAX_ECHO_CHARS);
        assert_eq!(echo(&exact), exact);
        let long = "é".repeat(16 * 1024);
        let echoed = echo(&long);
        assert_eq!(echoed.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(echoed.ends_with('…'));
        let status = uuid("id", &"x".repeat(4 << 20)).expect_err("not a UUID");
        assert!(
            status.description.len() < 300,
            "{}",
            status.description.len()
        );
    }

    #[test]
    fn text_refuses_nul_and_overlong_values() {
        assert!(text("project.name", "ship it ü", 200).is_ok());
        let nul = text("project.name", "a\u{0}b", 200).expect_err("NUL");
        assert_eq!(nul.field, "project.name");
        assert!(nul.description.contains("NUL"), "{}", nul.description);
        let long = text("note", &"n".repeat(11), 10).expect_err("too long");
        assert_eq!(long.description, "must be at most 10 characters, got 11");
        let mut violations = Violations::new();
        assert!(violations.text("a", "ok", 10));
        assert!(!violations.text("b", "\0", 10));
        let status = violations.into_result().expect_err("one violation");
        assert_eq!(field_violations(&status)[0].field, "b");
    }

    #[test]
    fn a_status_without_details_has_no_violations() {
        assert!(field_violations(&Status::internal("boom")).is_empty());
    }
}
