//! The pods waiting for a decision, as kube-scheduler queues them: an active FIFO, and the
//! pods that fit nowhere, which wait for a change in the cluster (a node added or changed, a
//! pod removed) and for their back-off (1 s doubling to 10 s) before they are tried again.
//! Nothing waits longer than [`MAX_UNSCHEDULABLE`] without another try. Time comes in as an
//! argument; the queue never reads the clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A pod's identity: namespace and name.
pub type Key = (String, String);

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Parked {
    attempts: u32,
    /// Not before this instant (back-off).
    not_before: Instant,
    /// When it was parked (for the periodic flush).
    since: Instant,
    /// The cluster changed since it was parked.
    moved: bool,
}

#[derive(Debug)]
pub struct Queue<T> {
    items: HashMap<Key, T>,
    active: VecDeque<Key>,
    parked: HashMap<Key, Parked>,
    attempts: HashMap<Key, u32>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: HashMap::new(),
            active: VecDeque::new(),
            parked: HashMap::new(),
            attempts: HashMap::new(),
        }
    }
}

pub fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

impl<T> Queue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new or changed pod that needs a node. A changed pod that was parked is tried again
    /// once its back-off ends (its change may be what makes it fit).
    pub fn add(&mut self, key: Key, item: T) {
        let fresh = self.items.insert(key.clone(), item).is_none();
        if let Some(p) = self.parked.get_mut(&key) {
            p.moved = true;
        } else if fresh {
            self.active.push_back(key);
        }
    }

    /// The pod is bound, deleted or no longer ours.
    pub fn remove(&mut self, key: &Key) -> Option<T> {
        self.parked.remove(key);
        self.attempts.remove(key);
        // The active entry, if any, is skipped by `pop`.
        self.items.remove(key)
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut T> {
        self.items.get_mut(key)
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.items.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// The next pod to decide on; it stays in the queue (as "in flight") until it is
    /// removed, parked, or retried.
    pub fn pop(&mut self) -> Option<(Key, &T)> {
        while let Some(key) = self.active.pop_front() {
            if self.items.contains_key(&key) && !self.parked.contains_key(&key) {
                let item = self.items.get(&key).expect("checked");
                return Some((key, item));
            }
        }
        None
    }

    /// It fits nowhere now: wait for a change in the cluster and for the back-off.
    pub fn park(&mut self, key: Key, now: Instant) {
        if !self.items.contains_key(&key) {
            return;
        }
        let attempts = self.attempts.entry(key.clone()).or_insert(0);
        *attempts += 1;
        self.parked.insert(
            key,
            Parked {
                attempts: *attempts,
                not_before: now + backoff(*attempts),
                since: now,
                moved: false,
            },
        );
    }

    /// Try again after a back-off, whatever the cluster does (a failed bind).
    pub fn retry(&mut self, key: Key, now: Instant) {
        self.park(key.clone(), now);
        if let Some(p) = self.parked.get_mut(&key) {
            p.moved = true;
        }
    }

    /// Something changed that may make parked pods fit.
    pub fn cluster_changed(&mut self) {
        for p in self.parked.values_mut() {
            p.moved = true;
        }
    }

    /// Make active every parked pod whose turn has come; returns when the next one will.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut ready = Vec::new();
        for (key, p) in &self.parked {
            let due = if p.moved {
                p.not_before
            } else {
                (p.since + MAX_UNSCHEDULABLE).max(p.not_before)
            };
            if due <= now {
                ready.push(key.clone());
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        ready.sort_by_key(|k| self.parked[k].attempts);
        for key in ready {
            self.parked.remove(&key);
            self.active.push_back(key);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> Key {
        ("default".into(), n.into())
    }

    #[test]
    fn parked_pods_wait_for_a_change_and_their_back_off() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add(k("a"), 1);
        q.add(k("b"), 2);
        assert_eq!(q.pop().unwrap().0, k("a"));
        q.park(k("a"), t0);
        assert_eq!(q.pop().unwrap().0, k("b"));
        assert!(q.pop().is_none());
        // No change: still parked after its back-off.
        q.tick(t0 + Duration::from_secs(2));
        assert!(q.pop().is_none());
        // A change, but the back-off (1 s) has not run out.
        q.cluster_changed();
        let next = q.tick(t0 + Duration::from_millis(500));
        assert_eq!(next, Some(t0 + Duration::from_secs(1)));
        assert!(q.pop().is_none());
        q.tick(t0 + Duration::from_secs(1));
        assert_eq!(q.pop().unwrap().0, k("a"));
        // The second failure doubles the back-off.
        q.park(k("a"), t0);
        q.cluster_changed();
        assert_eq!(q.tick(t0), Some(t0 + Duration::from_secs(2)));
        // Without any change it is retried after MAX_UNSCHEDULABLE.
        q.park(k("b"), t0);
        q.tick(t0 + MAX_UNSCHEDULABLE);
        let mut got: Vec<Key> = Vec::new();
        while let Some((key, _)) = q.pop() {
            got.push(key);
        }
        assert_eq!(got, vec![k("b"), k("a")]);
        q.remove(&k("a"));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn back_off_doubles_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(9), MAX_BACKOFF);
    }
}
