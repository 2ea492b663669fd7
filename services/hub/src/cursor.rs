//! Where a subscription is in the hub's streams: a Redis stream entry id ([`StreamId`]) per
//! stream, written as the opaque cursor a client resumes with (`tasks:1700000000000-0,…`).
//!
//! A cursor holds, for every stream, an id at or after the last event delivered from it and
//! before the next event the subscription would get from it. Resuming from it reads each stream
//! after its id: nothing missed, nothing twice. A stream the cursor does not name is read from
//! its start.

use std::fmt;
use std::str::FromStr;

/// A Redis stream entry id: milliseconds and a sequence number, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct StreamId {
    /// The entry's milliseconds part.
    pub ms: u64,
    /// The entry's sequence part.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a text is not a stream id or a cursor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CursorError(String);

impl FromStr for StreamId {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, CursorError> {
        let invalid = || CursorError(format!("{text:?} is not a stream id (<ms>-<seq>)"));
        let (ms, seq) = text.split_once('-').ok_or_else(invalid)?;
        let digits = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
        };
        Ok(Self {
            ms: digits(ms).ok_or_else(invalid)?,
            seq: digits(seq).ok_or_else(invalid)?,
        })
    }
}

/// A position in each of the hub's streams (see the [module](self)), in the order of
/// [`crate::STREAMS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    positions: Vec<(&'static str, StreamId)>,
}

impl Cursor {
    /// Every stream at `id`.
    pub fn at(streams: &[&'static str], id: StreamId) -> Self {
        Self {
            positions: streams.iter().map(|s| (*s, id)).collect(),
        }
    }

    /// The position in `stream` (`0-0` for a stream it does not hold).
    pub fn get(&self, stream: &str) -> StreamId {
        self.positions
            .iter()
            .find(|(name, _)| *name == stream)
            .map_or(StreamId::ZERO, |(_, id)| *id)
    }

    /// Moves the position in `stream` to `id` (a stream it does not hold is left alone).
    pub fn set(&mut self, stream: &str, id: StreamId) {
        if let Some((_, position)) = self.positions.iter_mut().find(|(name, _)| *name == stream) {
            *position = id;
        }
    }

    /// The streams and their positions.
    pub fn positions(&self) -> &[(&'static str, StreamId)] {
        &self.positions
    }

    /// Reads a client's cursor over `streams`: `name:id` pairs separated by commas, every one of
    /// `streams` once (a cursor the hub wrote names them all; one that left a stream out would
    /// read it from its start).
    pub fn parse(streams: &[&'static str], text: &str) -> Result<Self, CursorError> {
        let mut cursor = Self::at(streams, StreamId::ZERO);
        let mut seen = Vec::new();
        for part in text.split(',') {
            let (name, id) = part
                .split_once(':')
                .ok_or_else(|| CursorError(format!("{part:?} is not <stream>:<id>")))?;
            let stream = streams
                .iter()
                .find(|s| **s == name)
                .ok_or_else(|| CursorError(format!("no stream {name:?}")))?;
            if seen.contains(stream) {
                return Err(CursorError(format!("stream {name:?} is given twice")));
            }
            seen.push(*stream);
            cursor.set(stream, id.parse()?);
        }
        if let Some(missing) = streams.iter().find(|s| !seen.contains(s)) {
            return Err(CursorError(format!("stream {missing:?} is missing")));
        }
        Ok(cursor)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (stream, id)) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{stream}:{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STREAMS: [&str; 3] = ["tasks", "timetrack", "hub"];

    #[test]
    fn ids_order_as_redis_orders_them() {
        let a: StreamId = "1700000000000-5".parse().unwrap();
        let b: StreamId = "1700000000000-12".parse().unwrap();
        let c: StreamId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-12");
    }

    #[test]
    fn bad_ids_are_refused() {
        for text in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-1-1",
            "+1-0",
            "99999999999999999999-0",
        ] {
            assert!(text.parse::<StreamId>().is_err(), "{text}");
        }
    }

    #[test]
    fn a_cursor_reads_back_what_it_writes() {
        let mut cursor = Cursor::at(&STREAMS, StreamId::ZERO);
        cursor.set("timetrack", "17-3".parse().unwrap());
        let text = cursor.to_string();
        assert_eq!(text, "tasks:0-0,timetrack:17-3,hub:0-0");
        assert_eq!(Cursor::parse(&STREAMS, &text).unwrap(), cursor);
    }

    #[test]
    fn a_cursor_names_every_stream_in_any_order() {
        let cursor = Cursor::parse(&STREAMS, "hub:5-1,tasks:0-0,timetrack:2-0").unwrap();
        assert_eq!(cursor.get("hub"), StreamId { ms: 5, seq: 1 });
        assert_eq!(cursor.get("timetrack"), StreamId { ms: 2, seq: 0 });
    }

    #[test]
    fn bad_cursors_are_refused_with_the_reason() {
        for (text, reason) in [
            ("tasks", "is not <stream>:<id>"),
            ("orders:1-0", "no stream"),
            ("tasks:1-0,tasks:2-0", "given twice"),
            ("tasks:x", "is not a stream id"),
            ("tasks:1-0,hub:2-0", "stream \"timetrack\" is missing"),
        ] {
            let err = Cursor::parse(&STREAMS, text).unwrap_err();
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
    }
}
