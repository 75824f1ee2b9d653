//! Urgent-first selection across the four priority lanes.
//!
//! JetStream priority groups rank pulling clients, not messages, so ordering by priority is done
//! here: each pick polls the lanes most urgent first and takes the first ready message. Every
//! `fair_every`-th pick starts at a lower lane instead (round robin over high, normal, low), so
//! a lower level always gets at least one pick in `fair_every` while it has work: bounded
//! delay for urgent, no starvation for the rest.

use std::task::Poll;

use futures::{Stream, StreamExt};
use xibaar_core::Priority;

pub struct PriorityMux<S> {
    lanes: [Option<S>; 4],
    picks: u64,
    fair_every: u64,
    next_fair_lane: usize,
}

impl<S: Stream + Unpin> PriorityMux<S> {
    /// `lanes` in [`Priority::ALL`] order.
    pub fn new(lanes: [S; 4], fair_every: u64) -> Self {
        Self {
            lanes: lanes.map(Some),
            picks: 0,
            fair_every: fair_every.max(2),
            next_fair_lane: 1,
        }
    }

    /// The next item, from the most urgent lane that has one (but see the fairness rule).
    /// `None` once every lane has ended.
    pub async fn next(&mut self) -> Option<(Priority, S::Item)> {
        let fair_turn = self.picks % self.fair_every == self.fair_every - 1;
        let start = if fair_turn { self.next_fair_lane } else { 0 };
        std::future::poll_fn(|cx| {
            let mut open = false;
            for offset in 0..4 {
                let lane = (start + offset) % 4;
                let Some(stream) = self.lanes[lane].as_mut() else {
                    continue;
                };
                match stream.poll_next_unpin(cx) {
                    Poll::Ready(Some(item)) => {
                        self.picks += 1;
                        if fair_turn {
                            self.next_fair_lane = self.next_fair_lane % 3 + 1;
                        }
                        return Poll::Ready(Some((Priority::ALL[lane], item)));
                    }
                    Poll::Ready(None) => self.lanes[lane] = None,
                    Poll::Pending => open = true,
                }
            }
            if open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;

    use super::*;

    fn lanes(counts: [usize; 4]) -> [stream::Iter<std::vec::IntoIter<usize>>; 4] {
        counts.map(|n| stream::iter((0..n).collect::<Vec<_>>()))
    }

    #[tokio::test]
    async fn urgent_work_is_taken_first() {
        let mut mux = PriorityMux::new(lanes([3, 3, 3, 3]), 1000);
        let mut order = Vec::new();
        while let Some((p, _)) = mux.next().await {
            order.push(p);
        }
        let expected: Vec<Priority> = Priority::ALL.iter().flat_map(|p| [*p; 3]).collect();
        assert_eq!(order, expected);
    }

    #[tokio::test]
    async fn lower_levels_get_a_bounded_share_under_a_flood_of_urgent_work() {
        let mut mux = PriorityMux::new(lanes([1000, 0, 0, 10]), 10);
        let mut low_positions = Vec::new();
        let mut i = 0;
        while let Some((p, _)) = mux.next().await {
            if p == Priority::Low {
                low_positions.push(i);
            }
            i += 1;
        }
        assert_eq!(low_positions.len(), 10);
        // With only urgent and low busy, low gets every 10th pick: it is not starved.
        assert!(*low_positions.last().unwrap() < 110, "{low_positions:?}");
    }
}
