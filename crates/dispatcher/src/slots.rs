//! The sender's places at FCM, given to the most urgent waiting push first.
//!
//! A page of a hundred low-priority devices asks for a hundred places; an urgent page taken a
//! moment later must not queue behind them. tokio's `Semaphore` serves its waiters first come
//! first served, and no maintained crate offers a semaphore whose waiters carry a priority, so
//! this one is written here: four queues of waiters, the most urgent served first, except that
//! every `fair_every`-th place goes to a lower level in turn while one waits (the same bounded
//! share as [`crate::PriorityMux`]).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;
use xibaar_core::Priority;

pub struct Slots {
    state: Mutex<State>,
    fair_every: u64,
}

struct State {
    free: usize,
    waiting: [VecDeque<oneshot::Sender<Slot>>; 4],
    given: u64,
    next_fair_lane: usize,
}

/// One place at FCM; given back when dropped.
pub struct Slot {
    slots: Option<Arc<Slots>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            Slots::release(slots);
        }
    }
}

impl Slots {
    pub fn new(places: usize, fair_every: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: places.max(1),
                waiting: Default::default(),
                given: 0,
                next_fair_lane: 1,
            }),
            fair_every: fair_every.max(2),
        })
    }

    /// Waits for a place. Dropping the future gives up the wait (and any place that reached it).
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Slot {
        let receiver = {
            let mut state = self.state.lock().expect("slots lock");
            if state.free > 0 && state.waiting.iter().all(VecDeque::is_empty) {
                state.free -= 1;
                return Slot {
                    slots: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            state.waiting[priority.rank()].push_back(tx);
            rx
        };
        match receiver.await {
            Ok(slot) => slot,
            // Senders are only dropped with the `Slots` themselves, which this `Arc` keeps.
            Err(_) => unreachable!("a waiter's sender is dropped only after it was answered"),
        }
    }

    /// Free places right now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.state.lock().expect("slots lock").free
    }

    fn release(slots: Arc<Self>) {
        let mut slot = Slot {
            slots: Some(slots.clone()),
        };
        let mut state = slots.state.lock().expect("slots lock");
        loop {
            let fair_turn = state.given % slots.fair_every == slots.fair_every - 1;
            let start = if fair_turn { state.next_fair_lane } else { 0 };
            let next = (0..4)
                .map(|offset| (start + offset) % 4)
                .find(|lane| !state.waiting[*lane].is_empty());
            let Some(lane) = next else {
                state.free += 1;
                // The place is counted free again: the `Slot` must not give it back twice.
                slot.slots = None;
                return;
            };
            let waiter = state.waiting[lane].pop_front().expect("not empty");
            match waiter.send(slot) {
                Ok(()) => {
                    state.given += 1;
                    if fair_turn {
                        state.next_fair_lane = lane.max(1) % 3 + 1;
                    }
                    return;
                }
                // That waiter gave up: offer the place to the next one.
                Err(back) => slot = back,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_freed_place_goes_to_the_most_urgent_waiter() {
        let slots = Slots::new(1, 1000);
        let held = slots.acquire(Priority::Low).await;
        let low = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Priority::Low).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let urgent = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Priority::Urgent).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let urgent_slot = urgent.await.unwrap();
        assert!(
            !low.is_finished(),
            "the low waiter came first but must wait"
        );
        drop(urgent_slot);
        let low_slot = low.await.unwrap();
        assert_eq!(slots.available(), 0);
        drop(low_slot);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_place() {
        let slots = Slots::new(1, 1000);
        let held = slots.acquire(Priority::High).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), slots.acquire(Priority::Urgent)).await;
        assert!(gave_up.is_err());
        drop(held);
        assert_eq!(slots.available(), 1);
        let _again = slots.acquire(Priority::Low).await;
        assert_eq!(slots.available(), 0);
    }

    #[tokio::test]
    async fn lower_levels_get_a_bounded_share_while_urgent_work_waits() {
        let slots = Slots::new(1, 4);
        let held = slots.acquire(Priority::Urgent).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (i, priority) in std::iter::repeat_n(Priority::Urgent, 12)
            .chain(std::iter::repeat_n(Priority::Low, 3))
            .enumerate()
        {
            let (slots, order) = (slots.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = slots.acquire(priority).await;
                order.lock().unwrap().push((i, priority));
                tokio::task::yield_now().await;
                drop(slot);
            }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let order = order.lock().unwrap();
        let first_low = order.iter().position(|(_, p)| *p == Priority::Low).unwrap();
        assert!(first_low < 4, "low waited behind every urgent: {order:?}");
        assert_eq!(order.len(), 15);
    }
}
