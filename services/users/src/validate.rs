//! Request checks, done before anything touches the database, Redis or the password hasher. Each
//! names the request field at fault as a `protomesh::status::FieldViolation` (`email`,
//! `password`, `refresh_token`). No description ever repeats a password or a token.

use protomesh::status::FieldViolation;
pub use protomesh::status::{uuid, Violations};

/// Longest email address, in characters (RFC 5321's path limit less the angle brackets).
pub const MAX_EMAIL: usize = 254;
/// Longest local part (before the `@`), in characters (RFC 5321).
pub const MAX_EMAIL_LOCAL: usize = 64;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Shortest password a new account may have, in characters.
pub const MIN_PASSWORD: usize = 12;
/// Longest password, in characters (bounds the work a single call can ask of the hasher).
pub const MAX_PASSWORD: usize = 1024;
/// Longest refresh token accepted, in characters (ours are 43).
pub const MAX_REFRESH_TOKEN: usize = 128;

/// An email address as accounts are keyed by it: trimmed and lower-cased.
pub fn normalize_email(text: &str) -> String {
    text.trim().to_lowercase()
}

/// An email address for a new account: normalized ([`normalize_email`]), then of a sane shape:
/// one `@`, a local part of 1..=64 visible characters, a domain of at least two dot-separated
/// labels of letters, digits and inner hyphens, a top-level label not all digits, and at most
/// [`MAX_EMAIL`] characters in all. Returns the normalized address.
pub fn email(field: &str, text: &str) -> Result<String, FieldViolation> {
    let email = normalize_email(text);
    if email.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    let count = email.chars().count();
    if count > MAX_EMAIL {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_EMAIL} characters, got {count}"),
        ));
    }
    let invalid = |why: &str| FieldViolation::new(field, format!("is not an email address: {why}"));
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid("no @"));
    };
    if domain.contains('@') {
        return Err(invalid("more than one @"));
    }
    if local.is_empty() || local.chars().count() > MAX_EMAIL_LOCAL {
        return Err(invalid(&format!(
            "the part before @ must have 1 to {MAX_EMAIL_LOCAL} characters"
        )));
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';'))
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(invalid(
            "the part before @ has characters an address cannot have",
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("the domain needs a dot"));
    }
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.chars().count() <= 63
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !labels.iter().all(label_ok) {
        return Err(invalid(
            "each part of the domain must be letters, digits and inner hyphens",
        ));
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(invalid("the domain must end with a name, not a number"));
    }
    Ok(email)
}

/// An email address to log in with: given, and not longer than any account's; no syntax check
/// (an address that could not register is simply unknown). Returns it normalized.
pub fn login_email(field: &str, text: &str) -> Result<String, FieldViolation> {
    let email = normalize_email(text);
    if email.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    let count = email.chars().count();
    if count > MAX_EMAIL {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_EMAIL} characters, got {count}"),
        ));
    }
    Ok(email)
}

/// A display name: not blank, at most [`MAX_DISPLAY_NAME`] characters. Returns it trimmed.
pub fn display_name(field: &str, text: &str) -> Result<String, FieldViolation> {
    let name = text.trim();
    if name.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    let count = name.chars().count();
    if count > MAX_DISPLAY_NAME {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_DISPLAY_NAME} characters, got {count}"),
        ));
    }
    Ok(name.to_owned())
}

/// A new password: [`MIN_PASSWORD`]..=[`MAX_PASSWORD`] characters (taken as given, spaces
/// included).
pub fn new_password(field: &str, password: &str) -> Result<(), FieldViolation> {
    let count = password.chars().count();
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&count) {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!("must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long, got {count}"),
        ))
    }
}

/// A password to log in with: given, and at most [`MAX_PASSWORD`] characters.
pub fn login_password(field: &str, password: &str) -> Result<(), FieldViolation> {
    if password.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    let count = password.chars().count();
    if count > MAX_PASSWORD {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_PASSWORD} characters, got {count}"),
        ));
    }
    Ok(())
}

/// A refresh token: given, and not longer than [`MAX_REFRESH_TOKEN`] (whether it is one of ours
/// is the database's answer).
pub fn refresh_token(field: &str, token: &str) -> Result<(), FieldViolation> {
    if token.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if token.len() > MAX_REFRESH_TOKEN {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_REFRESH_TOKEN} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_of_a_sane_shape() {
        assert_eq!(
            email("email", "  Ada.Lovelace+x@Example.ORG "),
            Ok("ada.lovelace+x@example.org".to_owned())
        );
        assert_eq!(email("email", "a@b.co"), Ok("a@b.co".to_owned()));
        assert_eq!(email("email", "é@bücher.de"), Ok("é@bücher.de".to_owned()));
        for bad in [
            "",
            "   ",
            "ada",
            "ada@",
            "@example.org",
            "ada@example",
            "ada@@example.org",
            "a@b@example.org",
            "ada lovelace@example.org",
            "ada@exa mple.org",
            "ada@-example.org",
            "ada@example-.org",
            "ada@example..org",
            "ada@.example.org",
            "ada@127.0.0.1",
            ".ada@example.org",
            "ada.@example.org",
            "a..da@example.org",
            "<ada>@example.org",
        ] {
            let err = email("email", bad).expect_err(bad);
            assert_eq!(err.field, "email", "{bad}");
        }
        let long_local = format!("{}@example.org", "a".repeat(65));
        assert!(email("email", &long_local).is_err());
        let domain = ["b".repeat(63), "c".repeat(63), "d".repeat(63)].join(".");
        let long = format!("{}@{domain}.org", "a".repeat(60));
        assert!(long.chars().count() > MAX_EMAIL);
        assert!(email("email", &long)
            .expect_err("too long")
            .description
            .starts_with("must be at most 254 characters"));
        assert_eq!(
            email("email", "").expect_err("empty").description,
            "is required"
        );
    }

    #[test]
    fn login_emails_are_only_normalized_and_bounded() {
        assert_eq!(
            login_email("email", " ADA@x.org"),
            Ok("ada@x.org".to_owned())
        );
        assert_eq!(
            login_email("email", "not-an-address"),
            Ok("not-an-address".to_owned())
        );
        assert!(login_email("email", " ").is_err());
        assert!(login_email("email", &"a".repeat(255)).is_err());
    }

    #[test]
    fn display_names_are_trimmed_and_bounded_in_characters() {
        assert_eq!(display_name("display_name", " Ada "), Ok("Ada".to_owned()));
        assert!(display_name("display_name", "").is_err());
        assert!(display_name("display_name", "   ").is_err());
        assert!(display_name("display_name", "a\u{0}b").is_err());
        assert!(display_name("display_name", &"é".repeat(100)).is_ok());
        let err = display_name("display_name", &"x".repeat(101)).expect_err("too long");
        assert_eq!(err.field, "display_name");
        assert_eq!(err.description, "must be at most 100 characters, got 101");
    }

    #[test]
    fn passwords_are_12_to_1024_characters_and_never_echoed() {
        assert!(new_password("password", &"p".repeat(12)).is_ok());
        assert!(new_password("password", &"é".repeat(1024)).is_ok());
        let err = new_password("password", "hunter2").expect_err("too short");
        assert_eq!(err.field, "password");
        assert_eq!(err.description, "must be 12 to 1024 characters long, got 7");
        assert!(!err.description.contains("hunter2"));
        assert!(new_password("password", &"p".repeat(1025)).is_err());
        assert!(login_password("password", "short").is_ok());
        assert!(login_password("password", "").is_err());
        assert!(login_password("password", &"p".repeat(1025)).is_err());
    }

    #[test]
    fn refresh_tokens_are_required_and_bounded() {
        assert!(refresh_token("refresh_token", "abc").is_ok());
        assert!(refresh_token("refresh_token", "").is_err());
        assert!(refresh_token("refresh_token", &"a".repeat(129)).is_err());
    }

    #[test]
    fn violations_collect() {
        let mut violations = Violations::new();
        assert_eq!(
            violations.check(new_password("password", "long enough pw")),
            Some(())
        );
        violations.check(email("email", "nope"));
        violations.check(display_name("display_name", ""));
        let status = violations.into_result().expect_err("two violations");
        let fields: Vec<_> = protomesh::status::field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["email", "display_name"]);
        assert!(Violations::new().into_result().is_ok());
    }
}
