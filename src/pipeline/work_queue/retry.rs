//! When a failed job comes back: exponential backoff with jitter, Microsoft's `Retry-After`
//! honoured up to [`MAX_RETRY_AFTER`], never past the content's expiration, and at most
//! `O365_MAX_ATTEMPTS` attempts ([`RetryPolicy`]).

use super::names::RETRY_TIERS;
use std::time::Duration;

/// The longest `Retry-After` honoured. Microsoft does not document the header; a value of years
/// would park a blob past its 7-day retention at the head of a tier, blocking all behind it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// A retry is scheduled at least this long before the content expires at Microsoft.
pub(super) const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The longest a deferred job waits in a tier before it is looked at again (the longest tier):
/// a longer TTL would hold the head of that tier for longer than its name says.
pub(super) const MAX_DEFER: Duration = RETRY_TIERS[RETRY_TIERS.len() - 1].0;

/// How failed jobs are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    /// How long a blob just enqueued is taken to be in flight ([`in_flight_guard`](super::in_flight_guard)).
    pub in_flight_guard: Duration,
}

/// Backoff for attempt `n` (1-based): `base·2^(n-1)` capped at `max`, with "equal jitter"
/// (half fixed, half random) so retries of many blobs spread out; never less than `Retry-After`
/// (itself capped at [`MAX_RETRY_AFTER`]).
pub fn backoff(
    base: Duration,
    max: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(max);
    let half = exp / 2;
    let jitter = Duration::from_millis(rand::random_range(0..=half.as_millis().max(1) as u64));
    (half + jitter).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after_up_to_an_hour() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(600);
        for attempt in 1..=12 {
            let d = backoff(base, max, attempt, None);
            let exp = (base * 2u32.pow(attempt - 1)).min(max);
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {attempt}: {d:?} not in [{:?}, {exp:?}]",
                exp / 2
            );
        }
        assert!(backoff(base, max, 1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
        let absurd = backoff(base, max, 1, Some(Duration::from_secs(100_000_000)));
        assert_eq!(absurd, MAX_RETRY_AFTER);
    }
}
