//! gatewarden, the daemon: tasks, MQTT, the cluster, the admin API, the CLI,
//! the console and the demo. Decisions come from `domain`, persistence from
//! `store`, settings from `config`; vision runs in the `gatewarden-vision`
//! child process and is reached only through `vision_protocol`, so this crate
//! links neither OpenCV nor ONNX Runtime. See ARCHITECTURE.md.

pub mod admin;
pub mod alert;
pub mod cluster;
pub mod daemon;
pub mod demo;
pub mod enrolment;
pub mod gate;
pub mod monitor;
pub mod mqtt;
pub mod retention;
pub mod telemetry;
pub mod upkeep;
