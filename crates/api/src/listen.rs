//! The api's listener. A live stream (`GET /v1/me/stream`) only writes once its head is sent,
//! yet under hyper each open one keeps a whole HTTP/1 connection: an 8 KiB read buffer, an
//! 8 KiB write buffer and the connection's state, about 20 KB a stream that no setting of
//! hyper's lowers. Ten thousand customers with the app open would hold 200 MB for nothing.
//!
//! So the first bytes of each new connection are peeked, not read. A stream request that came
//! in whole and that the api serves as it stands (a valid customer token, a valid
//! `Last-Event-ID`, budget left) is answered here on the bare connection, with the head and
//! the bytes the router's handler sends. Everything else (another route, a head split across
//! packets, any refusal, HTTP/2) goes to the router through axum's own server, with nothing
//! consumed, and is answered there as always: the same request always gets the same answer.
//! Nothing here parses HTTP by hand: `httparse` is hyper's own parser.

use std::{io, net::SocketAddr, time::Duration};

use axum::{
    Router,
    http::{HeaderMap, HeaderName, HeaderValue, header},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Instant, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use xibaar_store::InboxItem;

use crate::{
    AppState,
    limit::Budget,
    live::{Live, resume_after},
};

/// The route served here when its request allows.
const STREAM_PATH: &str = "/v1/me/stream";
/// The largest request head looked at; a larger one goes to the router.
const HEAD_MAX: usize = 8 * 1024;
/// The most headers a stream request looked at may have.
const HEADERS_MAX: usize = 32;
/// How long a new connection has to send its first bytes before the router is given it.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// How often an idle stream sends a comment, as axum's `KeepAlive::default()` does.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A stream whose reader takes nothing for this long is closed: its customer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// What an idle stream sends: an empty SSE comment, as axum's keep-alive does.
const KEEP_ALIVE_EVENT: &[u8] = b":\n\n";

/// Serves the api on `listener` until `shutdown`: live streams here, the rest by `router`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (to_router, handed) = mpsc::channel(1024);
    let connections = TaskTracker::new();
    let routed = {
        let shutdown = shutdown.clone();
        xibaar_telemetry::serve(Handed { handed, local }, router, async move {
            shutdown.cancelled().await
        })
    };
    let accepting = async {
        loop {
            let (conn, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        pause_after(e).await;
                        continue;
                    }
                },
            };
            connections.spawn(first_request(
                conn,
                peer,
                state.clone(),
                to_router.clone(),
                shutdown.clone(),
            ));
        }
    };
    let (served, ()) = tokio::join!(routed, accepting);
    connections.close();
    connections.wait().await;
    served
}

/// As axum's own listener does: a failed connection is skipped; anything else (out of file
/// descriptors) is waited out, since accepting again at once would fail again at once.
async fn pause_after(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::warn!(error = %e, "accepting a connection failed; retrying in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The connections the router serves, as this listener hands them over.
struct Handed {
    handed: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Handed {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.handed.recv().await {
            Some(handed) => handed,
            // The listener stopped accepting: so does the router, at shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn first_request(
    mut conn: TcpStream,
    peer: SocketAddr,
    state: AppState,
    to_router: mpsc::Sender<(TcpStream, SocketAddr)>,
    shutdown: CancellationToken,
) {
    // Boxed: once it has answered, an open stream does not carry the size of its opening.
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return,
        opened = Box::pin(open_stream(&mut conn, &state)) => opened,
    };
    match opened {
        Opened::Stream(live, head) => stream(conn, live, head, shutdown).await,
        Opened::Routed => {
            // Only fails when the router has stopped, and with it the api.
            let _ = to_router.send((conn, peer)).await;
        }
        Opened::Broken => {}
    }
}

/// What became of a new connection's first request.
enum Opened {
    /// A live stream, with the response head to send.
    Stream(Live, Vec<u8>),
    /// Nothing read off the connection: the router answers it.
    Routed,
    /// The connection failed while its request was being taken off it.
    Broken,
}

/// Opens the live stream `conn` asks for and takes its request off the connection, or leaves
/// the connection untouched for the router.
async fn open_stream(conn: &mut TcpStream, state: &AppState) -> Opened {
    match stream_asked(conn, state).await {
        Some((length, live, head)) => {
            // The bytes were peeked, so only a failed connection fails to give them.
            match conn.read_exact(&mut vec![0; length]).await {
                Ok(_) => Opened::Stream(live, head),
                Err(_) => Opened::Broken,
            }
        }
        None => Opened::Routed,
    }
}

/// The live stream `conn`'s first request asks for, when it is whole and to be served as it
/// stands: the request's length, the stream, and the head to answer with. Reads nothing.
async fn stream_asked(conn: &TcpStream, state: &AppState) -> Option<(usize, Live, Vec<u8>)> {
    // The buffer is made once there is something to read, and dropped before the stream's
    // opening waits for Postgres: ten thousand phones connecting at once do not hold 8 KiB
    // each while they wait.
    timeout(FIRST_BYTES, conn.readable()).await.ok()?.ok()?;
    let (length, headers) = {
        let mut bytes = vec![0; HEAD_MAX];
        let seen = conn.peek(&mut bytes).await.ok()?;
        stream_request(&bytes[..seen])?
    };
    let caller = state.auth.bearer(&headers).ok()?;
    let customer = caller.customer().ok()?;
    let after = resume_after(headers.get("last-event-id")).ok()?;
    let span = crate::span_for("GET", STREAM_PATH, &headers);
    let live = Live::open(&state.inbox, &state.pool, customer, after)
        .instrument(span.clone())
        .await
        .ok()?;
    // Charged last: a request handed to the router after this would be charged twice. A
    // refusal here charges nothing, so the router refuses it the same way.
    let budget = state.limits.check(&caller).ok()?;
    let traceparent = span.in_scope(xibaar_streams::trace::current_traceparent);
    Some((length, live, response_head(budget, traceparent.as_deref())))
}

/// The length and headers of `bytes`' request when it is a whole, body-less HTTP/1.1
/// `GET /v1/me/stream`.
fn stream_request(bytes: &[u8]) -> Option<(usize, HeaderMap)> {
    let mut parsed = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut parsed);
    let httparse::Status::Complete(length) = request.parse(bytes).ok()? else {
        return None;
    };
    let path = request.path?.split('?').next()?;
    if request.method != Some("GET") || request.version != Some(1) || path != STREAM_PATH {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    // A body, or a switch of protocol, is the router's to deal with.
    let unusual = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::EXPECT,
    ];
    if unusual.iter().any(|h| headers.contains_key(h)) {
        return None;
    }
    Some((length, headers))
}

/// The head the router's stream handler answers with: the SSE content type, the caller's
/// budget and the request's trace, and a chunked body.
fn response_head(budget: Budget, traceparent: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 200 OK\r\n\
         content-type: text/event-stream\r\n\
         cache-control: no-cache\r\n\
         ratelimit-limit: {}\r\n\
         ratelimit-remaining: {}\r\n\
         ratelimit-reset: {}\r\n\
         transfer-encoding: chunked\r\n\
         date: {}\r\n",
        budget.limit,
        budget.remaining,
        budget.reset_secs,
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    if let Some(traceparent) = traceparent {
        head.push_str(&format!("traceparent: {traceparent}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Sends `live`'s items on `conn` after `head`, until the customer leaves or the api stops.
async fn stream(mut conn: TcpStream, mut live: Live, head: Vec<u8>, shutdown: CancellationToken) {
    if !sent(&mut conn, &head).await {
        return;
    }
    drop(head);
    let keep_alive = tokio::time::sleep(KEEP_ALIVE);
    tokio::pin!(keep_alive);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            () = closed(&conn) => return,
            () = &mut keep_alive => KEEP_ALIVE_EVENT.to_vec(),
            item = live.next() => match item {
                Some(item) => sse_bytes(&item),
                None => break,
            },
        };
        if !sent(&mut conn, &chunk(&event)).await {
            return;
        }
        keep_alive.as_mut().reset(Instant::now() + KEEP_ALIVE);
    }
    // The api stops: the body ends as a chunked body ends, and the connection with it.
    if sent(&mut conn, b"0\r\n\r\n").await {
        let _ = timeout(WRITE_TIMEOUT, conn.shutdown()).await;
    }
}

async fn sent(conn: &mut TcpStream, bytes: &[u8]) -> bool {
    matches!(
        timeout(WRITE_TIMEOUT, conn.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Resolves once the customer has closed the connection. Whatever else they send is
/// dropped: the stream is the connection's last request.
async fn closed(conn: &TcpStream) {
    let mut sink = [0; 64];
    loop {
        if conn.readable().await.is_err() {
            return;
        }
        match conn.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// An inbox item as the SSE event the router's handler sends
/// ([`crate::routes::inbox::sse_event`]).
fn sse_bytes(item: &InboxItem) -> Vec<u8> {
    let mut event = format!("event: inbox_item\nid: {}\ndata: ", item.position).into_bytes();
    match serde_json::to_writer(&mut event, item) {
        Ok(()) => event.extend_from_slice(b"\n\n"),
        Err(e) => event = format!("event: error\ndata: {e}\n\n").into_bytes(),
    }
    event
}

/// `bytes` as one chunk of a chunked body.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
    chunk.extend_from_slice(bytes);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::response::{
        IntoResponse,
        sse::{KeepAlive, Sse},
    };
    use http_body_util::BodyExt;

    use super::*;

    fn item(title: &str) -> InboxItem {
        InboxItem {
            notification_id: uuid::Uuid::now_v7(),
            position: 42,
            title: title.into(),
            body: "Votre facture de 12 500 FCFA est disponible".into(),
            language: Some("fr".into()),
            data: serde_json::json!({ "bill": "B-1" }),
            category: Some("billing".into()),
            priority: "normal".into(),
            received_at: chrono::Utc::now(),
            read_at: None,
        }
    }

    /// The first frame of the body the router's handler would send for `sse`.
    async fn first_frame(response: axum::response::Response) -> Vec<u8> {
        let mut body = response.into_body();
        let frame = body.frame().await.expect("a frame").expect("no error");
        frame.into_data().expect("data").to_vec()
    }

    #[tokio::test]
    async fn an_event_and_a_keep_alive_are_the_bytes_the_routers_handler_sends() {
        let item = item("Facture \"mars\" : prête\u{2028}");
        let routed = Sse::new(futures::stream::iter([Ok::<_, Infallible>(
            crate::routes::inbox::sse_event(&item),
        )]))
        .into_response();
        assert_eq!(first_frame(routed).await, sse_bytes(&item));

        let idle = Sse::new(futures::stream::pending::<Result<_, Infallible>>())
            .keep_alive(KeepAlive::new().interval(Duration::from_millis(1)))
            .into_response();
        assert_eq!(first_frame(idle).await, KEEP_ALIVE_EVENT);
    }

    #[test]
    fn only_a_whole_bodyless_http11_get_of_the_stream_is_taken() {
        let request = "GET /v1/me/stream?since=now HTTP/1.1\r\nHost: api\r\n\
                       Authorization: Bearer abc\r\nLast-Event-ID: 7\r\n\r\n";
        let (length, headers) = stream_request(request.as_bytes()).expect("taken");
        assert_eq!(length, request.len());
        assert_eq!(headers["last-event-id"], "7");
        assert_eq!(headers["authorization"], "Bearer abc");

        let refused = [
            // Split across packets: not whole yet.
            &request[..request.len() - 2],
            "POST /v1/me/stream HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET /v1/me/inbox HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET /v1/me/streams HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET /v1/me/stream HTTP/1.0\r\nHost: api\r\n\r\n",
            "GET /v1/me/stream HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "GET /v1/me/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/me/stream HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "not http at all\r\n\r\n",
        ];
        for request in refused {
            assert!(
                stream_request(request.as_bytes()).is_none(),
                "taken: {request:?}"
            );
        }
    }

    #[test]
    fn the_head_names_the_budget_and_the_trace_and_frames_chunks() {
        let budget = Budget {
            limit: 600,
            remaining: 598,
            reset_secs: 1,
        };
        let head = String::from_utf8(response_head(budget, Some("00-abc-def-01"))).unwrap();
        let mut parsed = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut parsed);
        assert_eq!(
            response.parse(head.as_bytes()).unwrap(),
            httparse::Status::Complete(head.len())
        );
        assert_eq!(response.code, Some(200));
        let value = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| std::str::from_utf8(h.value).unwrap())
        };
        assert_eq!(value("content-type"), Some("text/event-stream"));
        assert_eq!(value("ratelimit-remaining"), Some("598"));
        assert_eq!(value("traceparent"), Some("00-abc-def-01"));
        assert_eq!(value("transfer-encoding"), Some("chunked"));
        assert!(
            httpdate::parse_http_date(value("date").unwrap()).is_ok(),
            "{head}"
        );

        assert_eq!(chunk(b":\n\n"), b"3\r\n:\n\n\r\n");
        assert_eq!(chunk(&[b'x'; 26])[..4], *b"1a\r\n");
    }
}
