//! Formatting of [`Duration`]s as Go duration strings (`"30s"`, `"500ms"`), the form Consul
//! expects in check definitions and in the `wait` query parameter.

use std::time::Duration;

use serde::Serializer;

/// Formats a duration the way Go's `time.ParseDuration` accepts it, using the largest unit
/// that represents it exactly: `"0s"`, `"60s"`, `"1500ms"`, `"250us"`, `"7ns"`.
///
/// Minutes and hours are written as seconds (`"60s"`, `"3600s"`), which Consul accepts.
pub fn to_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

/// `serialize_with` helper for `Option<Duration>` fields (used together with
/// `skip_serializing_if = "Option::is_none"`).
pub(crate) fn serialize_opt<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_str(&to_go_duration(*d)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        assert_eq!(to_go_duration(Duration::ZERO), "0s");
        assert_eq!(to_go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(to_go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(to_go_duration(Duration::from_secs(60)), "60s");
        assert_eq!(to_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(to_go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(to_go_duration(Duration::from_micros(250)), "250us");
        assert_eq!(to_go_duration(Duration::from_nanos(7)), "7ns");
    }
}
