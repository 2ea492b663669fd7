//! The scoring rule: score = urgency × impact, each 1..10; level CRITICAL ≥ 80, HIGH ≥ 50,
//! MEDIUM ≥ 20, else LOW.

use crate::proto::protomesh::priority::v1::Level;

/// Lowest accepted urgency or impact.
pub const MIN_FACTOR: i32 = 1;
/// Highest accepted urgency or impact.
pub const MAX_FACTOR: i32 = 10;

/// A factor of the score outside `MIN_FACTOR..=MAX_FACTOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScoringError {
    /// Urgency out of range.
    #[error("must be between 1 and 10, got {0}")]
    Urgency(i32),
    /// Impact out of range.
    #[error("must be between 1 and 10, got {0}")]
    Impact(i32),
}

impl ScoringError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Urgency(_) => "urgency",
            Self::Impact(_) => "impact",
        }
    }
}

/// A task's score and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scored {
    /// Urgency, 1..10.
    pub urgency: i32,
    /// Impact, 1..10.
    pub impact: i32,
    /// urgency × impact, 1..100.
    pub score: i32,
    /// The level of the score.
    pub level: Level,
}

impl Scored {
    /// Scores `urgency` and `impact`, or lists every factor out of range.
    pub fn new(urgency: i32, impact: i32) -> Result<Self, Vec<ScoringError>> {
        let mut errors = Vec::new();
        if !(MIN_FACTOR..=MAX_FACTOR).contains(&urgency) {
            errors.push(ScoringError::Urgency(urgency));
        }
        if !(MIN_FACTOR..=MAX_FACTOR).contains(&impact) {
            errors.push(ScoringError::Impact(impact));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let score = urgency * impact;
        Ok(Self {
            urgency,
            impact,
            score,
            level: level_of(score),
        })
    }

    /// One line saying how the score and level came about.
    pub fn reason(&self) -> String {
        let (name, floor) = match self.level {
            Level::Critical => ("CRITICAL", "≥ 80"),
            Level::High => ("HIGH", "≥ 50"),
            Level::Medium => ("MEDIUM", "≥ 20"),
            Level::Low | Level::Unspecified => ("LOW", "< 20"),
        };
        format!(
            "urgency {} × impact {} = {} → {name} ({floor})",
            self.urgency, self.impact, self.score
        )
    }
}

/// The level of a score.
pub fn level_of(score: i32) -> Level {
    match score {
        s if s >= 80 => Level::Critical,
        s if s >= 50 => Level::High,
        s if s >= 20 => Level::Medium,
        _ => Level::Low,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_boundaries() {
        assert_eq!(level_of(100), Level::Critical);
        assert_eq!(level_of(80), Level::Critical);
        assert_eq!(level_of(79), Level::High);
        assert_eq!(level_of(50), Level::High);
        assert_eq!(level_of(49), Level::Medium);
        assert_eq!(level_of(20), Level::Medium);
        assert_eq!(level_of(19), Level::Low);
        assert_eq!(level_of(1), Level::Low);
    }

    #[test]
    fn every_valid_pair_scores_its_product() {
        for urgency in MIN_FACTOR..=MAX_FACTOR {
            for impact in MIN_FACTOR..=MAX_FACTOR {
                let scored = Scored::new(urgency, impact).expect("in range");
                assert_eq!(scored.score, urgency * impact);
                assert_eq!(scored.level, level_of(urgency * impact));
            }
        }
    }

    #[test]
    fn out_of_range_factors_are_each_reported() {
        assert_eq!(Scored::new(0, 5), Err(vec![ScoringError::Urgency(0)]));
        assert_eq!(Scored::new(5, 11), Err(vec![ScoringError::Impact(11)]));
        assert_eq!(
            Scored::new(-1, 100),
            Err(vec![ScoringError::Urgency(-1), ScoringError::Impact(100)])
        );
    }

    #[test]
    fn reason_reads_as_one_line() {
        let scored = Scored::new(5, 4).expect("in range");
        assert_eq!(scored.reason(), "urgency 5 × impact 4 = 20 → MEDIUM (≥ 20)");
        let low = Scored::new(1, 1).expect("in range");
        assert_eq!(low.reason(), "urgency 1 × impact 1 = 1 → LOW (< 20)");
    }
}
