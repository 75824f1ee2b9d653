//! The long-term archive of `XIBAAR_EVENTS` on S3-compatible storage (AWS S3, MinIO): the
//! `archiver` role that seals the stream into segments, and the readers that verify, replay
//! and restore them. The object layout is in [`store`], the line format in [`segment`], and
//! both in docs/archive.md.

pub mod archiver;
pub mod lag;
pub mod lease;
pub mod replay;
pub mod restore;
mod seal;
pub mod segment;
pub mod store;
pub mod verify;

pub use archiver::{Archiver, ArchiverSettings, Position};
pub use lag::{ArchiveLag, archive_lag};
pub use store::{ArchiveStore, IndexEntry, StoreError};
