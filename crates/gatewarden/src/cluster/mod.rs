//! Several boxes per site: the daemon side. The lease state machine and the
//! cluster messages are pure (`domain::cluster`); enrolment sync, which
//! verifies, applies to the store and fans out, lives here.

pub mod sync;
