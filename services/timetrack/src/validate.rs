//! The request checks the declared rules (`(buf.validate.field)` in `timetrack.proto`, enforced
//! by the runtime before a handler runs) cannot make — timestamps in range, periods in order —
//! and the parsing of checked values. Each names the request field at fault as a
//! `protomesh::status::FieldViolation` (`task_id`, `to`), and a request's violations are reported
//! together.

use std::time::{Duration, SystemTime};

use protomesh::status::FieldViolation;
pub use protomesh::status::{uuid, Violations};
use uuid::Uuid;

/// Longest period `GetTotals` adds up, in days.
pub const MAX_TOTALS_DAYS: u64 = 366;
/// Earliest timestamp accepted: 0001-01-01T00:00:00Z (the range of `google.protobuf.Timestamp`).
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Latest timestamp accepted: 9999-12-31T23:59:59Z.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// An optional UUID: empty is `None`.
pub fn optional_uuid(field: &str, text: &str) -> Result<Option<Uuid>, FieldViolation> {
    if text.is_empty() {
        Ok(None)
    } else {
        uuid(field, text).map(Some)
    }
}

/// An optional timestamp: unset is `None`; a set one must be a valid timestamp of the years
/// 1..=9999 (nanos 0..1e9).
pub fn optional_timestamp(
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Result<Option<SystemTime>, FieldViolation> {
    let Some(timestamp) = value else {
        return Ok(None);
    };
    let in_range = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&timestamp.seconds)
        && (0..1_000_000_000).contains(&timestamp.nanos);
    if !in_range {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be a timestamp between 0001-01-01 and 9999-12-31, got {}s {}ns",
                timestamp.seconds, timestamp.nanos
            ),
        ));
    }
    SystemTime::try_from(*timestamp)
        .map(Some)
        .map_err(|err| FieldViolation::new(field, format!("is not a valid timestamp: {err}")))
}

/// A required timestamp, as [`optional_timestamp`].
pub fn timestamp(
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Result<SystemTime, FieldViolation> {
    optional_timestamp(field, value)?.ok_or_else(|| FieldViolation::new(field, "is required"))
}

/// A period `[from, to)`: `to` must be later than `from` (checked only when both are set).
pub fn period_order(
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> Result<(), FieldViolation> {
    match (from, to) {
        (Some(from), Some(to)) if to <= from => Err(FieldViolation::new(
            "to",
            format!(
                "must be later than from ({} is not after {})",
                rfc3339(to),
                rfc3339(from)
            ),
        )),
        _ => Ok(()),
    }
}

/// `time` in RFC 3339, before 1970 too (`humantime` panics on those).
fn rfc3339(time: SystemTime) -> String {
    prost_types::Timestamp::from(time).to_string()
}

/// The period of a `GetTotals`: `from` before `to`, at most [`MAX_TOTALS_DAYS`] days long.
pub fn totals_period(from: SystemTime, to: SystemTime) -> Result<(), FieldViolation> {
    period_order(Some(from), Some(to))?;
    let longest = Duration::from_secs(MAX_TOTALS_DAYS * 24 * 60 * 60);
    match to.duration_since(from) {
        Ok(length) if length <= longest => Ok(()),
        Ok(length) => Err(FieldViolation::new(
            "to",
            format!(
                "the period must be at most {MAX_TOTALS_DAYS} days, got {:.1} days",
                length.as_secs_f64() / 86_400.0
            ),
        )),
        // `period_order` already refused a `to` before `from`.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn uuids_must_be_given_and_well_formed() {
        let id = Uuid::new_v4();
        assert_eq!(uuid("task_id", &id.to_string()), Ok(id));
        assert_eq!(uuid("task_id", &id.to_string().to_uppercase()), Ok(id));
        assert_eq!(
            uuid("task_id", "").expect_err("empty").description,
            "is required"
        );
        assert!(uuid("task_id", "nope").is_err());
        assert!(uuid("task_id", &id.simple().to_string()).is_err());
        assert_eq!(optional_uuid("task_id", ""), Ok(None));
        assert_eq!(
            optional_uuid("task_id", "x").expect_err("bad").field,
            "task_id"
        );
    }

    #[test]
    fn timestamps_are_checked() {
        assert_eq!(optional_timestamp("from", None), Ok(None));
        assert_eq!(
            optional_timestamp("from", Some(&at(1_700_000_000))),
            Ok(Some(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            ))
        );
        assert!(optional_timestamp("from", Some(&at(-1))).is_ok());
        let bad_nanos = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            optional_timestamp("from", Some(&bad_nanos))
                .expect_err("nanos")
                .field,
            "from"
        );
        assert!(optional_timestamp("to", Some(&at(MAX_TIMESTAMP_SECONDS + 1))).is_err());
        assert!(optional_timestamp("to", Some(&at(MIN_TIMESTAMP_SECONDS - 1))).is_err());
        assert_eq!(
            timestamp("from", None).expect_err("missing").description,
            "is required"
        );
    }

    #[test]
    fn periods() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(period_order(None, None).is_ok());
        assert!(period_order(Some(t(5)), None).is_ok());
        assert!(period_order(Some(t(5)), Some(t(6))).is_ok());
        assert_eq!(
            period_order(Some(t(5)), Some(t(5)))
                .expect_err("empty")
                .field,
            "to"
        );
        assert!(period_order(Some(t(6)), Some(t(5))).is_err());
        // Before the epoch too (a panic once).
        let before = |s: u64| SystemTime::UNIX_EPOCH - Duration::from_secs(s);
        let err = period_order(Some(t(5)), Some(before(86_400 * 365 * 1834))).expect_err("order");
        assert!(
            err.description
                .contains("(0137-03-21T00:00:00Z is not after"),
            "{}",
            err.description
        );
        let day = 86_400;
        assert!(totals_period(t(0), t(366 * day)).is_ok());
        let err = totals_period(t(0), t(366 * day + 1)).expect_err("too long");
        assert_eq!(err.field, "to");
        assert!(err.description.contains("366 days"), "{}", err.description);
        assert!(totals_period(t(10), t(10)).is_err());
    }

    #[test]
    fn violations_collect() {
        let mut violations = Violations::new();
        assert!(violations
            .check(uuid("task_id", &Uuid::new_v4().to_string()))
            .is_some());
        violations.add("user_id", "is required");
        violations.add("task_id", "bad");
        let status = violations.into_result().expect_err("two violations");
        let fields: Vec<_> = protomesh::status::field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["user_id", "task_id"]);
        assert!(Violations::new().into_result().is_ok());
    }
}
