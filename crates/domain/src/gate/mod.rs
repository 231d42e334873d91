//! Gate access decisions: the `Policy` state machine, GA 36 plates, GB 11643
//! ID numbers and the hash-chained entry log.

pub mod idcard;
pub mod log;
pub mod plate;
pub mod policy;
