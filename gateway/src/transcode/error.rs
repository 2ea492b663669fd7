//! Why a request cannot be transcoded: [`TranscodeError`], naming the field or the JSON position.

use protomesh::status::{echo, shorten};

/// Most characters of an error's reason in a message: reasons may quote what the client sent
/// (serde_json's do), so they are shortened like any echoed input, with room for the longer
/// explanations (the values of an enum).
pub(super) const MAX_REASON_CHARS: usize = 512;

/// Why an HTTP request could not become a request message, or a response message could not
/// become JSON. Its messages shorten the client's input they quote
/// ([`protomesh::status::echo`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TranscodeError {
    /// The body is not valid JSON.
    #[error(
        "the request body is not valid JSON (line {line}, column {column}): {}",
        shorten(reason, MAX_REASON_CHARS)
    )]
    MalformedJson {
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// An object in the body repeats a key.
    #[error("the request body repeats the key `{}`", echo(field))]
    DuplicateKey {
        /// The key's dotted path in the request message (the body field first, `[i]` for array
        /// elements).
        field: String,
    },
    /// The query string cannot be decoded.
    #[error("malformed query string: {}", shorten(reason, MAX_REASON_CHARS))]
    MalformedQuery {
        /// What is wrong.
        reason: String,
    },
    /// The body as a whole does not fit the request message (it is not a JSON object, say).
    #[error(
        "the request body does not fit the request message: {}",
        shorten(reason, MAX_REASON_CHARS)
    )]
    InvalidBody {
        /// What is wrong.
        reason: String,
    },
    /// A field's value is wrong, or the field cannot be given the way it was.
    #[error("field `{}`: {}", echo(field), shorten(reason, MAX_REASON_CHARS))]
    InvalidField {
        /// The field's dotted path in the request message (proto names, `[i]` for list elements,
        /// `["key"]` for map entries).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The body or the query string names a field the request message does not have.
    #[error("unknown field `{}`", echo(field))]
    UnknownField {
        /// The field's dotted path, as far as it could be followed.
        field: String,
    },
    /// The method's route takes no body, but the request has one.
    #[error("this method takes no request body, but one was sent")]
    UnexpectedBody,
    /// The response message cannot be written as JSON (a server-side problem).
    #[error(
        "cannot write the response as JSON: {}",
        shorten(reason, MAX_REASON_CHARS)
    )]
    Response {
        /// What is wrong.
        reason: String,
    },
}

impl TranscodeError {
    /// The dotted path of the field the error is about, if it is about one (for a
    /// `google.rpc.BadRequest` field violation); a path longer than
    /// [`protomesh::status::MAX_ECHO_CHARS`] is shortened.
    pub(crate) fn field(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Self::InvalidField { field, .. }
            | Self::UnknownField { field }
            | Self::DuplicateKey { field } => Some(echo(field)),
            _ => None,
        }
    }

    /// Whether the request is to blame (HTTP 400, `INVALID_ARGUMENT`); `false` for
    /// [`TranscodeError::Response`], a server-side error.
    pub(crate) fn is_client_error(&self) -> bool {
        !matches!(self, Self::Response { .. })
    }
}
