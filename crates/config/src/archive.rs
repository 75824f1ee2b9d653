//! `[archive]`: where the event log is kept for years (S3 or MinIO), how it is cut into
//! segments, and how long the stream itself may keep events once an archive holds them.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{ConfigError, Secret, secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The bucket; setting it turns the archive on (`xibaar archiver`, and `xibaar up` runs it).
    pub bucket: Option<String>,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// `https://minio.example:9000`; unset for AWS, whose endpoint follows the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO expects.
    pub path_style: bool,
    /// Or `access_key_id_file`, or the `AWS_ACCESS_KEY_ID` variable.
    pub access_key_id: Option<Secret>,
    pub access_key_id_file: Option<PathBuf>,
    /// Or `secret_access_key_file`, or the `AWS_SECRET_ACCESS_KEY` variable.
    pub secret_access_key: Option<Secret>,
    pub secret_access_key_file: Option<PathBuf>,
    /// PEM certificates trusted besides the system's roots (a private CA in front of MinIO).
    /// Certificates are always verified.
    pub ca_file: Option<PathBuf>,
    /// A segment is sealed at this many events, …
    pub segment_max_events: u64,
    /// … or this many bytes of NDJSON before compression, …
    pub segment_max_bytes: u64,
    /// … or when its first event is this old, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub segment_max_age: Duration,
    /// How long `XIBAAR_EVENTS` keeps events when the archive is on (`xibaar streams apply`
    /// sets the stream's `max_age`); unset keeps the stream's own definition.
    #[serde(default, with = "humantime_serde")]
    pub stream_retention: Option<Duration>,
    /// How long the archive may be unreachable, or the archiver stopped, without the stream
    /// dropping an event the archive does not hold yet. The stream's retention must cover it
    /// plus `segment_max_age`.
    #[serde(with = "humantime_serde")]
    pub outage_allowance: Duration,
    /// How long an archiver's claim on the work lasts without renewal; a second archiver
    /// takes over this long after the first one stops answering.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            bucket: None,
            prefix: "xibaar".into(),
            endpoint: None,
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: None,
            access_key_id_file: None,
            secret_access_key: None,
            secret_access_key_file: None,
            ca_file: None,
            segment_max_events: 100_000,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(600),
            stream_retention: None,
            outage_allowance: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(15),
        }
    }
}

/// Access key id and secret of the archive's bucket.
#[derive(Debug, Clone)]
pub struct ArchiveCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
}

impl ArchiveConfig {
    pub fn enabled(&self) -> bool {
        self.bucket.is_some()
    }

    /// The shortest `max_age` of `XIBAAR_EVENTS` that never drops an event the archive does
    /// not hold yet: a segment's age plus the tolerated outage.
    pub fn minimum_stream_retention(&self) -> Duration {
        self.segment_max_age + self.outage_allowance
    }

    /// Checks a stream retention (`max_age`, zero for none) against
    /// [`ArchiveConfig::minimum_stream_retention`].
    pub fn check_stream_retention(&self, max_age: Duration) -> Result<(), String> {
        let minimum = self.minimum_stream_retention();
        if !max_age.is_zero() && max_age < minimum {
            return Err(format!(
                "XIBAAR_EVENTS would keep events {} but the archive may hold them only after {} \
                 (archive.segment_max_age {} + archive.outage_allowance {}); raise the retention \
                 or lower those",
                humantime::format_duration(max_age),
                humantime::format_duration(minimum),
                humantime::format_duration(self.segment_max_age),
                humantime::format_duration(self.outage_allowance),
            ));
        }
        Ok(())
    }

    /// From the configuration, the files it names, or the standard AWS variables.
    pub fn credentials(&self) -> Result<ArchiveCredentials, ConfigError> {
        let from_env = |name: &str| std::env::var(name).ok().map(Secret::new);
        let access_key_id = secret::resolve(
            "archive.access_key_id",
            self.access_key_id.as_ref(),
            self.access_key_id_file.as_deref(),
        )?
        .or_else(|| from_env("AWS_ACCESS_KEY_ID"));
        let secret_access_key = secret::resolve(
            "archive.secret_access_key",
            self.secret_access_key.as_ref(),
            self.secret_access_key_file.as_deref(),
        )?
        .or_else(|| from_env("AWS_SECRET_ACCESS_KEY"));
        match (access_key_id, secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(ArchiveCredentials {
                access_key_id,
                secret_access_key,
            }),
            (None, _) => Err(ConfigError::Invalid {
                key: "archive.access_key_id",
                message: "missing: give it, access_key_id_file, or AWS_ACCESS_KEY_ID".into(),
            }),
            (_, None) => Err(ConfigError::Invalid {
                key: "archive.secret_access_key",
                message: "missing: give it, secret_access_key_file, or AWS_SECRET_ACCESS_KEY"
                    .into(),
            }),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let Some(bucket) = &self.bucket else {
            if self.stream_retention.is_some() {
                return invalid(
                    "archive.stream_retention",
                    "shortens the event stream, which needs an archive: set archive.bucket".into(),
                );
            }
            return Ok(());
        };
        // S3's bucket naming rules, which MinIO shares.
        let name_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !name_ok {
            return invalid(
                "archive.bucket",
                format!("`{bucket}` is not a bucket name: 3 to 63 of a-z, 0-9, '-' and '.'"),
            );
        }
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return invalid("archive.prefix", "must not start or end with '/'".into());
        }
        if let Some(endpoint) = &self.endpoint {
            let ok = url::Url::parse(endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return invalid(
                    "archive.endpoint",
                    format!("`{endpoint}` is not an http(s) URL"),
                );
            }
        }
        if self.access_key_id.is_some() && self.access_key_id_file.is_some() {
            return invalid(
                "archive.access_key_id",
                "give one of access_key_id and access_key_id_file".into(),
            );
        }
        if self.secret_access_key.is_some() && self.secret_access_key_file.is_some() {
            return invalid(
                "archive.secret_access_key",
                "give one of secret_access_key and secret_access_key_file".into(),
            );
        }
        if self.segment_max_events == 0 {
            return invalid("archive.segment_max_events", "must be at least 1".into());
        }
        if self.segment_max_bytes < 1024 {
            return invalid("archive.segment_max_bytes", "must be at least 1024".into());
        }
        if self.segment_max_age.is_zero() {
            return invalid("archive.segment_max_age", "must be above zero".into());
        }
        if self.lease < std::time::Duration::from_secs(1) {
            return invalid("archive.lease", "must be at least 1s".into());
        }
        if let Some(retention) = self.stream_retention {
            if retention.is_zero() {
                return invalid(
                    "archive.stream_retention",
                    "must be above zero (leave it unset to keep the stream's definition)".into(),
                );
            }
            if let Err(message) = self.check_stream_retention(retention) {
                return invalid("archive.stream_retention", message);
            }
        }
        Ok(())
    }
}
