//! What the customer system knows of a customer that an audience may select by.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::language::Language;

/// Longest commune or zone name.
pub const MAX_ATTRIBUTE_CHARS: usize = 100;

/// How a customer pays for electricity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Contract {
    /// A prepaid meter (credit bought ahead).
    Prepaid,
    /// A bill after use.
    Postpaid,
}

impl Contract {
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::Prepaid => "prepaid",
            Contract::Postpaid => "postpaid",
        }
    }

    /// As the customer system may write it: `prepaid`, `PREPAID`, `prépayé`, `Woyofal` (the
    /// prepaid meter's name in Senegal), `postpaid`, `postpayé`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_lowercase().as_str() {
            "prepaid" | "prépayé" | "prepaye" | "prepayé" | "woyofal" => Some(Contract::Prepaid),
            "postpaid" | "postpayé" | "postpaye" => Some(Contract::Postpaid),
            _ => None,
        }
    }
}

/// A customer's attributes as the customer system holds them; `None` where it holds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commune: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<Contract>,
    /// The customer's preferred language: their inbox reads it before their device's locale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contracts_are_read_as_the_customer_system_writes_them() {
        for (text, contract) in [
            ("PREPAID", Some(Contract::Prepaid)),
            (" Woyofal ", Some(Contract::Prepaid)),
            ("prépayé", Some(Contract::Prepaid)),
            ("Postpayé", Some(Contract::Postpaid)),
            ("monthly", None),
        ] {
            assert_eq!(Contract::parse(text), contract, "{text}");
        }
    }
}
