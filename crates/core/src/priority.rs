use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How urgently a notification must reach phones. Ordered from most to least urgent, so
/// `Priority::Urgent < Priority::Low`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Safety notices (outages, disconnection warnings): never waits behind other work.
    Urgent,
    High,
    Normal,
    /// Bulk and marketing traffic.
    Low,
}

impl Priority {
    /// Every level, most urgent first: the order in which work is taken.
    pub const ALL: [Priority; 4] = [
        Priority::Urgent,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Position in [`Priority::ALL`].
    pub const fn rank(self) -> usize {
        self as usize
    }

    /// Name of the JetStream command stream for this level.
    pub const fn command_stream(self) -> &'static str {
        match self {
            Priority::Urgent => "XIBAAR_CMD_URGENT",
            Priority::High => "XIBAAR_CMD_HIGH",
            Priority::Normal => "XIBAAR_CMD_NORMAL",
            Priority::Low => "XIBAAR_CMD_LOW",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown priority `{0}`: expected urgent, high, normal or low")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPriority(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_from_their_names_and_order_most_urgent_first() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        }
        assert!(Priority::Urgent < Priority::High && Priority::Normal < Priority::Low);
        assert!("critical".parse::<Priority>().is_err());
    }
}
