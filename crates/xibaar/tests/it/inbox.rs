//! The customer's inbox, its isolation, pagination under concurrent inserts, read marks, device
//! removal, and the live stream with `Last-Event-ID` resumption.

use std::{collections::HashSet, time::Duration};

use serde_json::Value;
use xibaar_testkit::eventually;

use crate::support::{Pipeline, notification};

async fn get(p: &Pipeline, customer: &str, path: &str) -> (u16, Value) {
    let r = p
        .http
        .get(format!("{}{path}", p.api))
        .bearer_auth(p.token(customer, &[]))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(p: &Pipeline, customer: &str, path: &str) -> u16 {
    p.http
        .post(format!("{}{path}", p.api))
        .bearer_auth(p.token(customer, &[]))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Sends `n` notifications to `customer` and returns their ids, in sending order.
async fn send_to(p: &Pipeline, customer: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            p.accept(&notification("normal", &[customer], &format!("{tag} {i}")))
                .await,
        );
    }
    ids
}

async fn wait_inbox(p: &Pipeline, customer: &str, n: usize) {
    let seen = eventually(Duration::from_secs(30), || async {
        let (_, page) = get(p, customer, "/v1/me/inbox?limit=100").await;
        (page["items"].as_array()?.len() >= n).then_some(())
    })
    .await;
    assert!(seen.is_some(), "{customer}'s inbox never held {n} items");
}

async fn unread(p: &Pipeline, customer: &str) -> i64 {
    get(p, customer, "/v1/me/inbox/unread-count").await.1["unread_count"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_customer_sees_only_their_inbox_and_marks_only_their_items() {
    let p = Pipeline::start().await;
    p.register_device("alice", "alice-phone", "tok-alice").await;
    p.register_device("bob", "bob-phone", "tok-bob").await;
    p.wait_for_devices(2).await;
    let alice = send_to(&p, "alice", 3, "For Alice").await;
    let bob = send_to(&p, "bob", 1, "For Bob").await;
    wait_inbox(&p, "alice", 3).await;
    wait_inbox(&p, "bob", 1).await;

    let (status, page) = get(&p, "alice", "/v1/me/inbox").await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().unwrap();
    let titles: HashSet<&str> = items.iter().map(|i| i["title"].as_str().unwrap()).collect();
    assert_eq!(
        titles,
        HashSet::from(["For Alice 0", "For Alice 1", "For Alice 2"])
    );
    // Newest first: in the order the items reached the log (their stream position), which two
    // concurrent pushes' own timestamps need not follow to the microsecond.
    let listed: Vec<&str> = items
        .iter()
        .map(|i| i["notification_id"].as_str().unwrap())
        .collect();
    let by_position: Vec<String> = sqlx::query_scalar(
        "SELECT notification_id::text FROM inbox WHERE customer_id = 'alice' ORDER BY position DESC",
    )
    .fetch_all(&p.pool)
    .await
    .unwrap();
    assert_eq!(listed, by_position, "newest first");
    assert_eq!(page["items"][0]["body"], "Planned maintenance tonight");
    assert_eq!(page["items"][0]["data"]["kind"], "outage");
    assert_eq!(page["items"][0]["read_at"], Value::Null);
    assert_eq!(page["unread_count"], 3);
    assert_eq!(page["next_cursor"], Value::Null);

    // Bob's item does not exist for Alice: 404, as for an id nobody has.
    assert_eq!(
        post(&p, "alice", &format!("/v1/me/inbox/{}/read", bob[0])).await,
        404
    );
    assert_eq!(
        post(
            &p,
            "alice",
            "/v1/me/inbox/00000000-0000-0000-0000-000000000000/read"
        )
        .await,
        404
    );
    assert_eq!(post(&p, "alice", "/v1/me/inbox/not-an-id/read").await, 404);
    let r = p
        .http
        .delete(format!("{}/v1/devices/bob-phone", p.api))
        .bearer_auth(p.token("alice", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );

    // Alice reads one, then all; Bob's stays unread.
    assert_eq!(
        post(&p, "alice", &format!("/v1/me/inbox/{}/read", alice[1])).await,
        202
    );
    let one_read = eventually(Duration::from_secs(10), || async {
        (unread(&p, "alice").await == 2).then_some(())
    })
    .await;
    assert!(one_read.is_some());
    let (_, unread_page) = get(&p, "alice", "/v1/me/inbox?unread=true").await;
    let unread_ids: HashSet<&str> = unread_page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["notification_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        unread_ids,
        HashSet::from([alice[0].as_str(), alice[2].as_str()])
    );
    assert_eq!(post(&p, "alice", "/v1/me/inbox/read-all").await, 202);
    let all_read = eventually(Duration::from_secs(10), || async {
        (unread(&p, "alice").await == 0).then_some(())
    })
    .await;
    assert!(all_read.is_some());
    assert_eq!(unread(&p, "bob").await, 1);
    // What arrives after "read all" is unread.
    send_to(&p, "alice", 1, "Later").await;
    wait_inbox(&p, "alice", 4).await;
    assert_eq!(unread(&p, "alice").await, 1);

    // Bad parameters are problems, not 500s.
    for query in [
        "limit=0",
        "limit=101",
        "cursor=bogus",
        "unread=perhaps",
        "colour=red",
    ] {
        let (status, problem) = get(&p, "alice", &format!("/v1/me/inbox?{query}")).await;
        assert_eq!(status, 422, "{query}: {problem}");
    }

    // Bob removes his phone: it is gone from his list and receives nothing more.
    let r = p
        .http
        .delete(format!("{}/v1/devices/bob-phone", p.api))
        .bearer_auth(p.token("bob", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    p.wait_for_devices(1).await;
    let (_, devices) = get(&p, "bob", "/v1/devices").await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 0);
    let id = p
        .accept(&notification("high", &["bob"], "After removal"))
        .await;
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(status["targeted"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_hold_every_item_exactly_once_while_new_items_arrive() {
    let p = Pipeline::start().await;
    p.register_device("carol", "carol-phone", "tok-carol").await;
    p.wait_for_devices(1).await;
    let first = send_to(&p, "carol", 25, "Bill").await;
    wait_inbox(&p, "carol", 25).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/me/inbox?limit=4&cursor={c}"),
            None => "/v1/me/inbox?limit=4".to_owned(),
        };
        let (status, page) = get(&p, "carol", &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["notification_id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        if pages == 2 {
            // New items arrive (and are projected) while Carol pages through.
            send_to(&p, "carol", 6, "Outage").await;
            wait_inbox(&p, "carol", 31).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an item came twice: {seen:?}");
    // Items that arrived meanwhile sort above the cursor: they are on a fresh first page, not
    // repeated or interleaved here.
    let expected: HashSet<&String> = first.iter().collect();
    assert_eq!(unique, expected, "every earlier item exactly once");
    assert_eq!(pages, 7);
    let (_, fresh) = get(&p, "carol", "/v1/me/inbox?limit=6").await;
    let newest: HashSet<&str> = fresh["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert!(newest.iter().all(|t| t.starts_with("Outage")), "{newest:?}");
}

/// Opens `customer`'s live stream, resuming after `last_event_id` if given.
async fn open_stream(
    p: &Pipeline,
    customer: &str,
    last_event_id: Option<String>,
) -> reqwest::Response {
    let mut request = p
        .http
        .get(format!("{}/v1/me/stream", p.api))
        .bearer_auth(p.token(customer, &[]));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.unwrap()
}

/// Reads `n` events of an SSE response: `(id, notification title)`.
async fn read_events(mut response: reqwest::Response, n: usize) -> Vec<(String, String)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while events.len() < n {
            let chunk = response.chunk().await.unwrap().expect("the stream ended");
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                if field("event:").as_deref() == Some("inbox_item") {
                    let item: Value = serde_json::from_str(&field("data:").unwrap()).unwrap();
                    events.push((
                        field("id:").unwrap(),
                        item["title"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "only {} of {n} events arrived: {events:?}",
        events.len()
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_pushes_new_items_and_resumes_after_the_last_event_id() {
    let p = Pipeline::start().await;
    p.register_device("dave", "dave-phone", "tok-dave").await;
    p.register_device("erin", "erin-phone", "tok-erin").await;
    p.wait_for_devices(2).await;
    send_to(&p, "dave", 1, "Before the stream").await;
    wait_inbox(&p, "dave", 1).await;

    let live = open_stream(&p, "dave", None).await;
    assert_eq!(live.status(), 200);
    assert_eq!(
        live.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // Only what arrives from now on, and only Dave's.
    send_to(&p, "erin", 1, "For Erin").await;
    send_to(&p, "dave", 1, "Live").await;
    let first = read_events(live, 1).await;
    assert_eq!(first[0].1, "Live 0");

    // Disconnected, two more arrive; resuming from the last id delivers exactly those.
    send_to(&p, "dave", 2, "Missed").await;
    wait_inbox(&p, "dave", 4).await;
    let resumed = open_stream(&p, "dave", Some(first[0].0.clone())).await;
    let missed = read_events(resumed, 2).await;
    // Both, in the order they reached the log (two notifications sent back to back are pushed
    // concurrently, so either may arrive first), after the last one seen.
    let titles: HashSet<&str> = missed.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(titles, HashSet::from(["Missed 0", "Missed 1"]));
    let ids: Vec<i64> = missed.iter().map(|(id, _)| id.parse().unwrap()).collect();
    assert!(ids[0] < ids[1], "in stream order: {ids:?}");
    assert!(ids[0] > first[0].0.parse::<i64>().unwrap());

    let bad = open_stream(&p, "dave", Some("yesterday".into())).await;
    assert_eq!(bad.status(), 422);
    let anonymous = p
        .http
        .get(format!("{}/v1/me/stream", p.api))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_each_inbox_once_whatever_the_devices_and_reads_like_any_item() {
    let p = Pipeline::start().await;
    p.register_device("frank", "frank-phone", "tok-frank-1")
        .await;
    p.register_device("frank", "frank-tablet", "tok-frank-2")
        .await;
    p.register_device("gina", "gina-phone", "tok-gina").await;
    p.wait_for_devices(3).await;
    send_to(&p, "frank", 1, "Bill").await;
    wait_inbox(&p, "frank", 1).await;
    let live = open_stream(&p, "gina", None).await;
    assert_eq!(live.status(), 200);
    let broadcast = |title: &str| {
        serde_json::json!({
            "priority": "high",
            "audience": { "kind": "everyone" },
            "content": { "title": title, "body": "Power is back", "data": {} },
        })
    };
    let outage = p.accept(&broadcast("Outage over")).await;
    // Gina's live stream is woken by a broadcast as by any item.
    assert_eq!(read_events(live, 1).await[0].1, "Outage over");
    wait_inbox(&p, "frank", 2).await;

    // One item for Frank's two phones.
    let (_, page) = get(&p, "frank", "/v1/me/inbox").await;
    let titles: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Outage over", "Bill 0"], "newest first, once each");
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbox WHERE customer_id = 'frank' AND notification_id = $1::uuid",
    )
    .bind(&outage)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(unread(&p, "frank").await, 2);

    // Reading it marks it for Frank only; Gina's "read all" covers hers; someone without a
    // device never had it.
    assert_eq!(
        post(&p, "frank", &format!("/v1/me/inbox/{outage}/read")).await,
        202
    );
    assert_eq!(
        post(&p, "henry", &format!("/v1/me/inbox/{outage}/read")).await,
        404
    );
    assert_eq!(post(&p, "gina", "/v1/me/inbox/read-all").await, 202);
    let read = eventually(Duration::from_secs(10), || async {
        (unread(&p, "frank").await == 1 && unread(&p, "gina").await == 0).then_some(())
    })
    .await;
    assert!(read.is_some(), "the read marks were projected");
    let (_, unread_page) = get(&p, "frank", "/v1/me/inbox?unread=true").await;
    assert_eq!(unread_page["items"][0]["title"], "Bill 0");
    assert_eq!(unread_page["items"].as_array().unwrap().len(), 1);

    // The next broadcast arrives unread, above the cursor of the last page.
    p.accept(&broadcast("Planned works")).await;
    wait_inbox(&p, "gina", 2).await;
    assert_eq!(unread(&p, "gina").await, 1);
    let (_, page) = get(&p, "gina", "/v1/me/inbox?limit=1").await;
    assert_eq!(page["items"][0]["title"], "Planned works");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = get(&p, "gina", &format!("/v1/me/inbox?limit=1&cursor={cursor}")).await;
    assert_eq!(next["items"][0]["title"], "Outage over");
    assert!(next["items"][0]["read_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_each_receive_their_own_items_once_however_many_arrive_at_once() {
    let p = Pipeline::start().await;
    p.register_device("ivy", "ivy-phone", "tok-ivy").await;
    p.register_device("jack", "jack-phone", "tok-jack").await;
    p.wait_for_devices(2).await;
    let ivy_phone = open_stream(&p, "ivy", None).await;
    let ivy_tablet = open_stream(&p, "ivy", None).await;
    let jack = open_stream(&p, "jack", None).await;
    // More than the api hands a stream at once, in one burst, to Ivy; one to Jack.
    let bodies: Vec<_> = (0..20)
        .map(|i| notification("normal", &["ivy"], &format!("Ivy {i}")))
        .collect();
    futures::future::join_all(bodies.iter().map(|body| p.accept(body))).await;
    send_to(&p, "jack", 1, "Jack").await;
    for live in [ivy_phone, ivy_tablet] {
        let events = read_events(live, 20).await;
        let titles: HashSet<&str> = events.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(titles.len(), 20, "each item once: {events:?}");
        assert!(titles.iter().all(|t| t.starts_with("Ivy ")), "{titles:?}");
        let ids: Vec<i64> = events.iter().map(|(id, _)| id.parse().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    }
    assert_eq!(read_events(jack, 1).await[0].1, "Jack 0");
}
