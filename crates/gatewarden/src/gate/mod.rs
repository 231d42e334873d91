//! Gate access, the daemon side: the actuators that open a barrier and the
//! gate task that runs `domain::gate::policy`. Face is never the only way in:
//! PIN, card and QR open the gate the same way.

pub mod actuator;
pub mod task;
