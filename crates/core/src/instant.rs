//! Instants written as chrono's serde writes them, remembered for the last two instants
//! written on the thread: a source's batch accepts all its rows at one instant (and so gives
//! them one expiry), and writing an instant through chrono's formatter was an eighth of
//! encoding a notification.

use std::cell::RefCell;

use chrono::{DateTime, SecondsFormat, Utc};

/// An instant and its text.
type Written = Option<(DateTime<Utc>, String)>;

thread_local! {
    /// The two last instants written, the newer first.
    static LAST: RefCell<[Written; 2]> = const { RefCell::new([None, None]) };
}

pub(crate) fn serialize<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    with_text(at, |text| serializer.serialize_str(text))
}

/// `f` given `at` as chrono's serde writes it (without quotes).
pub(crate) fn with_text<R>(at: &DateTime<Utc>, f: impl FnOnce(&str) -> R) -> R {
    LAST.with_borrow_mut(|last| {
        let written = |slot: &Written| slot.as_ref().is_some_and(|(written, _)| written == at);
        if written(&last[1]) {
            last.swap(0, 1);
        } else if !written(&last[0]) {
            last[1] = last[0].take();
            last[0] = Some((*at, at.to_rfc3339_opts(SecondsFormat::AutoSi, true)));
        }
        let (_, text) = last[0].as_ref().expect("just written");
        f(text)
    })
}

/// [`serialize`] for an optional instant (skipped when `None` by the field's
/// `skip_serializing_if`).
pub(crate) fn serialize_option<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn an_instant_is_written_as_chronos_serde_writes_it() {
        #[derive(serde::Serialize)]
        struct Written(#[serde(serialize_with = "super::serialize")] chrono::DateTime<chrono::Utc>);
        #[derive(serde::Serialize)]
        struct Maybe(
            #[serde(serialize_with = "super::serialize_option")]
            Option<chrono::DateTime<chrono::Utc>>,
        );
        let instants = [
            (0, 0),
            (1_764_812_989, 331_665_242),
            (1_764_812_989, 331_000_000),
            (1_764_812_989, 331_665_000),
            (1_764_812_989, 1),
            (-62_135_596_800, 0),
            (253_402_300_799, 999_999_999),
        ]
        .map(|(seconds, nanos)| chrono::Utc.timestamp_opt(seconds, nanos).unwrap());
        // Each instant twice in a row, then alternating with the next and the one after it:
        // written, remembered, and remembered in either slot.
        let order = (0..instants.len()).flat_map(|i| {
            [
                i,
                i,
                (i + 1) % instants.len(),
                i,
                (i + 2) % instants.len(),
                i,
            ]
        });
        for i in order {
            let at = instants[i];
            assert_eq!(
                serde_json::to_string(&Written(at)).unwrap(),
                serde_json::to_string(&at).unwrap()
            );
            assert_eq!(
                serde_json::to_string(&Maybe(Some(at))).unwrap(),
                serde_json::to_string(&Some(at)).unwrap()
            );
        }
        assert_eq!(serde_json::to_string(&Maybe(None)).unwrap(), "null");
    }
}
