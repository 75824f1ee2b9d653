//! The `xibaar` binary's library: start-up of every role, shared by the subcommands, the
//! local runner and the integration tests.

pub mod cli;
mod commands;
mod retention;
pub mod startup;

pub use startup::{Roles, run};
