//! Accounts as Rust values: read from Postgres, answered as protobuf. The password hash is never
//! part of a [`UserRecord`]: it is read only by the login query, into a local that goes straight
//! to the verifier.

use std::time::SystemTime;

use crate::proto::protomesh::users::v1::User;
use protomesh_data::tokio_postgres::Row;
use uuid::Uuid;

/// The columns of `users` in the order [`UserRecord::from_row`] reads them, as a literal for
/// `concat!`.
macro_rules! user_columns {
    () => {
        "id, email, display_name, roles, created_at"
    };
}
pub(crate) use user_columns;

/// The columns of `users` in the order [`UserRecord::from_row`] reads them.
pub const USER_COLUMNS: &str = user_columns!();

/// The role every account has.
pub const ROLE_USER: &str = "user";
/// The role `--admin-email` accounts get at registration.
pub const ROLE_ADMIN: &str = "admin";

/// One account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Its id (the JWT `sub`).
    pub id: Uuid,
    /// Trimmed and lower-cased, unique.
    pub email: String,
    /// 1..100 characters.
    pub display_name: String,
    /// `user`, and `admin` for administrators.
    pub roles: Vec<String>,
    /// When it registered.
    pub created_at: SystemTime,
}

impl UserRecord {
    /// The account in a row selected with [`USER_COLUMNS`].
    pub fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            email: row.get(1),
            display_name: row.get(2),
            roles: row.get(3),
            created_at: row.get(4),
        }
    }

    /// The protobuf message.
    pub fn to_proto(&self) -> User {
        User {
            id: self.id.to_string(),
            email: self.email.clone(),
            display_name: self.display_name.clone(),
            roles: self.roles.clone(),
            created_at: Some(self.created_at.into()),
        }
    }
}

/// The roles of a new account with (normalized) `email`: `user`, plus `admin` when `email` is
/// one of `admin_emails`.
pub fn roles_for(email: &str, admin_emails: &[String]) -> Vec<String> {
    let mut roles = vec![ROLE_USER.to_owned()];
    if admin_emails.iter().any(|admin| admin == email) {
        roles.push(ROLE_ADMIN.to_owned());
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_are_users_too() {
        let admins = vec!["root@example.org".to_owned()];
        assert_eq!(roles_for("ada@example.org", &admins), vec!["user"]);
        assert_eq!(
            roles_for("root@example.org", &admins),
            vec!["user", "admin"]
        );
        assert_eq!(roles_for("root@example.org", &[]), vec!["user"]);
    }

    #[test]
    fn records_become_users() {
        let record = UserRecord {
            id: Uuid::nil(),
            email: "ada@example.org".into(),
            display_name: "Ada".into(),
            roles: vec![ROLE_USER.into()],
            created_at: SystemTime::UNIX_EPOCH,
        };
        let user = record.to_proto();
        assert_eq!(user.id, Uuid::nil().to_string());
        assert_eq!(user.roles, vec!["user"]);
        assert_eq!(user.created_at.map(|t| t.seconds), Some(0));
    }
}
