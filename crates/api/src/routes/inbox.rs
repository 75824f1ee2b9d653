//! The customer's inbox: `GET /v1/me/inbox` (newest first, cursor pagination, unread filter),
//! `POST /v1/me/inbox/{id}/read`, `POST /v1/me/inbox/read-all`, and the live stream
//! `GET /v1/me/stream`. Every item is looked up under the caller's customer id, so another
//! customer's notification is simply not found (404, never 403).

use std::convert::Infallible;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::sse::{Event as SseEvent, KeepAlive, Sse},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::Stream;
use serde::{Deserialize, Serialize};
use xibaar_core::{
    Event, NotificationId,
    event::{InboxAllRead, InboxItemRead},
};
use xibaar_store::InboxItem;

use crate::{
    AppState,
    auth::Caller,
    extract::ApiQuery,
    live::{Live, resume_after},
    problem::ApiError,
    routes::{read_failed, record_for_caller},
};

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// Only unread items.
    #[serde(default)]
    unread: Option<bool>,
}

/// One page of the inbox, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    /// Present when older items follow: pass it as `cursor` for the next page. Items arriving
    /// meanwhile never shift a page.
    pub next_cursor: Option<String>,
    pub unread_count: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnreadCount {
    pub unread_count: i64,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Read,
}

/// A read mark, stored as an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemMarked {
    pub notification_id: NotificationId,
    pub status: ItemStatus,
}

/// How many unread items the mark covers; items arriving later stay unread.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AllMarked {
    pub marked_read: i64,
}

/// Opaque to clients: the position of the last item of the previous page.
fn encode_cursor(position: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("inbox:{position}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.strip_prefix("inbox:")?.parse::<i64>().ok())
        .filter(|p| *p >= 0)
        .ok_or_else(|| {
            ApiError::validation(
                "cursor",
                "is not a cursor this api returned; start without one",
            )
        })
}

/// The caller's inbox, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/me/inbox", operation_id = "listInbox", tag = "customer-app", params(ListQuery),
    responses((status = 200, description = "One page", body = InboxPage)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<InboxPage>, ApiError> {
    let customer = caller.customer()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            format!("must be 1 to {MAX_PAGE}"),
        ));
    }
    let before = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let unread_only = query.unread.unwrap_or(false);
    // One more than asked tells whether another page follows.
    let (mut items, (unread, _)) = tokio::try_join!(
        xibaar_store::inbox_page(&state.pool, &customer, before, unread_only, limit + 1),
        xibaar_store::inbox_summary(&state.pool, &customer),
    )
    .map_err(read_failed)?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| items.last().map(|i| encode_cursor(i.position)))
        .flatten();
    Ok(Json(InboxPage {
        items,
        next_cursor,
        unread_count: unread,
    }))
}

/// How many items of the caller's inbox are unread.
#[utoipa::path(get, path = "/v1/me/inbox/unread-count", operation_id = "getUnreadCount", tag = "customer-app",
    responses((status = 200, description = "The unread count", body = UnreadCount)),
    security(("bearer" = [])))]
pub async fn unread_count(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<UnreadCount>, ApiError> {
    let customer = caller.customer()?;
    let (unread, _) = xibaar_store::inbox_summary(&state.pool, &customer)
        .await
        .map_err(read_failed)?;
    Ok(Json(UnreadCount {
        unread_count: unread,
    }))
}

fn not_in_inbox() -> ApiError {
    ApiError::NotFound("no such notification in your inbox".into())
}

/// Marks one item of the caller's inbox read.
#[utoipa::path(post, path = "/v1/me/inbox/{id}/read", operation_id = "markInboxItemRead", tag = "customer-app",
    params(("id" = uuid::Uuid, Path, description = "The notification id")),
    responses(
        (status = 202, description = "The read mark is stored", body = ItemMarked),
        (status = 404, description = "No such item in the caller's inbox", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ItemMarked>), ApiError> {
    let customer = caller.customer()?;
    let notification_id = id
        .parse::<uuid::Uuid>()
        .map(NotificationId)
        .map_err(|_| not_in_inbox())?;
    let held = xibaar_store::inbox_holds(&state.pool, &customer, notification_id)
        .await
        .map_err(read_failed)?;
    if !held {
        return Err(not_in_inbox());
    }
    record_for_caller(
        &state,
        &caller,
        Event::InboxItemRead(InboxItemRead {
            customer_id: customer,
            notification_id,
        }),
        "read mark",
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ItemMarked {
            notification_id,
            status: ItemStatus::Read,
        }),
    ))
}

/// Marks every item of the caller's inbox read, up to the newest one now.
#[utoipa::path(post, path = "/v1/me/inbox/read-all", operation_id = "markAllInboxRead", tag = "customer-app",
    responses((status = 202, description = "The read mark is stored", body = AllMarked)),
    security(("bearer" = [])))]
pub async fn mark_all_read(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<AllMarked>), ApiError> {
    let customer = caller.customer()?;
    let (unread, newest) = xibaar_store::inbox_summary(&state.pool, &customer)
        .await
        .map_err(read_failed)?;
    if unread > 0 {
        record_for_caller(
            &state,
            &caller,
            Event::InboxAllRead(InboxAllRead {
                customer_id: customer,
                up_to_position: newest,
            }),
            "read mark",
        )
        .await?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(AllMarked {
            marked_read: unread,
        }),
    ))
}

/// New inbox items, live (Server-Sent Events).
///
/// Every new inbox item as an `event: inbox_item` (data: an `InboxItem`) whose `id` resumes
/// the stream (`Last-Event-ID`) exactly after it. Without `Last-Event-ID` it starts at the
/// newest item the customer has now.
#[utoipa::path(get, path = "/v1/me/stream", operation_id = "streamInbox", tag = "customer-app",
    params(("Last-Event-ID" = Option<i64>, Header, description = "The id of the last event received")),
    responses((status = 200, description = "An endless stream of `inbox_item` events", content_type = "text/event-stream", body = String)),
    security(("bearer" = [])))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let customer = caller.customer()?;
    let after = resume_after(headers.get("last-event-id"))?;
    let live = Live::open(&state.inbox, &state.pool, customer, after).await?;
    let events = futures::stream::unfold(live, |mut live| async move {
        let item = live.next().await?;
        Some((Ok(sse_event(&item)), live))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// An inbox item as the stream's `inbox_item` event.
pub(crate) fn sse_event(item: &InboxItem) -> SseEvent {
    SseEvent::default()
        .event("inbox_item")
        .id(item.position.to_string())
        .json_data(item)
        .unwrap_or_else(|e| SseEvent::default().event("error").data(e.to_string()))
}
