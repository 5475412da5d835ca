//! Private plans on a Ballista cluster started here: one scheduler and two
//! executors on loopback, in this process.

mod agreement;
