//! The request checks the declared rules (`(buf.validate.field)` in `tasks.proto`, enforced by the
//! runtime before a handler runs) cannot make, and the parsing of checked values. Each names the
//! request field at fault as `protomesh::status::FieldViolation` (`task.status`, `project_id`).

use crate::proto::protomesh::tasks::v1::TaskStatus;
use protomesh::status::FieldViolation;
pub use protomesh::status::{uuid, Violations};
use protomesh_priority::proto::protomesh::priority::v1::Level;
use uuid::Uuid;

/// An optional UUID: empty is `None`.
pub fn optional_uuid(field: &str, text: &str) -> Result<Option<Uuid>, FieldViolation> {
    if text.is_empty() {
        Ok(None)
    } else {
        uuid(field, text).map(Some)
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

/// A status filter: unspecified is `None` (the declared rules refused undefined ones).
pub fn status_filter(value: i32) -> Option<TaskStatus> {
    TaskStatus::try_from(value)
        .ok()
        .filter(|status| *status != TaskStatus::Unspecified)
}

/// A level filter: unspecified is `None` (the declared rules refused undefined ones).
pub fn level_filter(value: i32) -> Option<Level> {
    Level::try_from(value)
        .ok()
        .filter(|level| *level != Level::Unspecified)
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
    fn statuses_and_levels() {
        assert_eq!(status("task.status", 3), Ok(TaskStatus::Done));
        assert!(status("task.status", 0).is_err());
        assert!(status("task.status", 9).is_err());
        assert_eq!(status_filter(0), None);
        assert_eq!(status_filter(2), Some(TaskStatus::InProgress));
        assert_eq!(level_filter(0), None);
        assert_eq!(level_filter(3), Some(Level::High));
    }

    #[test]
    fn violations_collect() {
        let mut violations = Violations::new();
        assert!(violations
            .check(uuid("task.id", &Uuid::new_v4().to_string()))
            .is_some());
        violations.add("task.urgency", "bad");
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
