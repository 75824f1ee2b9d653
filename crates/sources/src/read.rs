//! Reading a source's batches: each row built into what it becomes as it arrives, and the
//! batches of a backlog read ahead while the ones before them are stored.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    emit::{self, Origin},
    plan::Plan,
    row::Row,
    sql::{self, Connection, SqlError},
};

/// A batch's rows, and what each becomes when that was built as it was read (empty: read
/// through without sending, at a first start).
pub(crate) type Read = (Vec<Row>, Vec<Built>);
pub(crate) type Built = Result<emit::Emitted, String>;

/// Rows built together by one task while the read goes on.
const BUILD_CHUNK: usize = 250;

/// Rows a building task builds before it lets other tasks run: about 40 µs of work.
const BUILD_TURN: usize = 32;

/// Up to a batch of rows above `after`. When `build`, what each becomes is built as the rows
/// arrive, a chunk at a time by tasks of their own, so that building (templates, validation,
/// JSON: more than reading a row costs) runs on the other core while the read goes on.
///
/// The tasks run on the runtime's workers, yielding every [`BUILD_TURN`] rows, not on the
/// blocking pool: there up to ten threads built at once, crowding the read and the stores of
/// the same two cores, and the source turned 10 % fewer rows a second into notifications
/// (docs/benchmarks.md).
pub(crate) async fn read(
    plan: &Arc<Plan>,
    client: &mut Connection,
    after: &[i64],
    timeout: Duration,
    build: bool,
) -> Result<Read, SqlError> {
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut chunk = Vec::new();
    let mut building = Vec::new();
    let mut hand_over = |chunk: Vec<Row>| {
        let plan = plan.clone();
        building.push(tokio::spawn(async move {
            let mut built = Vec::with_capacity(chunk.len());
            let mut builder = emit::Builder::new(&plan, now);
            for rows in chunk.chunks(BUILD_TURN) {
                built.extend(rows.iter().map(|row| builder.build(row)));
                tokio::task::yield_now().await;
            }
            (chunk, built)
        }));
    };
    sql::fetch_each(
        client,
        &plan.statement,
        plan.batch_size,
        after,
        timeout,
        |row| {
            if !build {
                rows.push(row);
                return;
            }
            chunk.push(row);
            if chunk.len() == BUILD_CHUNK {
                hand_over(std::mem::take(&mut chunk));
            }
        },
    )
    .await?;
    if !build {
        return Ok((rows, Vec::new()));
    }
    if !chunk.is_empty() {
        hand_over(chunk);
    }
    let mut built = Vec::new();
    for part in building {
        let (part_rows, part_built) = match part.await {
            Ok(part) => part,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime is shutting down.
            Err(e) => {
                return Err(SqlError::io(
                    "building rows",
                    std::io::Error::new(std::io::ErrorKind::Interrupted, e),
                ));
            }
        };
        rows.extend(part_rows);
        built.extend(part_built);
    }
    Ok((rows, built))
}

/// Batches read ahead by a task that holds the connection meanwhile: while one batch is
/// stored, the next one waits, read, and the one after it is being read. Storing a batch (its
/// pages written by nats-server one after another) and reading one take about as long, and
/// each varies from batch to batch: with one batch read ahead, every batch waited for the
/// slower of the two (6–16 % fewer rows a second, docs/benchmarks.md).
pub(crate) struct ReadAhead {
    batches: mpsc::Receiver<Result<Read, SqlError>>,
    /// Ends after a batch that is not full, an error, or when the batches are no longer
    /// wanted, giving the connection back.
    reader: JoinHandle<Connection>,
}

impl ReadAhead {
    /// Reads full batches from `from` on, one after another, until one is not full.
    pub(crate) fn start(
        plan: Arc<Plan>,
        mut connection: Connection,
        from: Vec<i64>,
        timeout: Duration,
    ) -> Self {
        let (sender, batches) = mpsc::channel(1);
        let reader = tokio::spawn(async move {
            let mut from = from;
            loop {
                let batch = read(&plan, &mut connection, &from, timeout, true).await;
                let next = match &batch {
                    Ok((rows, _)) if rows.len() >= plan.batch_size as usize => {
                        let columns = plan.columns.as_ref().expect("bound when reading");
                        rows.last()
                            .and_then(|last| Origin::of(last, columns).ok())
                            .map(|last| last.watermark)
                    }
                    _ => None,
                };
                if sender.send(batch).await.is_err() {
                    break;
                }
                match next {
                    Some(next) => from = next,
                    None => break,
                }
            }
            connection
        });
        Self { batches, reader }
    }

    /// The next batch, and the reader when that batch was full (it goes on with the one after
    /// it). After the reader's last batch the connection is back in `client` (`None` when the
    /// reader could not give it back: the caller opens another).
    pub(crate) async fn take(
        mut self,
        batch_size: u32,
        client: &mut Option<Connection>,
    ) -> (Result<Read, SqlError>, Option<Self>) {
        match self.batches.recv().await {
            Some(Ok(read)) if read.0.len() >= batch_size as usize => (Ok(read), Some(self)),
            batch => {
                drop(self.batches);
                *client = self.reader.await.ok();
                let batch = batch.unwrap_or_else(|| {
                    Err(SqlError::io(
                        "reading ahead",
                        std::io::Error::other("the reader ended without a batch"),
                    ))
                });
                (batch, None)
            }
        }
    }
}
