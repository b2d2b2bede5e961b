//! Fencing: an agent that has not renewed its Lease for long enough that the server may soon
//! evict its pods stops them first, and starts nothing until a renewal succeeds again. Time
//! is passed in, so the transitions are tested without waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether the agent may run containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The Lease was last renewed at this instant (a request sent then succeeded).
    Renewed(Instant),
    /// No renewal for too long: every container is stopped until one succeeds.
    Fenced,
}

impl Fence {
    /// A renewal sent at `at` succeeded (renewals may answer out of order: the latest sent
    /// counts). Says whether this lifts a fence.
    pub fn renewed(&mut self, at: Instant) -> bool {
        match *self {
            Fence::Fenced => {
                *self = Fence::Renewed(at);
                true
            }
            Fence::Renewed(before) => {
                *self = Fence::Renewed(before.max(at));
                false
            }
        }
    }

    /// Fence if nothing was renewed for `after` by `now`; returns how long it has been when
    /// this fences (not when already fenced).
    pub fn due(&mut self, now: Instant, after: Duration) -> Option<Duration> {
        let Fence::Renewed(at) = *self else {
            return None;
        };
        let since = now.saturating_duration_since(at);
        if since < after {
            return None;
        }
        *self = Fence::Fenced;
        Some(since)
    }

    pub fn is_fenced(&self) -> bool {
        *self == Fence::Fenced
    }
}

/// A [`Fence`] shared by the Lease renewal, the fencing watch and the pod passes.
#[derive(Debug)]
pub struct Fencing(Mutex<Fence>);

impl Fencing {
    pub fn new(now: Instant) -> Fencing {
        Fencing(Mutex::new(Fence::Renewed(now)))
    }

    pub fn renewed(&self, at: Instant) -> bool {
        self.0.lock().expect("fence").renewed(at)
    }

    pub fn due(&self, now: Instant, after: Duration) -> Option<Duration> {
        self.0.lock().expect("fence").due(now, after)
    }

    pub fn is_fenced(&self) -> bool {
        self.0.lock().expect("fence").is_fenced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_comes_after_its_time_and_goes_with_a_renewal() {
        let t0 = Instant::now();
        let after = Duration::from_secs(2);
        let mut f = Fence::Renewed(t0);
        assert_eq!(f.due(t0 + Duration::from_millis(1999), after), None);
        assert_eq!(f.due(t0 + after, after), Some(after));
        assert!(f.is_fenced());
        assert_eq!(f.due(t0 + after * 3, after), None, "fenced once, not again");
        assert!(f.renewed(t0 + after * 4), "a renewal lifts the fence");
        assert!(
            !f.renewed(t0 + after * 5),
            "a renewal while not fenced lifts nothing"
        );
        let renewed = t0 + after * 5;
        assert_eq!(f.due(renewed + Duration::from_millis(1999), after), None);
        // A slow renewal sent earlier that answers last does not take the time back.
        assert!(!f.renewed(t0 + after * 4));
        assert_eq!(f.due(renewed + Duration::from_millis(1999), after), None);
    }
}
