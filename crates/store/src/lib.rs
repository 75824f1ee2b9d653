//! The Postgres side of Xibaar: the pool, the embedded migrations and the read-model queries
//! that roles other than the projector need (the device registry for fan-out, notification
//! status for the api).

use std::{borrow::Cow, time::Duration};

use sqlx::{
    PgPool, SqlStr,
    migrate::{Migration, MigrationType, Migrator},
    postgres::PgPoolOptions,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the read models failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the read model holds an invalid {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

fn query_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// A lazily connecting pool: roles start (and the api accepts work) while Postgres is down.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(url)
        .map_err(StoreError::Connect)
}

/// `sqlx::FromRow` for a struct read from the columns named like its fields. (The derive needs
/// sqlx's proc-macro crate, which `build.rs` explains the cost of; the compiler still checks
/// that every field is listed.)
macro_rules! from_row {
    ($type:ident { $($field:ident),* $(,)? }) => {
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $type {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(Self { $($field: row.try_get(stringify!($field))?),* })
            }
        }
    };
}

/// Every file of `migrations/`, by name, with its text (see `build.rs`).
const MIGRATION_FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migrations compiled into the binary, as `sqlx::migrate!` would make them of the same
/// files: version and description from the name (`0001_read_models.sql` is 1, "read models"),
/// the text's checksum, no transaction when the text starts with `-- no-transaction`. The
/// databases record each applied migration's checksum, so these must stay alike (a test
/// compares them with what sqlx reads from the folder).
fn migrations() -> Vec<Migration> {
    MIGRATION_FILES
        .iter()
        .map(|(name, sql)| {
            let (version, rest) = name
                .split_once('_')
                .expect("migration files are named VERSION_DESCRIPTION.sql");
            let kind = MigrationType::from_filename(rest);
            Migration::new(
                version.parse().expect("a migration's version is a number"),
                Cow::Owned(rest.trim_end_matches(kind.suffix()).replace('_', " ")),
                kind,
                SqlStr::from_static(sql),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect()
}

/// Applies the migrations compiled into the binary.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    Migrator::with_migrations(migrations()).run(pool).await?;
    Ok(())
}

mod audience;
mod customers;
mod inbox;
mod status;

pub use audience::{PageAfter, Recipient, audience_page, pages_of};
pub use customers::{DeviceView, device_owned_by, devices_of_customer, preferences_of_customer};
pub use inbox::{
    INBOX_CHANNEL, InboxItem, inbox_after, inbox_head, inbox_holds, inbox_new, inbox_page,
    inbox_summary,
};
pub use status::{DailyStat, NotificationStatus, daily_stats, notification_status};

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded migrations are what `sqlx::migrate!` made of the same folder in earlier
    /// builds, checksums included: a database migrated by one build is accepted by the next.
    #[test]
    fn embedded_migrations_match_what_sqlx_reads_from_the_folder() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        // What `sqlx::migrate!` itself calls on the folder.
        let mut read: Vec<Migration> = sqlx::migrate::resolve_blocking(&folder)
            .expect("reading migrations/")
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        read.sort();
        let embedded = migrations();
        assert_eq!(embedded.len(), read.len());
        assert!(read.len() >= 11, "{}", read.len());
        for (e, r) in embedded.iter().zip(&read) {
            assert_eq!(
                (
                    e.version,
                    &e.description,
                    e.migration_type,
                    &e.checksum,
                    e.no_tx
                ),
                (
                    r.version,
                    &r.description,
                    r.migration_type,
                    &r.checksum,
                    r.no_tx
                ),
            );
            assert_eq!(e.sql.as_str(), r.sql.as_str());
        }
    }
}
