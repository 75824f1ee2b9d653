//! The `sources` role.

pub mod format;
pub mod row;
pub mod template;
