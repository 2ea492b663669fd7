//! The `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as the
//! gRPC over HTTP/2 spec says. Parsed on the way in, written with the finest unit that fits.

use std::time::Duration;

/// Name of the header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// [`GRPC_TIMEOUT`] as a header name, so that lookups on every call skip parsing the name.
pub const GRPC_TIMEOUT_HEADER: http::HeaderName = http::HeaderName::from_static(GRPC_TIMEOUT);

/// The `grpc-status` header name (trailers-only answers carry it in the headers).
pub const GRPC_STATUS_HEADER: http::HeaderName = http::HeaderName::from_static("grpc-status");

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

/// [`encode`] straight into a header value, without formatting machinery (this runs on every
/// call).
pub fn encode_header(timeout: Duration) -> http::HeaderValue {
    let (value, unit) = value_and_unit(timeout);
    let mut buf = [0u8; 9];
    let mut start = 8;
    let mut rest = value;
    loop {
        start -= 1;
        // `rest % 10` is a single digit.
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 || start == 0 {
            break;
        }
    }
    buf[8] = unit;
    let mut value = http::HeaderValue::from_bytes(&buf[start..])
        .unwrap_or_else(|_| http::HeaderValue::from_static("99999999H"));
    // A value that changes with every call must not enter HPACK's dynamic table: it would evict
    // the stable headers (path, content-type, user-agent…), which then go out in full each time.
    // Sensitive values are sent as never-indexed literals.
    value.set_sensitive(true);
    value
}

/// The value (at most 8 digits) and unit letter of `timeout` (see [`encode`]).
fn value_and_unit(timeout: Duration) -> (u128, u8) {
    let nanos = timeout.as_nanos().max(1);
    let units: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    for (per_unit, unit) in units {
        let value = nanos.div_ceil(per_unit);
        if value <= MAX_DIGITS {
            return (value, unit);
        }
    }
    (MAX_DIGITS, b'H')
}

/// Writes `timeout` in the finest unit whose value fits in 8 digits (rounding up, so a callee never
/// sees a longer budget than the caller has; zero becomes `1n`, already expired in practice).
pub fn encode(timeout: Duration) -> String {
    let (value, unit) = value_and_unit(timeout);
    format!("{value}{}", char::from(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_encoding_matches_text_encoding() {
        for nanos in [
            0u64,
            1,
            9,
            10,
            99_999_999,
            100_000_000,
            7_500_000_000,
            u64::MAX,
        ] {
            let timeout = Duration::from_nanos(nanos);
            assert_eq!(
                encode_header(timeout).to_str().expect("ascii"),
                encode(timeout),
                "{timeout:?}"
            );
        }
        assert_eq!(
            encode_header(Duration::MAX).to_str().expect("ascii"),
            encode(Duration::MAX)
        );
    }

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
