//! Waiting on a condition instead of sleeping a guessed time.
//!
//! Owns the poll-with-deadline loop. A test states what it waits for; the
//! wait ends as soon as that holds, and fails loudly (naming it) when the
//! deadline passes, so a slow machine costs time, not a flaky result.

use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause between polls; it doubles up to [`MAX_POLL`], so a
/// condition that holds soon is seen soon, and one that costs a process
/// start (psql) is not polled hundreds of times a second.
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(200);

/// Polls `condition` until it returns true; panics naming `what` if it
/// has not within `timeout`. Returns how long the wait took.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    poll(timeout, &format!("until {what}"), || {
        condition().then_some(())
    });
    started.elapsed()
}

/// Polls `probe` until it returns `Some`, and returns that value (a
/// server's first answer, say); panics naming `what` if it has not
/// within `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll(timeout, &format!("for {what}"), probe)
}

/// The loop of [`wait_until`] and [`wait_for`]; `waiting` completes
/// "timed out … waiting" in the panic message.
fn poll<T>(timeout: Duration, waiting: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    let mut pause = FIRST_POLL;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting {waiting}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// [`wait_until`] for async tests: polls `condition` on the caller's
/// runtime, sleeping with tokio between polls so other tasks run.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let mut pause = FIRST_POLL;
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        wait_until(Duration::from_secs(5), "the third poll", || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn wait_for_returns_the_first_value_probed() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(5), "the second poll", || {
            n += 1;
            (n == 2).then_some(n * 10)
        });
        assert_eq!(got, 20);
    }

    #[test]
    #[should_panic(expected = "waiting for a value that never comes")]
    fn wait_for_panics_at_the_deadline() {
        wait_for::<()>(
            Duration::from_millis(30),
            "a value that never comes",
            || None,
        );
    }

    #[test]
    #[should_panic(expected = "waiting until never")]
    fn panics_at_the_deadline() {
        wait_until(Duration::from_millis(30), "never", || false);
    }

    #[tokio::test]
    async fn async_wait_returns_once_the_condition_holds() {
        let mut n = 0;
        wait_until_async(Duration::from_secs(5), "the second poll", || {
            n += 1;
            let done = n == 2;
            async move { done }
        })
        .await;
        assert_eq!(n, 2);
    }
}
