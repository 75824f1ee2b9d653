//! Dead letters: a message that cannot be processed is copied to `XIBAAR_DLQ` under
//! `xibaar.dlq.<original subject>` with the reason, then acknowledged at its source.

use async_nats::jetstream::{self, context::PublishError};
use xibaar_core::subject;

/// Header names on a dead letter.
pub const REASON: &str = "Xibaar-Dlq-Reason";
pub const ORIGINAL_SUBJECT: &str = "Xibaar-Original-Subject";
pub const ORIGINAL_SEQUENCE: &str = "Xibaar-Original-Sequence";
pub const ORIGINAL_STREAM: &str = "Xibaar-Original-Stream";
/// The original message's `Xibaar-Type` (delivery_job, topic_job, send_notification).
pub const ORIGINAL_TYPE: &str = "Xibaar-Original-Type";

/// Stores `message` in the DLQ and waits until JetStream has it. Deduplicated per source
/// stream and sequence, so a retried call parks one copy.
pub async fn dead_letter(
    js: &jetstream::Context,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), PublishError> {
    let kind = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Xibaar-Type"))
        .map(|v| v.as_str().to_owned());
    park(
        js,
        message,
        Parked {
            subject: &message.subject,
            kind: kind.as_deref(),
            payload: message.payload.clone(),
            part: None,
        },
        reason,
    )
    .await
}

/// What is parked of a message: the whole of it, or one part taken from it (a device of a page
/// of delivery jobs, as a job of its own).
pub struct Parked<'a> {
    /// The subject it is retried on.
    pub subject: &'a str,
    /// Its `Xibaar-Type`.
    pub kind: Option<&'a str>,
    pub payload: bytes::Bytes,
    /// Which part of the message, when it is one: keeps the parts' dead letters apart.
    pub part: Option<usize>,
}

/// Stores `parked`, taken from `message`, in the DLQ and waits until JetStream has it.
/// Deduplicated per source stream, sequence and part.
pub async fn park(
    js: &jetstream::Context,
    message: &jetstream::Message,
    parked: Parked<'_>,
    reason: &str,
) -> Result<(), PublishError> {
    let (stream, sequence) = message
        .info()
        .map(|i| (i.stream.to_owned(), i.stream_sequence))
        .unwrap_or_default();
    // The dead letter stays in the trace of the message it holds.
    let traceparent = match message
        .headers
        .as_ref()
        .and_then(|h| h.get(crate::trace::TRACEPARENT))
    {
        Some(tp) => Some(tp.as_str().to_owned()),
        None => crate::trace::current_traceparent(),
    };
    let id = match parked.part {
        Some(part) => format!("dlq:{stream}:{sequence}:{part}"),
        None => format!("dlq:{stream}:{sequence}"),
    };
    let mut headers = crate::traced_headers(&id, "dead_letter", traceparent.as_deref());
    headers.insert(REASON, reason);
    headers.insert(ORIGINAL_SUBJECT, parked.subject);
    headers.insert(ORIGINAL_STREAM, stream.as_str());
    headers.insert(ORIGINAL_SEQUENCE, sequence.to_string().as_str());
    if let Some(kind) = parked.kind {
        headers.insert(ORIGINAL_TYPE, kind);
    }
    metrics::counter!("xibaar_dlq_messages_total", "stream" => stream).increment(1);
    js.publish_with_headers(
        subject::dead_letter(parked.subject),
        headers,
        parked.payload,
    )
    .await?
    .await?;
    Ok(())
}
