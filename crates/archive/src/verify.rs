//! `xibaar archive verify`: every segment of a range read again and checked against its
//! manifest (checksum, count, first and last sequence, sequences in order), and the segments
//! checked to follow one another with no gap and no overlap.

use serde::Serialize;

use crate::store::{ArchiveStore, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub segments: u64,
    pub events: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    /// Sequence ranges no segment holds, between the first and the last one checked.
    pub gaps: Vec<(u64, u64)>,
    /// Segments starting at or before the end of the previous one.
    pub overlaps: Vec<(u64, u64)>,
    /// Segments (by first sequence) that failed a check, and why.
    pub damaged: Vec<(u64, String)>,
}

impl VerifyReport {
    pub fn is_sound(&self) -> bool {
        self.gaps.is_empty() && self.overlaps.is_empty() && self.damaged.is_empty()
    }
}

/// Verifies the segments holding `from..=to` (all when unbounded). `progress` hears each
/// segment's last sequence.
pub async fn verify(
    store: &ArchiveStore,
    from: Option<u64>,
    to: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let entries = store.index(from.unwrap_or(1)).await?;
    let mut previous_last: Option<u64> = None;
    for entry in entries {
        if to.is_some_and(|to| entry.first_sequence > to) {
            break;
        }
        match previous_last {
            Some(last) if entry.first_sequence > last + 1 => {
                report.gaps.push((last + 1, entry.first_sequence - 1));
            }
            Some(last) if entry.first_sequence <= last => {
                report
                    .overlaps
                    .push((entry.first_sequence, entry.last_sequence));
            }
            _ => {}
        }
        report.first_sequence.get_or_insert(entry.first_sequence);
        report.last_sequence = Some(entry.last_sequence);
        previous_last = Some(entry.last_sequence);
        report.segments += 1;
        let checked = match store.manifest(&entry).await {
            Ok(Some(manifest)) => match store.records(&manifest).await {
                Ok(records) => {
                    let contiguous =
                        manifest.count == manifest.last_sequence - manifest.first_sequence + 1;
                    report.events += records.len() as u64;
                    if contiguous {
                        Ok(())
                    } else {
                        Err(format!(
                            "holds {} events for sequences {}..{}",
                            manifest.count, manifest.first_sequence, manifest.last_sequence
                        ))
                    }
                }
                Err(StoreError::Damaged { source, .. }) => Err(source.to_string()),
                Err(e) => return Err(e),
            },
            Ok(None) => Err("its manifest is missing".to_owned()),
            Err(StoreError::Damaged { source, .. }) => Err(source.to_string()),
            Err(e) => return Err(e),
        };
        if let Err(why) = checked {
            report.damaged.push((entry.first_sequence, why));
        }
        progress(entry.last_sequence);
    }
    Ok(report)
}
