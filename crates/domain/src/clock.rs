//! Time as an injected dependency: absence (days), pass expiry and retry backoff
//! all read `Clock::now()`, so tests can move time without sleeping.
//!
//! Two kinds of test move: `advance` is time passing (the wall clock and the
//! monotonic one move together), `step` is the wall clock being stepped (NTP
//! correcting a clock that ran ahead or behind; either way), which
//! `StepWatch` detects as the two clocks disagreeing.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub type Timestamp = DateTime<Utc>;

/// The daemon's source of "now". Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Milliseconds of simulated elapsed time (wall and monotonic). Only a test clock moves it.
    offset_ms: Arc<AtomicI64>,
    /// Milliseconds the wall clock was stepped by (wall only). Only a test clock moves it.
    step_ms: Arc<AtomicI64>,
    adjustable: bool,
}

/// The process's monotonic origin.
fn origin() -> std::time::Instant {
    static O: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *O.get_or_init(std::time::Instant::now)
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        origin();
        Self { offset_ms: Arc::new(AtomicI64::new(0)), step_ms: Arc::new(AtomicI64::new(0)), adjustable: false }
    }

    /// A clock that follows the system clock but can be moved forward by tests
    /// (`[debug] manual_clock = true`). Time keeps flowing between jumps, so real
    /// backoff timers still fire.
    pub fn adjustable() -> Self {
        origin();
        Self { offset_ms: Arc::new(AtomicI64::new(0)), step_ms: Arc::new(AtomicI64::new(0)), adjustable: true }
    }

    pub fn now(&self) -> Timestamp {
        Utc::now() + ChronoDuration::milliseconds(self.offset_ms.load(Ordering::Relaxed) + self.step_ms.load(Ordering::Relaxed))
    }

    /// Monotonic time since the process started (plus simulated elapsed time):
    /// never stepped, so a difference against `now()` reveals a wall-clock step.
    pub fn monotonic(&self) -> std::time::Duration {
        origin().elapsed() + std::time::Duration::from_millis(self.offset_ms.load(Ordering::Relaxed).max(0) as u64)
    }

    /// Step the wall clock alone, forwards or backwards, as NTP does. None on a system clock.
    pub fn step(&self, by_ms: i64) -> Option<Timestamp> {
        if !self.adjustable {
            return None;
        }
        self.step_ms.fetch_add(by_ms, Ordering::Relaxed);
        Some(self.now())
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

    /// Jump to an absolute time (only forward; as time passing).
    pub fn set(&self, to: Timestamp) -> Option<Timestamp> {
        if !self.adjustable {
            return None;
        }
        let delta = (to - Utc::now()).num_milliseconds() - self.step_ms.load(Ordering::Relaxed);
        self.offset_ms.fetch_max(delta, Ordering::Relaxed);
        Some(self.now())
    }
}

/// Detects wall-clock steps: between two readings, the wall clock moved by a
/// different amount than the monotonic one.
#[derive(Debug, Clone)]
pub struct StepWatch {
    last: Option<(Timestamp, std::time::Duration)>,
    threshold: ChronoDuration,
}

impl StepWatch {
    /// Differences smaller than `threshold` are slews and drift, not steps.
    pub fn new(threshold: std::time::Duration) -> Self {
        Self { last: None, threshold: chrono_dur(threshold) }
    }

    /// A reading of both clocks; Some(step) when the wall clock jumped
    /// (positive: forward) since the previous reading.
    pub fn observe(&mut self, wall: Timestamp, mono: std::time::Duration) -> Option<ChronoDuration> {
        let step = self.last.map(|(w, m)| (wall - w) - chrono_dur(mono.saturating_sub(m)));
        self.last = Some((wall, mono));
        step.filter(|d| d.abs() >= self.threshold)
    }
}

/// A timestamp re-read after a step of `by` detected at `now`: one taken in
/// the old frame (at or after `since`) moves with the clock; none may lie in
/// the future.
pub fn reanchor(t: Timestamp, since: Timestamp, by: ChronoDuration, now: Timestamp) -> Timestamp {
    let t = if t >= since { t + by } else { t };
    t.min(now)
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
    fn a_step_either_way_is_seen_and_time_passing_is_not() {
        let c = Clock::adjustable();
        let mut w = StepWatch::new(std::time::Duration::from_secs(120));
        assert_eq!(w.observe(c.now(), c.monotonic()), None);
        c.advance(std::time::Duration::from_secs(49 * 3600));
        assert_eq!(w.observe(c.now(), c.monotonic()), None, "time passing is no step");
        c.step(-3 * 3600 * 1000);
        let back = w.observe(c.now(), c.monotonic()).expect("a backward step");
        assert!((back + ChronoDuration::hours(3)).num_seconds().abs() <= 1, "{back}");
        c.step(30 * 3600 * 1000);
        let fwd = w.observe(c.now(), c.monotonic()).expect("a forward step");
        assert!((fwd - ChronoDuration::hours(30)).num_seconds().abs() <= 1, "{fwd}");
        c.step(60 * 1000);
        assert_eq!(w.observe(c.now(), c.monotonic()), None, "a minute is under the threshold");
    }

    #[test]
    fn reanchoring_moves_old_frame_times_and_keeps_nothing_in_the_future() {
        let t = |h: i64| DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap();
        // The clock ran 30 h ahead from t(0); NTP steps it back at t(40) (really t(10)).
        let (since, by, now) = (t(0), ChronoDuration::hours(-30), t(10));
        assert_eq!(reanchor(t(35), since, by, now), t(5), "seen while ahead: moved back");
        assert_eq!(reanchor(t(-5), since, by, now), t(-5), "from before: untouched");
        assert_eq!(reanchor(t(20), t(50), ChronoDuration::zero(), now), now, "never in the future");
    }

    #[test]
    fn system_clock_refuses_to_move() {
        assert!(Clock::system().advance(std::time::Duration::from_secs(1)).is_none());
    }
}
