//! How a live stream is served: a request that arrives whole is answered on its bare
//! connection, any other by the router, and the customer cannot tell them apart: same head,
//! same events, one charge to their budget per request either way.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::support::{Pipeline, notification};

/// A live stream read off its raw connection: the head, then the SSE frames of the chunked
/// body.
struct RawStream {
    conn: TcpStream,
    read: Vec<u8>,
    /// The decoded body not yet cut into frames.
    body: String,
}

impl RawStream {
    /// Sends the request for `customer`'s stream in `pieces` writes, a pause between each.
    async fn open(
        api: &str,
        token: &str,
        last_event_id: Option<&str>,
        pieces: usize,
    ) -> (Self, BTreeMap<String, String>) {
        let address = api.trim_start_matches("http://");
        let mut conn = TcpStream::connect(address).await.unwrap();
        conn.set_nodelay(true).unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /v1/me/stream HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {token}\r\n{resume}\r\n"
        );
        let step = request.len().div_ceil(pieces);
        for piece in request.as_bytes().chunks(step) {
            conn.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let mut stream = Self {
            conn,
            read: Vec::new(),
            body: String::new(),
        };
        let head = stream.head().await;
        (stream, head)
    }

    async fn fill(&mut self) {
        let mut buffer = [0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), self.conn.read(&mut buffer))
            .await
            .expect("the api sent nothing for 30 s")
            .unwrap();
        assert!(n > 0, "the api closed the stream");
        self.read.extend_from_slice(&buffer[..n]);
    }

    /// The status and headers (names in lower case), `:status` standing for the status.
    async fn head(&mut self) -> BTreeMap<String, String> {
        loop {
            let mut parsed = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut parsed);
            if let httparse::Status::Complete(length) = response.parse(&self.read).unwrap() {
                let mut head: BTreeMap<String, String> = response
                    .headers
                    .iter()
                    .map(|h| {
                        let value = std::str::from_utf8(h.value).unwrap().to_owned();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                head.insert(":status".into(), response.code.unwrap().to_string());
                self.read.drain(..length);
                return head;
            }
            self.fill().await;
        }
    }

    /// The next SSE frame other than a keep-alive, as sent.
    async fn frame(&mut self) -> String {
        loop {
            while let Some(end) = self.body.find("\n\n") {
                let frame: String = self.body.drain(..end + 2).collect();
                if !frame.starts_with(':') {
                    return frame;
                }
            }
            // Decodes whole chunks of the chunked body.
            while let Ok(httparse::Status::Complete((start, size))) =
                httparse::parse_chunk_size(&self.read)
            {
                let size = usize::try_from(size).unwrap();
                assert!(size > 0, "the body ended");
                if self.read.len() < start + size + 2 {
                    break;
                }
                let data = std::str::from_utf8(&self.read[start..start + size]).unwrap();
                self.body.push_str(data);
                self.read.drain(..start + size + 2);
            }
            if !self.body.contains("\n\n") {
                self.fill().await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_request_in_pieces_gets_the_same_head_and_events_as_one_sent_whole() {
    let p = Pipeline::start().await;
    p.register_device("kim", "kim-phone", "tok-kim").await;
    p.wait_for_devices(1).await;
    let token = p.token("kim", &[]);
    // Whole, it is served on its bare connection; in three pieces, by the router.
    let (mut whole, whole_head) = RawStream::open(&p.api, &token, None, 1).await;
    let (mut pieces, pieces_head) = RawStream::open(&p.api, &token, None, 3).await;
    // The same headers, with the same values but for the time and the budget left.
    let varying = ["date", "ratelimit-remaining", "ratelimit-reset"];
    let same = |head: &BTreeMap<String, String>| {
        let mut head = head.clone();
        for name in varying {
            if let Some(value) = head.get_mut(name) {
                *value = "(varies)".into();
            }
        }
        head
    };
    assert_eq!(same(&whole_head), same(&pieces_head));
    assert_eq!(whole_head[":status"], "200");
    assert_eq!(whole_head["content-type"], "text/event-stream");

    let mut frames = Vec::new();
    for title in ["Facture disponible", "Coupure prévue"] {
        p.accept(&notification("normal", &["kim"], title)).await;
        let frame = whole.frame().await;
        assert!(frame.contains(title), "{frame}");
        assert_eq!(frame, pieces.frame().await);
        frames.push(frame);
    }
    // Resumed after the first item, whole or in pieces: the second, the same way.
    let first = frames[0]
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id");
    let (mut resumed, _) = RawStream::open(&p.api, &token, Some(first), 1).await;
    let (mut resumed_in_pieces, _) = RawStream::open(&p.api, &token, Some(first), 2).await;
    assert_eq!(resumed.frame().await, frames[1]);
    assert_eq!(resumed_in_pieces.frame().await, frames[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_request_is_charged_once_and_open_streams_end_when_the_api_stops() {
    let p = Pipeline::start().await;
    // Three a minute: one comes back every 20 s.
    let state = p
        .api_state(xibaar_api::limit::RateLimits::new(
            NonZeroU32::new(3).unwrap(),
            NonZeroU32::new(1000).unwrap(),
        ))
        .await;
    let shutdown = CancellationToken::new();
    // As the api runs it: the hub ends the streams the router holds when the api stops.
    state
        .inbox
        .clone()
        .spawn_listener(p.pool.clone(), shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let router = xibaar_api::app(state.clone(), p.config.api.max_body_bytes);
    let served = tokio::spawn(xibaar_api::serve(listener, state, router, shutdown.clone()));

    let token = p.token("lena", &[]);
    let started = Instant::now();
    let mut open = Vec::new();
    // Whole, in pieces, refused (a bad Last-Event-ID) by the router after the bare
    // connection's check: each costs one request of the budget, none two.
    for (expected, last_event_id, pieces, status) in [
        (2, None, 1, "200"),
        (1, Some("yesterday"), 1, "422"),
        (0, None, 2, "200"),
    ] {
        let (stream, head) = RawStream::open(&api, &token, last_event_id, pieces).await;
        assert_eq!(head[":status"], status, "{head:?}");
        let remaining: u64 = head["ratelimit-remaining"].parse().unwrap();
        // A slow machine may see a request come back meanwhile, never one fewer.
        let refilled = started.elapsed().as_secs() / 20;
        assert!(
            (expected..=expected + refilled).contains(&remaining),
            "{remaining} left, {expected} expected: {head:?}"
        );
        open.push(stream);
    }
    let (_, refused) = RawStream::open(&api, &token, None, 1).await;
    if started.elapsed() < Duration::from_secs(20) {
        assert_eq!(refused[":status"], "429", "{refused:?}");
        assert_eq!(refused["content-type"], "application/problem+json");
    }

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), served).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the api did not stop with streams open: {stopped:?}"
    );
    // The stream served on its bare connection ended its body as a chunked body ends.
    let mut rest = Vec::new();
    let mut whole = open.swap_remove(0);
    tokio::time::timeout(Duration::from_secs(10), whole.conn.read_to_end(&mut rest))
        .await
        .expect("the connection was closed")
        .unwrap();
    whole.read.extend_from_slice(&rest);
    assert!(whole.read.ends_with(b"0\r\n\r\n"), "{:?}", whole.read);
}
