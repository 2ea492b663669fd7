//! Request checks, done before anything touches the database or another service. Each names the
//! request field at fault as `protomesh::status::FieldViolation` (`task.title`, `page_size`).

use protomesh::proto::protomesh::priority::v1::Level;
use protomesh::proto::protomesh::tasks::v1::TaskStatus;
use protomesh::status::FieldViolation;
pub use protomesh::status::{uuid, Violations};
use uuid::Uuid;

/// Longest title or project name, in characters.
pub const MAX_TITLE: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 10_000;
/// Longest assignee, in characters.
pub const MAX_ASSIGNEE: usize = 200;
/// Lowest urgency or impact.
pub const MIN_FACTOR: i32 = 1;
/// Highest urgency or impact.
pub const MAX_FACTOR: i32 = 10;
/// Page size when the request asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size.
pub const MAX_PAGE_SIZE: usize = 1000;

/// An optional UUID: empty is `None`.
pub fn optional_uuid(field: &str, text: &str) -> Result<Option<Uuid>, FieldViolation> {
    if text.is_empty() {
        Ok(None)
    } else {
        uuid(field, text).map(Some)
    }
}

/// A title or name: not blank, at most [`MAX_TITLE`] characters.
pub fn title(field: &str, text: &str) -> Result<(), FieldViolation> {
    if text.trim().is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    max_chars(field, text, MAX_TITLE)
}

/// A string to store: at most `max` characters and no NUL ([`protomesh::status::text`]).
pub fn max_chars(field: &str, text: &str, max: usize) -> Result<(), FieldViolation> {
    protomesh::status::text(field, text, max)
}

/// Urgency or impact: [`MIN_FACTOR`]..=[`MAX_FACTOR`].
pub fn factor(field: &str, value: i32) -> Result<(), FieldViolation> {
    if (MIN_FACTOR..=MAX_FACTOR).contains(&value) {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!("must be between {MIN_FACTOR} and {MAX_FACTOR}, got {value}"),
        ))
    }
}

/// A status to store: open, in progress or done.
pub fn status(field: &str, value: i32) -> Result<TaskStatus, FieldViolation> {
    match TaskStatus::try_from(value) {
        Ok(TaskStatus::Unspecified) => Err(FieldViolation::new(
            field,
            "must be TASK_STATUS_OPEN, TASK_STATUS_IN_PROGRESS or TASK_STATUS_DONE",
        )),
        Ok(status) => Ok(status),
        Err(_) => Err(FieldViolation::new(
            field,
            format!("unknown task status {value}"),
        )),
    }
}

/// A status filter: unspecified is `None`.
pub fn status_filter(field: &str, value: i32) -> Result<Option<TaskStatus>, FieldViolation> {
    match TaskStatus::try_from(value) {
        Ok(TaskStatus::Unspecified) => Ok(None),
        Ok(status) => Ok(Some(status)),
        Err(_) => Err(FieldViolation::new(
            field,
            format!("unknown task status {value}"),
        )),
    }
}

/// A level filter: unspecified is `None`.
pub fn level_filter(field: &str, value: i32) -> Result<Option<Level>, FieldViolation> {
    match Level::try_from(value) {
        Ok(Level::Unspecified) => Ok(None),
        Ok(level) => Ok(Some(level)),
        Err(_) => Err(FieldViolation::new(field, format!("unknown level {value}"))),
    }
}

/// A page size: 0 is [`DEFAULT_PAGE_SIZE`], else 1..=[`MAX_PAGE_SIZE`].
pub fn page_size(field: &str, value: i32) -> Result<usize, FieldViolation> {
    match usize::try_from(value) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        _ => Err(FieldViolation::new(
            field,
            format!(
                "must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {value}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_must_be_given_and_well_formed() {
        let id = Uuid::new_v4();
        assert_eq!(uuid("id", &id.to_string()), Ok(id));
        assert_eq!(uuid("id", &id.to_string().to_uppercase()), Ok(id));
        assert_eq!(
            uuid("id", "").expect_err("empty").description,
            "is required"
        );
        assert!(uuid("id", "nope").is_err());
        assert!(uuid("id", &id.simple().to_string()).is_err());
        assert_eq!(optional_uuid("project_id", ""), Ok(None));
        assert_eq!(
            optional_uuid("project_id", "x").expect_err("bad").field,
            "project_id"
        );
    }

    #[test]
    fn titles_are_not_blank_and_bounded_in_characters() {
        assert!(title("task.title", "ship").is_ok());
        assert!(title("task.title", "").is_err());
        assert!(title("task.title", "   ").is_err());
        assert!(title("task.title", &"é".repeat(200)).is_ok());
        let err = title("task.title", &"x".repeat(201)).expect_err("too long");
        assert_eq!(err.field, "task.title");
        assert_eq!(err.description, "must be at most 200 characters, got 201");
    }

    #[test]
    fn factors_are_one_to_ten() {
        assert!(factor("task.urgency", 1).is_ok());
        assert!(factor("task.urgency", 10).is_ok());
        assert!(factor("task.urgency", 0).is_err());
        assert_eq!(
            factor("task.impact", 11).expect_err("11").description,
            "must be between 1 and 10, got 11"
        );
    }

    #[test]
    fn statuses_and_levels() {
        assert_eq!(status("task.status", 3), Ok(TaskStatus::Done));
        assert!(status("task.status", 0).is_err());
        assert!(status("task.status", 9).is_err());
        assert_eq!(status_filter("status", 0), Ok(None));
        assert_eq!(status_filter("status", 2), Ok(Some(TaskStatus::InProgress)));
        assert!(status_filter("status", -1).is_err());
        assert_eq!(level_filter("min_level", 0), Ok(None));
        assert_eq!(level_filter("min_level", 3), Ok(Some(Level::High)));
        assert!(level_filter("min_level", 5).is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size("page_size", 0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size("page_size", 1), Ok(1));
        assert_eq!(page_size("page_size", 1000), Ok(1000));
        assert!(page_size("page_size", 1001).is_err());
        assert!(page_size("page_size", -1).is_err());
    }

    #[test]
    fn violations_collect() {
        let mut violations = Violations::new();
        assert_eq!(violations.check(factor("task.urgency", 5)), Some(()));
        violations.check(factor("task.urgency", 0));
        violations.add("task.impact", "bad");
        let status = violations.into_result().expect_err("two violations");
        let fields: Vec<_> = protomesh::status::field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["task.urgency", "task.impact"]);
        assert!(Violations::new().into_result().is_ok());
    }
}
