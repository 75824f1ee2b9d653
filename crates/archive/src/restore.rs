//! `xibaar archive restore`: a range of the archive written back into `XIBAAR_EVENTS` (a fresh
//! cluster after a disaster, or a stream whose volume was lost), each message at its original
//! sequence with its original subject, headers (`Nats-Msg-Id` included) and bytes.
//!
//! Keeping the sequences is what makes a restore safe to repeat and safe for the read
//! models: each message is published with `Nats-Expected-Last-Sequence` = its sequence − 1, so
//! it lands exactly where it was or not at all; messages the stream already holds are
//! skipped; the projector's checkpoint (a sequence) stays true, so nothing is applied twice.
//! An empty stream is first moved to the range's first sequence (a purge up to it).

use async_nats::jetstream;
use futures::StreamExt;
use serde::Serialize;
use xibaar_streams::names;

use crate::store::ArchiveStore;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub restored: u64,
    /// Already in the stream at their sequence.
    pub already_there: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
}

/// Messages published before their acknowledgements are awaited (in order, on one
/// connection, so the expected sequences hold).
const WINDOW: usize = 256;

pub async fn restore(
    js: &jetstream::Context,
    store: &ArchiveStore,
    from: u64,
    to: Option<u64>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<RestoreReport> {
    let mut stream = js.get_stream(names::EVENTS).await?;
    let state = stream.info().await?.state.clone();
    let mut last = state.last_sequence;
    let mut report = RestoreReport::default();
    let entries = store.index(from).await?;
    for entry in entries {
        if to.is_some_and(|to| entry.first_sequence > to) {
            break;
        }
        let records = store.read_segment(&entry).await?;
        let mut acks = futures::stream::FuturesOrdered::new();
        for record in records {
            if record.sequence < from || to.is_some_and(|to| record.sequence > to) {
                continue;
            }
            if record.sequence <= last {
                report.already_there += 1;
                continue;
            }
            if record.sequence != last + 1 {
                let empty = stream.info().await?.state.messages == 0 && acks.is_empty();
                anyhow::ensure!(
                    empty,
                    "XIBAAR_EVENTS ends at sequence {last}; restoring from {} would leave a gap \
                     (restore from {} first)",
                    record.sequence,
                    last + 1
                );
                // An empty stream starts where the range starts.
                stream.purge().sequence(record.sequence).await?;
            }
            let mut headers = record.header_map();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                (record.sequence - 1).to_string().as_str(),
            );
            let ack = js
                .publish_with_headers(record.subject.clone(), headers, record.payload.clone())
                .await?;
            acks.push_back(async move { (record.sequence, ack.await) });
            last = record.sequence;
            report.first_sequence.get_or_insert(record.sequence);
            report.last_sequence = Some(record.sequence);
            if acks.len() >= WINDOW {
                settle(acks.next().await, &mut report)?;
            }
        }
        while let Some(done) = acks.next().await {
            settle(Some(done), &mut report)?;
        }
        progress(entry.last_sequence);
    }
    Ok(report)
}

fn settle(
    done: Option<(
        u64,
        Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    )>,
    report: &mut RestoreReport,
) -> anyhow::Result<()> {
    let Some((sequence, ack)) = done else {
        return Ok(());
    };
    let ack = ack.map_err(|e| anyhow::anyhow!("restoring sequence {sequence}: {e}"))?;
    anyhow::ensure!(
        !ack.duplicate && ack.sequence == sequence,
        "restoring sequence {sequence}: the stream stored it at {} (duplicate: {}); its \
         Nats-Msg-Id is still in the duplicate window of another message",
        ack.sequence,
        ack.duplicate
    );
    report.restored += 1;
    Ok(())
}
