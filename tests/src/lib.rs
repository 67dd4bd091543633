//! Shared harness for the end-to-end tests: prerequisites, the workspace's
//! paths, and the real components (engine, sshd, target hosts) they drive.
//!
//! End-to-end tests never skip silently: when `CI` is set, a missing
//! prerequisite fails the test (see [`prereq::require`]).

pub mod deploy;
pub mod load;
pub mod prereq;
pub mod stack;
pub mod testenv;
