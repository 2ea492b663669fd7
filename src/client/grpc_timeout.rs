//! The `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as the
//! gRPC over HTTP/2 spec says. Parsed on the way in, written with the finest unit that fits.

use std::time::Duration;

/// Name of the header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Largest value the 8 digits can carry.
const MAX_DIGITS: u128 = 99_999_999;

/// Parses a `grpc-timeout` value; `None` when it is malformed.
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `timeout` in the finest unit whose value fits in 8 digits (rounding up, so a callee never
/// sees a longer budget than the caller has; zero becomes `1n`, already expired in practice).
pub fn encode(timeout: Duration) -> String {
    let nanos = timeout.as_nanos().max(1);
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (per_unit, unit) in units {
        let value = nanos.div_ceil(per_unit);
        if value <= MAX_DIGITS {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX_DIGITS}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "m", "5", "5x", "-5m", "123456789m", "1.5S", " 5m"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_in_the_finest_unit_that_fits_rounding_up() {
        assert_eq!(encode(Duration::from_millis(50)), "50000000n");
        assert_eq!(encode(Duration::from_secs(1)), "1000000u");
        assert_eq!(encode(Duration::from_secs(600)), "600000m");
        assert_eq!(encode(Duration::from_nanos(1_500)), "1500n");
        assert_eq!(encode(Duration::ZERO), "1n");
        assert_eq!(encode(Duration::from_nanos(100_000_001)), "100001u");
    }

    #[test]
    fn encode_then_parse_never_grows_by_more_than_one_unit() {
        for ms in [1u64, 49, 50, 999, 12_345, 3_600_000] {
            let d = Duration::from_millis(ms);
            let back = parse(&encode(d)).expect("round trip");
            assert!(back >= d, "{d:?} -> {back:?}");
        }
    }
}
