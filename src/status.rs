//! Rich gRPC errors: `tonic::Status` values that carry `google.rpc` details (the field a request got
//! wrong), so grpcurl and the gateway can name the field.

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

    /// `INVALID_ARGUMENT` naming every violation, or `Ok` when there is none.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad_request(self.0))
        }
    }
}

/// Most characters of client input an error message repeats.
pub const MAX_ECHOED_CHARS: usize = 64;

/// `input` as an error message may repeat it: at most [`MAX_ECHOED_CHARS`] characters, `…` when
/// cut, so no caller can make an answer as large as its request.
pub fn truncate_input(input: &str) -> std::borrow::Cow<'_, str> {
    match input.char_indices().nth(MAX_ECHOED_CHARS) {
        None => std::borrow::Cow::Borrowed(input),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &input[..end])),
    }
}

/// A required UUID in the hyphenated form the services hand out (any case).
pub fn uuid(field: &str, text: &str) -> Result<uuid::Uuid, FieldViolation> {
    if text.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    let invalid = || {
        FieldViolation::new(
            field,
            format!("must be a UUID, got {:?}", truncate_input(text)),
        )
    };
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
    fn echoed_input_is_cut() {
        assert_eq!(truncate_input("short"), "short");
        let long = "é".repeat(5_000);
        let cut = truncate_input(&long);
        assert_eq!(cut.chars().count(), MAX_ECHOED_CHARS + 1);
        assert!(cut.ends_with('…'));
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
    fn a_status_without_details_has_no_violations() {
        assert!(field_violations(&Status::internal("boom")).is_empty());
    }
}
