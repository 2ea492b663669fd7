//! Request checks, done before anything touches the database. Each names the request field at
//! fault as a `protomesh::status::FieldViolation` (`user_id`, `project_id`), the way the tasks
//! service does.

use protomesh::status::FieldViolation;
pub use protomesh::status::{uuid, Violations};

/// Longest user id, in characters (the tasks service's longest assignee).
pub const MAX_USER_ID: usize = 200;

/// A user id: not empty, at most [`MAX_USER_ID`] characters, no NUL
/// ([`protomesh::status::text`]).
pub fn user_id(field: &str, text: &str) -> Result<(), FieldViolation> {
    if text.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    protomesh::status::text(field, text, MAX_USER_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_given_and_bounded_in_characters() {
        assert!(user_id("user_id", "ada").is_ok());
        assert!(user_id("user_id", &"é".repeat(200)).is_ok());
        assert_eq!(
            user_id("user_id", "").expect_err("empty").description,
            "is required"
        );
        let err = user_id("user_id", &"x".repeat(201)).expect_err("too long");
        assert_eq!(err.field, "user_id");
        assert_eq!(err.description, "must be at most 200 characters, got 201");
    }

    #[test]
    fn uuids_must_be_given_and_well_formed() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(uuid("project_id", &id.to_string()), Ok(id));
        assert_eq!(uuid("project_id", &id.to_string().to_uppercase()), Ok(id));
        assert!(uuid("project_id", "").is_err());
        assert!(uuid("project_id", "nope").is_err());
        assert_eq!(
            uuid("project_id", &id.simple().to_string())
                .expect_err("simple form")
                .field,
            "project_id"
        );
    }
}
