//! Time as an injected dependency: absence (days), pass expiry and retry backoff
//! all read `Clock::now()`, so tests can move time without sleeping.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub type Timestamp = DateTime<Utc>;

/// The daemon's source of "now". Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock. Only a test clock ever moves it.
    offset_ms: Arc<AtomicI64>,
    adjustable: bool,
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        Self { offset_ms: Arc::new(AtomicI64::new(0)), adjustable: false }
    }

    /// A clock that follows the system clock but can be moved forward by tests
    /// (`[debug] manual_clock = true`). Time keeps flowing between jumps, so real
    /// backoff timers still fire.
    pub fn adjustable() -> Self {
        Self { offset_ms: Arc::new(AtomicI64::new(0)), adjustable: true }
    }

    pub fn now(&self) -> Timestamp {
        Utc::now() + ChronoDuration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn is_adjustable(&self) -> bool {
        self.adjustable
    }

    /// Move time forward. Returns the new now, or None on a system clock.
    /// Time never runs backwards: a negative step is refused.
    pub fn advance(&self, by: std::time::Duration) -> Option<Timestamp> {
        if !self.adjustable {
            return None;
        }
        self.offset_ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
        Some(self.now())
    }

    /// Jump to an absolute time (only forward).
    pub fn set(&self, to: Timestamp) -> Option<Timestamp> {
        if !self.adjustable {
            return None;
        }
        let delta = (to - Utc::now()).num_milliseconds();
        self.offset_ms.fetch_max(delta, Ordering::Relaxed);
        Some(self.now())
    }
}

/// China Standard Time (UTC+8): what staff and administrators read.
pub fn cst() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// "2026-11-23 10:00" in China time.
pub fn local_minute(t: Timestamp) -> String {
    t.with_timezone(&cst()).format("%Y-%m-%d %H:%M").to_string()
}

/// Convert a std duration to chrono, saturating instead of panicking on absurd values.
pub fn chrono_dur(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustable_clock_moves_forward_and_never_back() {
        let c = Clock::adjustable();
        let t0 = c.now();
        let t1 = c.advance(std::time::Duration::from_secs(49 * 3600)).unwrap();
        assert!(t1 - t0 >= ChronoDuration::hours(49));
        c.set(t0).unwrap();
        assert!(c.now() >= t1);
    }

    #[test]
    fn system_clock_refuses_to_move() {
        assert!(Clock::system().advance(std::time::Duration::from_secs(1)).is_none());
    }
}
