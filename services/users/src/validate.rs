//! What the users service does with request fields the declared rules (`(buf.validate.field)` in
//! `users.proto`, enforced by the runtime before a handler runs) have checked: an email address is
//! kept normalized.

/// An email address as accounts are keyed by it: trimmed and lower-cased.
pub fn normalize_email(text: &str) -> String {
    text.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            normalize_email("  Ada.Lovelace+x@Example.ORG "),
            "ada.lovelace+x@example.org"
        );
        assert_eq!(normalize_email("é@BÜCHER.de"), "é@bücher.de");
    }
}
