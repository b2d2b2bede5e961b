//! The loop the agent and the instances service both run: a pass over every pod, then the
//! runtime's upkeep (refilling the warm pool) beside the passes, never inside one and never
//! two at once, then a wait for a change or for the pass's own interval.
//!
//! ```text
//!  loop: pass() ─▶ Next { wait, upkeep } ─▶ upkeep? spawn runtime.maintain() if idle
//!        wait for kick.notified() or `wait`
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::Runtime;

/// What a pass asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// How long to wait for a kick before the next pass.
    pub wait: Duration,
    /// Run the runtime's upkeep beside the next passes.
    pub upkeep: bool,
}

/// One pass over what a runner runs.
pub trait Pass: Send {
    fn pass(&mut self) -> impl Future<Output = Next> + Send;
}

/// Run passes until dropped.
pub async fn run(runtime: Arc<dyn Runtime>, kick: Arc<tokio::sync::Notify>, mut pass: impl Pass) {
    let upkeep = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let next = pass.pass().await;
        if next.upkeep {
            if let Ok(guard) = upkeep.clone().try_lock_owned() {
                let rt = runtime.clone();
                tokio::spawn(async move {
                    rt.maintain().await;
                    drop(guard);
                });
            }
        }
        tokio::select! {
            _ = kick.notified() => {}
            _ = tokio::time::sleep(next.wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::mock::MockRuntime;

    /// Counts its passes where the test can read them.
    struct Counting(Arc<std::sync::Mutex<u32>>);

    impl Pass for Counting {
        async fn pass(&mut self) -> Next {
            *self.0.lock().unwrap() += 1;
            Next {
                wait: Duration::from_secs(3600),
                upkeep: true,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_starts_the_next_pass_before_its_wait_is_over() {
        let kick = Arc::new(tokio::sync::Notify::new());
        let passes = Arc::new(std::sync::Mutex::new(0));
        let rt = Arc::new(MockRuntime::new());
        let task = tokio::spawn(run(rt, kick.clone(), Counting(passes.clone())));
        let count = || *passes.lock().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(count(), 1);
        kick.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(count(), 2, "the kick woke the loop");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(count(), 3, "the wait ran out");
        task.abort();
    }
}
