//! Gate access: who may pass (`policy`, a pure state machine), the entry log
//! with its hash chain (`log`), ID-number validation for visitors (`idcard`).
//! Face is never the only way in: PIN, card and QR open the gate the same way.

pub mod actuator;
pub mod idcard;
pub mod log;
pub mod plate;
pub mod policy;
pub mod task;
