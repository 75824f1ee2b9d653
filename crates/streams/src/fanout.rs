//! What `XIBAAR_FANOUT/<notification>` holds, shared by the dispatcher (progress) and the api
//! (cancellation).

/// The value under `XIBAAR_FANOUT/<notification>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The last device whose job is stored; the next page starts after it. `None`: the fan-out
    /// has claimed the notification and stored nothing yet.
    pub after: Option<xibaar_core::DeviceId>,
    /// That device's customer (device ids are unique within a customer only). Absent in
    /// progress recorded before devices belonged to their customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_customer: Option<xibaar_core::CustomerId>,
    /// Devices whose jobs are stored so far (not counting `pages`).
    pub published: u64,
    /// The pages after `after` that may be stored already, each by its last device: a fan-out
    /// resumed from here publishes those same pages again (same ids, so JetStream drops the
    /// stored ones) before it reads on. Absent in progress recorded by versions that stored one
    /// job per device: the page after `after` may then hold such jobs, and is published in that
    /// shape again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<Vec<PageEnd>>,
}

/// The last device of a page of delivery jobs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageEnd {
    pub device_id: xibaar_core::DeviceId,
    pub customer_id: xibaar_core::CustomerId,
}

/// What `XIBAAR_FANOUT/<notification>` holds: the fan-out's progress, or the api's record that
/// the notification was canceled before any fan-out claimed it. Both are written with
/// create-if-absent, so exactly one of the two wins.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum FanOutState {
    Canceled {
        canceled_at: chrono::DateTime<chrono::Utc>,
        by: String,
    },
    Progress(Progress),
}

impl FanOutState {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("fan-out state serializes")
            .into()
    }
}
