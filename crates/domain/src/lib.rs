//! gatewarden's decisions, with no IO: presence, the alert engine and its
//! messages, gate policy, plate matching, ID numbers, the entry-log chain, the
//! cluster lease and the outbox's delivery rules. Every state machine takes
//! `now` and returns actions, so a two-day rule is tested in microseconds.
//!
//! This crate must not depend on tokio, sled, reqwest, axum, rumqttc, opencv
//! or ort (deploy/check-deps.sh refuses it).

pub mod alert;
pub mod ble;
pub mod clock;
pub mod cluster;
pub mod gate;
pub mod mask;
pub mod presence;
