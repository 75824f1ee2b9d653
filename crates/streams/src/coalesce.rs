//! Publishes from many tasks, handed to the NATS connection together.
//!
//! The NATS client writes whatever is queued each time its connection task runs. On a busy
//! multi-threaded runtime a task that publishes wakes that connection task, which then runs
//! right after it (Tokio's next-task slot): one socket write, and one read on the server, per
//! message. Here the publishes of every task that is ready in the same scheduler round are
//! queued back to back instead, so they leave in one write. The round trip to JetStream and its
//! acknowledgement are unchanged: a caller still gets its own ack, or its own error.

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishError, PublishErrorKind},
        publish::PublishAck,
    },
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// At most this many publishes go to the connection in one round.
const ROUND: usize = 256;

struct Job {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    queued: oneshot::Sender<Result<PublishAckFuture, PublishError>>,
}

/// A cloneable handle; the task that queues the publishes ends when the last handle is dropped.
#[derive(Clone)]
pub struct CoalescingPublisher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for CoalescingPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescingPublisher")
            .finish_non_exhaustive()
    }
}

impl CoalescingPublisher {
    /// Starts the queueing task on the current runtime.
    pub fn spawn(js: jetstream::Context) -> Self {
        let (jobs, receiver) = mpsc::channel(4 * ROUND);
        tokio::spawn(queue_rounds(js, receiver));
        Self { jobs }
    }

    /// Queues one publish; the returned future resolves to JetStream's ack, exactly as
    /// [`jetstream::Context::publish_with_headers`] does.
    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        let (queued, answer) = oneshot::channel();
        let job = Job {
            subject,
            headers,
            payload,
            queued,
        };
        if self.jobs.send(job).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl CoalescingPublisher {
    /// [`crate::publish_event`] through this publisher: waits until `XIBAAR_EVENTS` has stored
    /// the event.
    pub async fn publish_event(
        &self,
        envelope: &xibaar_core::EventEnvelope,
    ) -> Result<PublishAck, PublishError> {
        self.publish(
            envelope.subject(),
            crate::event_headers(envelope),
            crate::publish::event_payload(envelope)?,
        )
        .await?
        .await
    }
}

impl CoalescingPublisher {
    /// Publishes until JetStream confirms the store or `within` has passed, retrying what
    /// passes by itself: no stream found for the subject and timeouts (a stream's leader being
    /// elected after a node was lost), a broken connection (the client moving to another
    /// node), the ack window full. Only for messages JetStream deduplicates (a `Nats-Msg-Id`),
    /// or whose repetition is harmless: a retry may follow a store whose ack was lost.
    pub async fn publish_stored(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        within: std::time::Duration,
    ) -> Result<PublishAck, PublishError> {
        crate::retry::within(within, passes, || async {
            self.publish(subject.clone(), headers.clone(), payload.clone())
                .await?
                .await
        })
        .await
        .map_err(|e| e.unwrap_or_else(|| PublishError::new(PublishErrorKind::TimedOut)))
    }

    /// [`CoalescingPublisher::publish_stored`] of an event (its id is its `Nats-Msg-Id`).
    pub async fn publish_event_stored(
        &self,
        envelope: &xibaar_core::EventEnvelope,
        within: std::time::Duration,
    ) -> Result<PublishAck, PublishError> {
        self.publish_stored(
            envelope.subject(),
            crate::event_headers(envelope),
            crate::publish::event_payload(envelope)?,
            within,
        )
        .await
    }
}

/// Whether a failed publish may succeed when tried again shortly.
fn passes(e: &PublishError) -> bool {
    matches!(
        e.kind(),
        PublishErrorKind::StreamNotFound
            | PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending
    )
}

fn stopped() -> PublishError {
    PublishError::with_source(
        PublishErrorKind::Other,
        "the publishing task has stopped".to_owned(),
    )
}

async fn queue_rounds(js: jetstream::Context, mut receiver: mpsc::Receiver<Job>) {
    let mut round = Vec::with_capacity(ROUND);
    while receiver.recv_many(&mut round, ROUND).await > 0 {
        // Let every other task that is ready now run first: those about to publish join this
        // round. With nothing else ready this returns at once.
        tokio::task::yield_now().await;
        while round.len() < ROUND {
            match receiver.try_recv() {
                Ok(job) => round.push(job),
                Err(_) => break,
            }
        }
        // No await point between the publishes but the client's bounded queue and ack window:
        // the connection task, woken by the first, finds the whole round queued.
        for job in round.drain(..) {
            let queued = js
                .publish_with_headers(job.subject, job.headers, job.payload)
                .await;
            // A caller that gave up (timed out) no longer waits for its ack.
            let _ = job.queued.send(queued);
        }
    }
}
