//! Alert delivery, the daemon side: one HTTP `channel::Sender` per configured
//! channel, the `outbox` worker that drains the durable outbox through it,
//! signed acknowledgement links and the ladder lookup. What an alert is, when
//! it fires and what it says are in `domain::alert`.

pub mod channel;
pub mod outbox;

use config::Config;
use domain::alert::{token, Alert, Level};
use domain::clock::{chrono_dur, Clock};
use store::Store;

/// Signs acknowledgement links (`<public_url>/ack/<token>`).
#[derive(Clone)]
pub struct AckLinks {
    pub secret: Vec<u8>,
    pub ttl: std::time::Duration,
    pub base: String,
    pub clock: Clock,
}

impl AckLinks {
    /// A link for one ladder level of this episode of `alert`.
    pub fn url(&self, alert: &Alert, level: usize) -> String {
        let exp = self.clock.now() + chrono_dur(self.ttl);
        let claim = token::AckClaim { alert: alert.id, level, episode: token::episode_of(alert.opened_at) };
        format!("{}/ack/{}", self.base, token::sign(&self.secret, &claim, exp))
    }
}

/// The ladder for a grid: the store's, else the config's default.
pub fn ladder(store: &Store, cfg: &Config, grid: &str) -> Vec<Level> {
    match store.get_ladder(grid) {
        Ok(Some(l)) if !l.is_empty() => l,
        _ => cfg.alert.ladder.iter().map(|l| Level { name: l.name.clone(), channels: l.channels.clone(), staff: l.staff.clone() }).collect(),
    }
}
