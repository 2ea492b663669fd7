//! The checks of one scalar value against its value rules (strings, numbers, enums), shared by
//! the check of decoded messages ([`super::check`]) and the one on wire bytes ([`super::wire`]).
//! Violations are worded here; a value that passes costs no allocation.

use super::declared::{is_email, is_uuid, NumberRules, StringFormat, StringRules, ValueRules};
use crate::status::{echo, FieldViolation};

/// A scalar value as the value rules see it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scalar<'v> {
    /// A string.
    Text(&'v str),
    /// An integer of any width.
    Integer(i128),
    /// A `float` or `double`.
    Float(f64),
    /// An enum's number.
    Enum(i32),
    /// A value no value rule applies to (`bool`, `bytes`, a message, a list).
    Other,
}

/// The violations of `value` against `rules` into `out` (rules for another type of value do not
/// apply).
pub(super) fn check_scalar(
    rules: &ValueRules,
    value: Scalar<'_>,
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    match (rules, value) {
        (ValueRules::String(rules), Scalar::Text(text)) => check_string(rules, text, path, out),
        (ValueRules::Integer(rules), Scalar::Integer(number)) => {
            check_number(rules, number, path, out);
        }
        (ValueRules::Float(rules), Scalar::Float(number)) => {
            check_number(rules, number, path, out);
        }
        (ValueRules::Enum(rules), Scalar::Enum(number)) if !rules.allows(number) => {
            let allowed: Vec<_> = rules
                .allowed_values()
                .iter()
                .map(|v| v.name().to_owned())
                .collect();
            let got = match rules.enumeration.get_value(number) {
                Some(value) => value.name().to_owned(),
                None => number.to_string(),
            };
            out.push(FieldViolation::new(
                path,
                format!("must be one of {}, got {got}", allowed.join(", ")),
            ));
        }
        _ => {}
    }
}

/// The first violation of `text` (length, pattern, format, sets), if any, into `out`.
fn check_string(rules: &StringRules, text: &str, path: &str, out: &mut Vec<FieldViolation>) {
    let before = out.len();
    check_length(rules, text, path, out);
    if out.len() > before {
        return;
    }
    if let Some(pattern) = &rules.pattern {
        if !pattern.is_match(text) {
            out.push(FieldViolation::new(
                path,
                format!("must match the pattern {:?}", pattern.source),
            ));
            return;
        }
    }
    check_format_and_sets(rules, text, path, out);
}

fn check_length(rules: &StringRules, text: &str, path: &str, out: &mut Vec<FieldViolation>) {
    let count = text.chars().count() as u64;
    match (rules.min_len, rules.max_len) {
        (Some(min), Some(max)) if count < min || count > max => {
            let description = if min == max {
                format!("must be exactly {min} characters, got {count}")
            } else if count > max {
                format!("must be at most {max} characters, got {count}")
            } else if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters, got {count}")
            };
            out.push(FieldViolation::new(path, description));
        }
        (Some(1), None) if count < 1 => out.push(FieldViolation::new(path, "must not be empty")),
        (Some(min), None) if count < min => out.push(FieldViolation::new(
            path,
            format!("must be at least {min} characters, got {count}"),
        )),
        (None, Some(max)) if count > max => out.push(FieldViolation::new(
            path,
            format!("must be at most {max} characters, got {count}"),
        )),
        _ => {}
    }
}

fn check_format_and_sets(
    rules: &StringRules,
    text: &str,
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    match rules.format {
        Some(StringFormat::Uuid) if !is_uuid(text) => out.push(FieldViolation::new(
            path,
            format!("must be a UUID, got {:?}", echo(text)),
        )),
        Some(StringFormat::Email) if !is_email(text) => out.push(FieldViolation::new(
            path,
            "must be an email address (name@example.org)",
        )),
        _ => {}
    }
    if !rules.one_of.is_empty() && !rules.one_of.iter().any(|allowed| allowed == text) {
        out.push(FieldViolation::new(
            path,
            format!("must be one of {}", quoted(&rules.one_of)),
        ));
    }
    if rules.none_of.iter().any(|refused| refused == text) {
        out.push(FieldViolation::new(
            path,
            format!("must not be {:?}", echo(text)),
        ));
    }
}

fn quoted(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_number<T>(rules: &NumberRules<T>, number: T, path: &str, out: &mut Vec<FieldViolation>)
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let low_ok = rules.gt.is_none_or(|gt| number > gt) && rules.gte.is_none_or(|gte| number >= gte);
    let high_ok =
        rules.lt.is_none_or(|lt| number < lt) && rules.lte.is_none_or(|lte| number <= lte);
    if !(low_ok && high_ok) {
        out.push(FieldViolation::new(path, range_text(rules, number)));
    }
    if !rules.one_of.is_empty() && !rules.one_of.contains(&number) {
        let allowed: Vec<_> = rules.one_of.iter().map(ToString::to_string).collect();
        out.push(FieldViolation::new(
            path,
            format!("must be one of {}, got {number}", allowed.join(", ")),
        ));
    }
    if rules.none_of.contains(&number) {
        out.push(FieldViolation::new(path, format!("must not be {number}")));
    }
}

/// `must be between 1 and 10, got 11`, `must be greater than 0, got 0`, ….
fn range_text<T: std::fmt::Display + Copy>(rules: &NumberRules<T>, number: T) -> String {
    if let (None, Some(gte), None, Some(lte)) = (rules.gt, rules.gte, rules.lt, rules.lte) {
        return format!("must be between {gte} and {lte}, got {number}");
    }
    let low = match (rules.gt, rules.gte) {
        (Some(gt), _) => Some(format!("greater than {gt}")),
        (None, Some(gte)) => Some(format!("at least {gte}")),
        (None, None) => None,
    };
    let high = match (rules.lt, rules.lte) {
        (Some(lt), _) => Some(format!("less than {lt}")),
        (None, Some(lte)) => Some(format!("at most {lte}")),
        (None, None) => None,
    };
    let bounds: Vec<String> = low.into_iter().chain(high).collect();
    format!("must be {}, got {number}", bounds.join(" and "))
}
