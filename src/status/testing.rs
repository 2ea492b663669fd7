//! For tests only: assertions on the rich errors of [`crate::status`], shared by every service's
//! tests. Not for production code.

use tonic::{Code, Status};

use super::field_violations;

/// The fields a status's `google.rpc.BadRequest` names, in order (none without one).
pub fn violation_fields(status: &Status) -> Vec<String> {
    field_violations(status)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// Asserts that `result` is `INVALID_ARGUMENT` naming exactly `field`, in its details and at the
/// start of its message (`field: …`).
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        violation_fields(&status),
        vec![field.to_owned()],
        "{status:?}"
    );
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{}",
        status.message()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_name_their_field() {
        let status = crate::status::invalid_argument("page_size", "too big");
        assert_eq!(violation_fields(&status), vec!["page_size".to_owned()]);
        assert_invalid::<()>(Err(status), "page_size");
        assert!(violation_fields(&Status::not_found("x")).is_empty());
    }

    #[test]
    #[should_panic(expected = "must be refused")]
    fn a_success_is_not_a_refusal() {
        assert_invalid(Ok(()), "page_size");
    }

    #[test]
    #[should_panic]
    fn another_field_fails() {
        assert_invalid::<()>(
            Err(crate::status::invalid_argument("title", "empty")),
            "page_size",
        );
    }
}
