//! Replay across the archive and the stream: what `XIBAAR_EVENTS` no longer holds is read
//! from the sealed segments, the rest from the stream, with the same filter and the same
//! output (each event's stored bytes, in sequence order) as a replay of a stream that never
//! dropped anything.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;
use xibaar_core::NotificationId;
use xibaar_streams::{
    names,
    replay::{self as stream_replay, Filter, ReplayError, Replayed},
};

use crate::store::{ArchiveStore, StoreError};

fn archive_error(e: StoreError) -> ReplayError {
    ReplayError::Nats(format!("reading the archive: {e}"))
}

fn nats(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Nats(e.to_string())
}

/// The stream's first sequence and the time of its first message.
async fn stream_start(
    js: &async_nats::jetstream::Context,
) -> Result<(u64, u64, DateTime<Utc>), ReplayError> {
    let mut stream = js.get_stream(names::EVENTS).await.map_err(nats)?;
    let state = stream.info().await.map_err(nats)?.state.clone();
    let first_time = DateTime::from_timestamp_nanos(
        i64::try_from(state.first_timestamp.unix_timestamp_nanos()).unwrap_or(0),
    );
    Ok((state.first_sequence, state.last_sequence, first_time))
}

/// [`stream_replay::replay`] reaching into `archive` for what the stream no longer holds.
/// Without an archive, or when the stream still holds everything asked for, it is exactly a
/// stream replay.
pub async fn replay(
    js: &async_nats::jetstream::Context,
    archive: Option<&ArchiveStore>,
    filter: &Filter,
    mut each: impl FnMut(Replayed) -> std::io::Result<()>,
    mut progress: impl FnMut(u64, u64, u64),
) -> Result<u64, ReplayError> {
    let Some(store) = archive else {
        return stream_replay::replay(js, filter, each, progress).await;
    };
    let (stream_first, head, stream_first_time) = stream_start(js).await?;
    let wanted_from = filter.from_sequence.unwrap_or(1);
    let stream_has_it = stream_first <= wanted_from.max(1)
        || filter.since.is_some_and(|since| since >= stream_first_time);
    if stream_has_it {
        return stream_replay::replay(js, filter, each, progress).await;
    }
    // The archive's part: the segments overlapping the range and time asked for.
    let mut next = wanted_from;
    let mut wanted = Vec::new();
    let mut until_reached = false;
    for entry in store.index(wanted_from).await.map_err(archive_error)? {
        if entry.first_sequence >= stream_first {
            break;
        }
        if filter.until.is_some_and(|until| entry.first_time > until) {
            // Nothing later is wanted, from the archive or the stream.
            until_reached = true;
            break;
        }
        if filter.since.is_some_and(|since| entry.last_time < since) {
            next = entry.last_sequence + 1;
            continue;
        }
        if entry.first_sequence > next {
            return Err(ReplayError::Nats(format!(
                "the archive has no events {next}..{} (run `xibaar archive verify`)",
                entry.first_sequence - 1
            )));
        }
        // The stream holds the rest of a segment that reaches into it.
        next = (entry.last_sequence + 1).min(stream_first);
        wanted.push(entry);
    }
    // The next segment is fetched, checked and decoded on another thread while this one is
    // written out.
    let mut segments = futures::stream::iter(wanted.into_iter().map(|entry| {
        let store = store.clone();
        tokio::spawn(async move {
            let records = store.read_segment(&entry).await;
            records.map(|records| (entry, records))
        })
    }))
    .buffered(2);
    let (mut read, mut matched) = (0u64, 0u64);
    let first_wanted = wanted_from;
    while let Some(fetched) = segments.next().await {
        let (entry, records) = fetched
            .map_err(|e| ReplayError::Nats(format!("reading the archive: {e}")))?
            .map_err(archive_error)?;
        for record in records {
            if record.sequence < first_wanted || record.sequence >= stream_first {
                continue;
            }
            read += 1;
            if !filter.selects(&record.subject, record.time) {
                continue;
            }
            let (selected, decoded) = filter.check(&record.payload);
            if selected {
                matched += 1;
                each(Replayed::new(record.sequence, record.payload, decoded)).map_err(nats)?;
            }
        }
        progress(read, entry.last_sequence, head);
    }
    if until_reached {
        return Ok(matched);
    }
    if next < stream_first {
        return Err(ReplayError::Nats(format!(
            "events {next}..{} are neither in the archive nor in the stream (run `xibaar archive verify`)",
            stream_first - 1
        )));
    }
    // The stream's part, from where the archive's ended.
    let rest = Filter {
        from_sequence: Some(next),
        ..filter.clone()
    };
    matched += stream_replay::replay(js, &rest, each, progress).await?;
    let (first_after, _, _) = stream_start(js).await?;
    if first_after > next {
        return Err(ReplayError::Nats(format!(
            "the stream dropped events from {next} while they were replayed; run the replay again"
        )));
    }
    Ok(matched)
}

/// Every event of one notification, from the archive and the stream. Ids are UUIDv7, so the
/// archive is read only from the segments stored since the notification was accepted.
pub async fn notification_timeline(
    js: &async_nats::jetstream::Context,
    archive: Option<&ArchiveStore>,
    id: NotificationId,
) -> Result<Vec<Value>, ReplayError> {
    let accepted = id.0.get_timestamp().map(|t| {
        let (secs, nanos) = t.to_unix();
        DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), nanos).unwrap_or_default()
    });
    let mut events = Vec::new();
    let filter = Filter {
        notification: Some(id),
        // A minute's slack for clocks: the id is minted by the api, the time by the stream.
        since: archive
            .and(accepted)
            .map(|t| t - chrono::Duration::minutes(1)),
        ..Filter::default()
    };
    replay(
        js,
        archive,
        &filter,
        |r| {
            events.push(r.into_event());
            Ok(())
        },
        |_, _, _| {},
    )
    .await?;
    Ok(events)
}
