//! gatewarden: an edge daemon for the gates of a residential compound.
//! See ARCHITECTURE.md for the map of tasks, channels and state owners.

pub mod admin;
pub mod alert;
pub mod capture;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod gate;
pub mod vision;
pub mod mqtt;
pub mod presence;
pub mod store;
pub mod telemetry;
