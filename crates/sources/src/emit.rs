//! What is stored of the rows: the notifications of neighbouring rows as one
//! `SendNotifications` page, events on their own, rejected rows as dead letters. A row's name
//! ([`Origin`]) is its source, key and watermark; the ids of what it becomes derive from it, so
//! that reading the row again yields the same notification. Rows are built in `build`.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use xibaar_core::{NotificationId, SendNotification, page::PageShared};

pub use crate::build::{Builder, Emitted, emit};
use crate::{
    plan::{Columns, Plan},
    row::Row,
};

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
    /// For a page of notifications: its priority and notification ids (a recovery looks for
    /// the stored page).
    pub page: Option<(xibaar_core::Priority, Vec<NotificationId>)>,
}

/// A notification and its JSON, encoded where it was built (on any core), so that a page is
/// put together by copying bytes.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub id: NotificationId,
    pub priority: xibaar_core::Priority,
    /// The start of its entry in a page: its own fields ([`SendNotification::write_page_entry`]).
    pub start: Vec<u8>,
    /// Its values of the fields a page may state once; the notifications built together share
    /// them ([`Builder`]).
    pub own: Arc<PageShared>,
}

impl Encoded {
    pub fn of(send: SendNotification) -> Self {
        // Into a buffer of a typical notification's size, not one grown from empty.
        let mut start = Vec::with_capacity(512);
        send.write_page_entry(&mut start);
        Self {
            id: send.notification_id,
            priority: send.priority,
            start,
            own: Arc::new(PageShared::from(send)),
        }
    }
}

/// The most notifications one page carries: a few hundred kilobytes at most (a notification's
/// content is bounded by FCM's 4 KB), well within NATS's 1 MB payload.
pub const PAGE_ROWS: usize = 100;

/// How many notifications go in a page of a source sending at most `max_rate` a second: a
/// tenth of a second's worth, so a paced source still sends smoothly.
pub fn page_rows(max_rate: Option<u32>) -> usize {
    max_rate.map_or(PAGE_ROWS, |rate| (rate as usize / 10).clamp(1, PAGE_ROWS))
}

/// The stored message of a page of notifications of one priority (`None` if empty or mixed):
/// the bytes `serde_json` writes for the page's `Command` (the test below holds the two to the
/// same bytes), put together from the notifications' own. What they all share is stated once
/// unless `whole` (a dispatcher that reads only whole notifications is running).
pub fn page(notifications: Vec<Encoded>, whole: bool) -> Option<Message> {
    let (first, last) = (notifications.first()?, notifications.last()?);
    if notifications.iter().any(|n| n.priority != first.priority) {
        return None;
    }
    let shared = if whole {
        PageShared::default()
    } else {
        PageShared::common(notifications.iter().map(|n| n.own.as_ref()))
    };
    let mut payload = Vec::with_capacity(
        256 + notifications
            .iter()
            .map(|n| n.start.len() + 160)
            .sum::<usize>(),
    );
    xibaar_core::page::write_page(
        &mut payload,
        &shared,
        notifications
            .iter()
            .map(|n| (n.start.as_slice(), n.own.as_ref())),
    );
    let msg_id = xibaar_core::command::page_msg_id(first.id, last.id, notifications.len());
    Some(Message {
        subject: xibaar_core::subject::command(first.priority, first.id),
        headers: xibaar_streams::headers(&msg_id, xibaar_core::command::PAGE_TYPE),
        payload: Bytes::from(payload),
        page: Some((first.priority, notifications.iter().map(|n| n.id).collect())),
    })
}

/// A row's place: its key and watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub key: String,
    pub watermark: Vec<i64>,
}

impl Origin {
    pub fn of(row: &Row, columns: &Columns) -> Result<Self, String> {
        let watermark = watermark(row, columns).collect::<Result<Vec<_>, _>>()?;
        // A NULL key reads as empty: the row is rejected by `message`, not the batch.
        Ok(Self {
            key: row.0[columns.key].text().into_owned(),
            watermark,
        })
    }

    /// `<source>/<key>/<watermark>`: the name of this version of the row.
    pub fn name(&self, source: &str) -> String {
        let mut name = String::with_capacity(source.len() + self.key.len() + 24);
        push_name(
            &mut name,
            source,
            &self.key,
            self.watermark.iter().map(|w| Ok(*w)),
        )
        .expect("a watermark of integers");
        name
    }

    /// The [`Origin::name`] of `row`, at the end of `out`, without making its origin: whether
    /// its key is empty, or [`Origin::of`]'s error.
    pub fn write_name(
        row: &Row,
        columns: &Columns,
        source: &str,
        out: &mut String,
    ) -> Result<bool, String> {
        let key = row.0[columns.key].text();
        push_name(out, source, &key, watermark(row, columns))?;
        Ok(key.is_empty())
    }
}

/// The values of `row`'s watermark columns, each an integer or the error naming its column.
fn watermark<'r>(
    row: &'r Row,
    columns: &'r Columns,
) -> impl Iterator<Item = Result<i64, String>> + 'r {
    columns.watermark.iter().map(|i| {
        let value = &row.0[*i];
        value.as_i64().ok_or_else(|| {
            format!(
                "watermark column `{}` holds {}, not an integer",
                columns.names[*i],
                value.kind()
            )
        })
    })
}

fn push_name(
    out: &mut String,
    source: &str,
    key: &str,
    watermark: impl Iterator<Item = Result<i64, String>>,
) -> Result<(), String> {
    out.push_str(source);
    out.push('/');
    out.push_str(key);
    out.push('/');
    for (i, w) in watermark.enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(itoa::Buffer::new().format(w?));
    }
    Ok(())
}

/// The time of a row (for the lag), when the source names a time column.
pub fn row_time(columns: &Columns, row: &Row) -> Option<DateTime<Utc>> {
    let index = columns.time?;
    row.0[index].as_datetime().ok().map(|t| t.and_utc())
}

/// A rejected row as a dead letter: `xibaar.dlq.source.<source>`, the reason in its headers,
/// the row's columns as JSON; its id is the row's version, so a row rejected again is kept once.
pub fn dead_letter(
    plan: &Plan,
    columns: &Columns,
    row: &Row,
    origin: &Origin,
    reason: &str,
) -> (String, async_nats::HeaderMap, Bytes) {
    use xibaar_streams::dlq;
    let original = format!("source.{}", plan.name);
    let mut headers =
        xibaar_streams::headers(&format!("dlq:{}", origin.name(&plan.name)), "dead_letter");
    headers.insert(dlq::REASON, reason);
    headers.insert(dlq::ORIGINAL_SUBJECT, original.as_str());
    headers.insert(dlq::ORIGINAL_STREAM, "source");
    headers.insert(dlq::ORIGINAL_TYPE, "source_row");
    let values: serde_json::Map<String, serde_json::Value> = columns
        .names
        .iter()
        .zip(&row.0)
        .map(|(n, v)| (n.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect();
    let payload = serde_json::json!({
        "source": plan.name,
        "key": origin.key,
        "watermark": origin.watermark,
        "reason": reason,
        "row": values,
    });
    (
        xibaar_core::subject::dead_letter(&original),
        headers,
        Bytes::from(serde_json::to_vec(&payload).expect("a row serializes")),
    )
}

#[cfg(test)]
mod tests {
    use xibaar_core::{
        Actor, Audience, Command, CustomerId, Priority,
        notification::{Content, DeliveryOptions},
    };

    use super::*;

    fn send(i: u128, priority: Priority) -> SendNotification {
        SendNotification {
            notification_id: NotificationId(uuid::Uuid::from_u128(i)),
            priority,
            audience: Audience::Customers {
                customer_ids: vec![CustomerId::parse(format!("c{i}")).unwrap()],
            },
            content: Content {
                title: format!("Facture n° {i}"),
                body: "Votre facture \"spéciale\" est à régler.".into(),
                ..Default::default()
            },
            category: None,
            idempotency_key: None,
            delivery: DeliveryOptions::default(),
            requested_by: Actor::system("source:bills"),
            accepted_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_rows_name_is_its_source_key_and_watermark() {
        // Notification ids derive from it: it never changes.
        let origin = Origin {
            key: "B-42".into(),
            watermark: vec![7, -1, 1_700_000_000_123],
        };
        assert_eq!(origin.name("bills"), "bills/B-42/7.-1.1700000000123");
        let one = Origin {
            key: "9".into(),
            watermark: vec![i64::MIN],
        };
        assert_eq!(one.name("s"), "s/9/-9223372036854775808");
    }

    #[test]
    fn a_rows_name_is_written_as_its_origin_names_it() {
        use crate::row::Value;
        let columns = Columns {
            names: ["KEY", "VERSION", "AT"].map(String::from).to_vec(),
            watermark: vec![2, 1],
            key: 0,
            time: None,
            customer: None,
            attributes: Default::default(),
        };
        let rows = [
            Row(vec![
                Value::Text("B-42".into()),
                Value::Int(-1),
                Value::Int(7),
            ]),
            Row(vec![Value::Int(9), Value::Int(0), Value::Int(i64::MIN)]),
            Row(vec![Value::Null, Value::Int(1), Value::Int(2)]),
            Row(vec![
                Value::Text("B-1".into()),
                Value::Text("x".into()),
                Value::Int(2),
            ]),
        ];
        for row in &rows {
            let mut written = String::new();
            let name = Origin::write_name(row, &columns, "bills", &mut written);
            match Origin::of(row, &columns) {
                Ok(origin) => {
                    assert_eq!(name, Ok(origin.key.is_empty()));
                    assert_eq!(written, origin.name("bills"));
                }
                Err(e) => assert_eq!(name, Err(e)),
            }
        }
        let mut written = String::new();
        assert_eq!(
            Origin::write_name(&rows[0], &columns, "bills", &mut written),
            Ok(false)
        );
        assert_eq!(written, "bills/B-42/7.-1");
        assert!(
            Origin::write_name(&rows[3], &columns, "s", &mut written)
                .unwrap_err()
                .contains("`VERSION` holds a text")
        );
    }

    #[test]
    fn a_page_put_together_from_encoded_notifications_is_the_pages_command_byte_for_byte() {
        let sends: Vec<_> = (1..=3).map(|i| send(i, Priority::Normal)).collect();
        let encoded = || sends.iter().cloned().map(Encoded::of).collect::<Vec<_>>();
        let message = page(encoded(), false).unwrap();
        let command = Command::page(sends.clone()).unwrap();
        assert_eq!(
            serde_json::from_slice::<Command>(&message.payload).unwrap(),
            command
        );
        let whole = page(encoded(), true).unwrap();
        assert_eq!(
            serde_json::from_slice::<Command>(&whole.payload).unwrap(),
            command
        );
        assert!(message.payload.len() < whole.payload.len());
        assert_eq!(
            message.payload.as_ref(),
            serde_json::to_vec(&command).unwrap().as_slice()
        );
        assert_eq!(message.subject, command.subject());
        assert_eq!(
            message.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(command.msg_id().as_str())
        );
        assert_eq!(
            message.page,
            Some((
                Priority::Normal,
                sends.iter().map(|s| s.notification_id).collect()
            ))
        );
        assert!(page(vec![], false).is_none());
        let mixed = [send(1, Priority::Normal), send(2, Priority::Low)];
        assert!(page(mixed.into_iter().map(Encoded::of).collect(), false).is_none());
    }
}
