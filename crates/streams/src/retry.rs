//! Retrying what NATS refuses for a while (a node lost, a stream leader being elected, the
//! cluster still forming): waits that grow, with jitter so that many processes do not retry in
//! step, up to a bound; and warnings at a bounded rate, so a loop retrying for seconds logs a
//! line a second with how many it held back, not thousands.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use backon::BackoffBuilder;

/// Jittered exponential waits between `min` and `max`, for as long as the failures last.
pub struct Backoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff").finish_non_exhaustive()
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The waits of a NATS operation that failed: 50 ms, doubling, at most 2 s.
    pub fn for_nats() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(2))
    }

    /// How long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        // Without a maximum number of tries the iterator never ends.
        self.delays.next().unwrap_or(self.max)
    }

    /// After a success: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// Lets a repeated warning through at most once per interval and counts the ones held back.
#[derive(Debug)]
pub struct WarnEvery {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl WarnEvery {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// One a second.
    pub fn second() -> Self {
        Self::new(Duration::from_secs(1))
    }

    /// `Some(n)` when this occurrence may be logged, `n` being how many were held back since the
    /// last one logged; `None` when it is to be held back.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// How long one try of [`within`] may go unanswered before it is made again. A request that
/// reached a leader as it died, or was sent while its group had none, is never answered (the
/// group's followers drop it): left to the client's own timeout (5 s) it would hold the work that
/// long past the election. Tried again after 2 s, it reaches the new leader within about 2 s of
/// its election. A request that was only slow is repeated harmlessly: [`within`] is for
/// requests JetStream deduplicates or whose repetition is harmless.
pub const UNANSWERED: Duration = Duration::from_secs(2);

/// Tries `attempt` until it succeeds, fails for good (`retriable` says no), or `within` has
/// passed, giving each try [`UNANSWERED`] and waiting between tries with [`Backoff::for_nats`]:
/// for a request answered within a deadline that may meet a leader election (4–10 s).
/// `Err(None)`: the time ran out before any answer; `Err(Some(e))`: the last failure.
pub async fn within<T, E, F, Fut>(
    within: Duration,
    retriable: impl Fn(&E) -> bool,
    attempt: F,
) -> Result<T, Option<E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    within_giving_each(within, UNANSWERED, retriable, attempt).await
}

/// [`within`] giving each try `unanswered` instead of [`UNANSWERED`]: for a request on the
/// path of every push, made again sooner.
pub async fn within_giving_each<T, E, F, Fut>(
    within: Duration,
    unanswered: Duration,
    retriable: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, Option<E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut backoff = Backoff::for_nats();
    let mut last_error = None;
    loop {
        let give = (tokio::time::Instant::now() + unanswered).min(deadline);
        match tokio::time::timeout_at(give, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if retriable(&e) => {
                tracing::debug!(error = %e, "JetStream refused; retrying");
                last_error = Some(e);
            }
            Ok(Err(e)) => return Err(Some(e)),
            Err(_) if give == deadline => return Err(last_error),
            // Unanswered: most likely sent to a leader that is gone. Tried again at once.
            Err(_) => {
                tracing::debug!(after = ?unanswered, "JetStream did not answer; retrying");
                continue;
            }
        }
        let wait = backoff.next_delay();
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(last_error);
        }
        tokio::time::sleep(wait).await;
    }
}

/// Tries `attempt` until it succeeds, waiting between tries with `backoff` and warning at most
/// once per `warn_every` (`what`: what is being waited for); `None` when `stopped` completes
/// first. For a start that waits for a server (NATS, Postgres) rather than failing.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    warn_every: Duration,
    stopped: impl Future<Output = ()>,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut warn = WarnEvery::new(warn_every);
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let error = tokio::select! {
            _ = &mut stopped => return None,
            result = attempt() => match result {
                Ok(value) => return Some(value),
                Err(e) => e,
            },
        };
        let wait = backoff.next_delay();
        if let Some(held_back) = warn.allow() {
            tracing::warn!(error = %error, retry_in = ?wait, held_back, "{what}; waiting");
        }
        tokio::select! {
            _ = &mut stopped => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_within_their_bounds_and_start_again_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let waits: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        // With jitter, each wait is between the step's delay and twice it, capped.
        assert!(
            waits.iter().all(|w| *w >= Duration::from_millis(10)),
            "{waits:?}"
        );
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(400)),
            "{waits:?}"
        );
        assert!(waits[8] >= Duration::from_millis(200), "{waits:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(20));
    }

    #[test]
    fn a_warning_is_let_through_once_per_interval_with_the_count_held_back() {
        let mut warn = WarnEvery::new(Duration::from_millis(50));
        assert_eq!(warn.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(warn.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(warn.allow(), Some(1000));
    }

    #[tokio::test]
    async fn until_ok_retries_until_an_answer_and_gives_up_only_when_stopped() {
        let fast = || Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        let mut tries = 0;
        let answer = until_ok(
            "test",
            fast(),
            Duration::from_secs(1),
            std::future::pending(),
            || {
                tries += 1;
                let n = tries;
                async move { if n < 3 { Err("not yet") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(answer, Some(3));
        let never: Option<()> = until_ok(
            "test",
            fast(),
            Duration::from_secs(1),
            tokio::time::sleep(Duration::from_millis(30)),
            || async { Err::<(), _>("down") },
        )
        .await;
        assert_eq!(never, None);
    }

    #[tokio::test]
    async fn within_retries_what_may_pass_gives_up_on_what_cannot_and_keeps_to_its_deadline() {
        let ok: Result<u32, Option<String>> = within(
            Duration::from_secs(5),
            |_: &String| true,
            numbered(|n| async move {
                if n < 3 {
                    Err("election".to_owned())
                } else {
                    Ok(n)
                }
            }),
        )
        .await;
        assert_eq!(ok, Ok(3));
        let refused: Result<(), Option<String>> = within(
            Duration::from_secs(5),
            |e: &String| e != "for good",
            || async { Err("for good".to_owned()) },
        )
        .await;
        assert_eq!(refused, Err(Some("for good".to_owned())));
        let started = tokio::time::Instant::now();
        let late: Result<(), Option<String>> = within(
            Duration::from_millis(300),
            |_: &String| true,
            || async { Err("election".to_owned()) },
        )
        .await;
        assert_eq!(late, Err(Some("election".to_owned())));
        assert!(started.elapsed() < Duration::from_secs(2));
        let silent: Result<(), Option<String>> = within(
            Duration::from_millis(100),
            |_: &String| true,
            std::future::pending::<Result<(), String>>,
        )
        .await;
        assert_eq!(silent, Err(None));
    }

    /// The tries of `answer`, which is given each try's number, from 1.
    fn numbered<T, Fut: Future<Output = T>>(answer: impl Fn(u32) -> Fut) -> impl FnMut() -> Fut {
        let mut tries = 0;
        move || {
            tries += 1;
            answer(tries)
        }
    }

    /// A try sent to a leader that died is never answered: it is made again after
    /// `unanswered`, not left to the client's timeout.
    #[tokio::test(start_paused = true)]
    async fn a_try_left_unanswered_is_made_again_without_waiting_out_the_client_timeout() {
        let started = tokio::time::Instant::now();
        let answered: Result<u32, Option<String>> = within_giving_each(
            Duration::from_secs(15),
            Duration::from_secs(2),
            |_: &String| true,
            numbered(|n| async move {
                if n < 3 {
                    // The client's own timeout.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Err("timed out".to_owned())
                } else {
                    Ok(n)
                }
            }),
        )
        .await;
        assert_eq!(answered, Ok(3));
        assert_eq!(started.elapsed(), Duration::from_secs(4));
        // Unanswered to the end: the last refusal, if any, is what is reported.
        let refused_then_silent: Result<(), Option<String>> = within_giving_each(
            Duration::from_secs(3),
            Duration::from_secs(2),
            |_: &String| true,
            numbered(|n| async move {
                if n == 1 {
                    Err("no leader".to_owned())
                } else {
                    std::future::pending().await
                }
            }),
        )
        .await;
        assert_eq!(refused_then_silent, Err(Some("no leader".to_owned())));
    }
}
