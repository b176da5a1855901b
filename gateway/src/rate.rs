//! A token bucket: `rate` tokens per second, at most `burst` saved up.
//!
//! On tokio's clock, like every timer of a session, so paused-time tests govern it too.

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// [`TokenBucket::try_take`] at a given instant (for tests and property checks).
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn refills_on_tokios_clock() {
        let mut b = TokenBucket::new(10.0, 5.0);
        assert_eq!((0..20).filter(|_| b.try_take()).count(), 5);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!((0..20).filter(|_| b.try_take()).count(), 3);
    }

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0);
        b.last = start;
        let taken = (0..20).filter(|_| b.try_take_at(start)).count();
        assert_eq!(taken, 5);
        // one second later: ten more tokens, capped at the burst of five
        let later = start + Duration::from_secs(1);
        let taken = (0..20).filter(|_| b.try_take_at(later)).count();
        assert_eq!(taken, 5);
        // 100 ms later: one token
        let later = later + Duration::from_millis(100);
        assert!(b.try_take_at(later));
        assert!(!b.try_take_at(later));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// Over any schedule of attempts, the bucket never grants more than
        /// `burst + rate × elapsed` tokens.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 0.0f64..1000.0,
            burst in 1.0f64..100.0,
            gaps_ms in proptest::collection::vec(0u64..200, 1..200),
        ) {
            let start = Instant::now();
            let mut bucket = TokenBucket::new(rate, burst);
            bucket.last = start;
            let mut now = start;
            let mut granted = 0u64;
            for gap in gaps_ms {
                now += Duration::from_millis(gap);
                if bucket.try_take_at(now) {
                    granted += 1;
                }
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            prop_assert!(granted as f64 <= (burst + rate * elapsed + 1e-9).floor(), "granted {granted}");
        }
    }
}
