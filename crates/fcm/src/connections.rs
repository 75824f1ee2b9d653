//! As many HTTP/2 connections to FCM as the requests in flight need.
//!
//! FCM's front ends allow 100 concurrent streams on one HTTP/2 connection, and a request takes
//! tens to hundreds of milliseconds; reqwest keeps one HTTP/2 connection per host and queues
//! what does not fit in it. By Little's law the requests in flight are the rate times the
//! latency, so the pool opens a connection (through a proxy a CONNECT tunnel of its own) when
//! every open one carries its full share of streams, and closes one idle for a while. A
//! request goes to the least busy connection with a free stream, never behind a full
//! connection while another could carry it.
//!
//! Written here rather than taken from a crate: reqwest and hyper pool by host and do not
//! spread one host's requests over several HTTP/2 connections, and the choice needs only a
//! counter per connection.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// A connection idle this long is closed (the first one stays).
const IDLE: Duration = Duration::from_secs(60);

struct Connection {
    client: crate::transport::Connection,
    in_flight: AtomicUsize,
    /// Milliseconds since the pool's start when it last carried a request.
    last_used: AtomicU64,
}

pub(crate) struct Connections {
    dialer: Arc<crate::transport::Dialer>,
    streams: usize,
    max: usize,
    open: RwLock<Vec<Arc<Connection>>>,
    started: Instant,
}

/// A stream reserved on one connection until dropped.
pub(crate) struct Stream {
    connection: Arc<Connection>,
    started: Instant,
}

impl Stream {
    pub(crate) fn client(&self) -> &crate::transport::Connection {
        &self.connection.client
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.connection.in_flight.fetch_sub(1, Ordering::AcqRel);
        let now = self.started.elapsed().as_millis() as u64;
        self.connection.last_used.fetch_max(now, Ordering::Relaxed);
    }
}

impl Connections {
    /// A pool of connections dialled by `dialer`, each carrying up to `streams` requests, at
    /// most `max` of them.
    pub(crate) fn new(dialer: Arc<crate::transport::Dialer>, streams: usize, max: usize) -> Self {
        let first = Arc::new(Connection {
            client: crate::transport::Connection::new(dialer.clone()),
            in_flight: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
        });
        Self {
            dialer,
            streams: streams.max(1),
            max: max.max(1),
            open: RwLock::new(vec![first]),
            started: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The connections open now.
    pub(crate) fn len(&self) -> usize {
        self.open.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Reserves a stream on the least busy connection that has one free, opening a connection
    /// when none has (up to the maximum, past which the least busy one queues the request).
    pub(crate) fn stream(&self) -> Stream {
        {
            let open = self.open.read().unwrap_or_else(|p| p.into_inner());
            if let Some(stream) = self.reserve(&open) {
                return stream;
            }
        }
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = self.reserve(&open) {
            return stream;
        }
        self.close_idle(&mut open);
        if open.len() < self.max {
            open.push(Arc::new(Connection {
                client: crate::transport::Connection::new(self.dialer.clone()),
                in_flight: AtomicUsize::new(0),
                last_used: AtomicU64::new(self.now()),
            }));
            metrics::gauge!("xibaar_fcm_connections").set(open.len() as f64);
            if let Some(stream) = self.reserve(&open) {
                return stream;
            }
        }
        let least = open
            .iter()
            .min_by_key(|c| c.in_flight.load(Ordering::Acquire))
            .expect("the first connection stays open")
            .clone();
        least.in_flight.fetch_add(1, Ordering::AcqRel);
        Stream {
            connection: least,
            started: self.started,
        }
    }

    /// A free stream on the least busy connection, if any has one.
    fn reserve(&self, open: &[Arc<Connection>]) -> Option<Stream> {
        loop {
            let least = open
                .iter()
                .min_by_key(|c| c.in_flight.load(Ordering::Acquire))?;
            let current = least.in_flight.load(Ordering::Acquire);
            if current >= self.streams {
                return None;
            }
            // Another task may have taken the stream since: look again.
            if least
                .in_flight
                .compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(Stream {
                    connection: least.clone(),
                    started: self.started,
                });
            }
        }
    }

    /// Drops connections (beyond the first) that carried nothing for [`IDLE`].
    fn close_idle(&self, open: &mut Vec<Arc<Connection>>) {
        let now = self.now();
        let before = open.len();
        let mut index = 0;
        open.retain(|c| {
            index += 1;
            index == 1
                || c.in_flight.load(Ordering::Acquire) > 0
                || now.saturating_sub(c.last_used.load(Ordering::Relaxed)) < IDLE.as_millis() as u64
        });
        if open.len() != before {
            metrics::gauge!("xibaar_fcm_connections").set(open.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(streams: usize, max: usize) -> Connections {
        let dialer = Arc::new(
            crate::transport::Dialer::new(
                "http://127.0.0.1:9",
                None,
                Duration::from_secs(1),
                &hyper_util::client::proxy::matcher::Matcher::builder().build(),
            )
            .unwrap(),
        );
        Connections::new(dialer, streams, max)
    }

    #[test]
    fn a_connection_is_opened_when_every_open_one_is_full_and_requests_spread_evenly() {
        let pool = pool(2, 3);
        let held: Vec<Stream> = (0..6).map(|_| pool.stream()).collect();
        assert_eq!(pool.len(), 3);
        let open = pool.open.read().unwrap();
        for c in open.iter() {
            assert_eq!(c.in_flight.load(Ordering::Acquire), 2);
        }
        drop(open);
        // Past the maximum the least busy one takes it.
        let extra = pool.stream();
        assert_eq!(pool.len(), 3);
        drop(extra);
        drop(held);
        let open = pool.open.read().unwrap();
        assert!(
            open.iter()
                .all(|c| c.in_flight.load(Ordering::Acquire) == 0)
        );
    }

    #[test]
    fn a_freed_stream_is_used_before_a_new_connection() {
        let pool = pool(2, 4);
        let a = pool.stream();
        let _b = pool.stream();
        drop(a);
        let _c = pool.stream();
        assert_eq!(pool.len(), 1);
    }
}
