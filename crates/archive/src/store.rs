//! The bucket: an aws-sdk-s3 client over rustls (certificates always verified, an extra CA
//! when configured), the object layout, and write-once puts.
//!
//! Layout under `<prefix>/XIBAAR_EVENTS/`:
//! - `segments/<first sequence, 20 digits>.ndjson.gz`: the messages (see [`crate::segment`]);
//! - `manifests/<first>-<last>-<first time>-<last time>.json`: the manifest that seals the
//!   segment. The key names are the index: one listing (in key order, which is sequence
//!   order) gives every segment's sequence and time range without reading an object.
//!
//! Every object is written with `If-None-Match: *`: nothing is ever overwritten.

use std::time::Duration;

use aws_sdk_s3::{
    config::{Credentials, Region},
    error::SdkError,
    primitives::ByteStream,
};
use aws_smithy_http_client::tls;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use xibaar_config::ArchiveConfig;

use crate::segment::{self, Manifest, Record};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("archive configuration: {0}")]
    Config(String),
    /// S3 could not be reached or refused the request for now; worth retrying.
    #[error("S3 {operation} {key}: {message}")]
    Unavailable {
        operation: &'static str,
        key: String,
        message: String,
    },
    #[error("archive object {key}: {source}")]
    Damaged {
        key: String,
        #[source]
        source: segment::SegmentError,
    },
}

/// What a write-once put found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Written,
    /// The key was taken already (by another archiver, or by this one before a crash).
    AlreadyThere,
}

/// One sealed segment, as the manifest keys name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub first_time: DateTime<Utc>,
    pub last_time: DateTime<Utc>,
}

const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.9fZ";

fn key_time(t: DateTime<Utc>) -> String {
    t.format(TIME_FORMAT).to_string()
}

fn parse_key_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, TIME_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

impl IndexEntry {
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            first_sequence: manifest.first_sequence,
            last_sequence: manifest.last_sequence,
            first_time: manifest.first_time,
            last_time: manifest.last_time,
        }
    }

    fn file_name(&self) -> String {
        format!(
            "{:020}-{:020}-{}-{}.json",
            self.first_sequence,
            self.last_sequence,
            key_time(self.first_time),
            key_time(self.last_time)
        )
    }

    fn parse(file_name: &str) -> Option<Self> {
        let mut parts = file_name.strip_suffix(".json")?.split('-');
        let entry = Self {
            first_sequence: parts.next()?.parse().ok()?,
            last_sequence: parts.next()?.parse().ok()?,
            first_time: parse_key_time(parts.next()?)?,
            last_time: parse_key_time(parts.next()?)?,
        };
        parts.next().is_none().then_some(entry)
    }
}

#[derive(Debug, Clone)]
pub struct ArchiveStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// `<prefix>/XIBAAR_EVENTS/`.
    root: String,
}

fn unavailable<E, R>(operation: &'static str, key: &str, e: &SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable {
        operation,
        key: key.to_owned(),
        message: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
    }
}

fn status<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HasStatus::status)
}

trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

impl ArchiveStore {
    /// A client for the configured bucket. Reads the credentials and the extra CA now, so a
    /// missing one stops the start.
    pub fn from_config(config: &ArchiveConfig) -> Result<Self, StoreError> {
        let bucket = config
            .bucket
            .clone()
            .ok_or_else(|| StoreError::Config("archive.bucket is not set".into()))?;
        let credentials = config
            .credentials()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let mut trust = tls::TrustStore::default();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Config(format!(
                    "archive.ca_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(StoreError::Config(format!(
                    "archive.ca_file: {} holds no PEM certificate",
                    path.display()
                )));
            }
            trust = trust.with_pem_certificate(pem);
        }
        let tls_context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| StoreError::Config(format!("archive TLS: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(tls_context)
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(config.region.clone()))
            .force_path_style(config.path_style)
            .credentials_provider(Credentials::new(
                credentials.access_key_id.expose(),
                credentials.secret_access_key.expose(),
                None,
                None,
                "xibaar-config",
            ))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            // Checksums only where S3 requires them: older MinIO releases refuse the
            // newer default ones. The segment's own SHA-256 is in its manifest.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = config.prefix.trim_matches('/');
        let root = if prefix.is_empty() {
            format!("{}/", xibaar_streams::names::EVENTS)
        } else {
            format!("{prefix}/{}/", xibaar_streams::names::EVENTS)
        };
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket,
            root,
        })
    }

    /// The archive's client when one is configured (`archive.bucket` set), `None` otherwise.
    pub fn configured(config: &ArchiveConfig) -> Result<Option<Self>, StoreError> {
        config
            .enabled()
            .then(|| Self::from_config(config))
            .transpose()
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client as configured (benchmarks measure bare puts with it).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn segment_key(&self, first_sequence: u64) -> String {
        format!("{}segments/{first_sequence:020}.ndjson.gz", self.root)
    }

    pub fn manifest_key(&self, entry: &IndexEntry) -> String {
        format!("{}manifests/{}", self.root, entry.file_name())
    }

    /// Whether the bucket exists and these credentials reach it.
    pub async fn check_bucket(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| match status(&e) {
                Some(404) => StoreError::Config(format!("bucket `{}` does not exist", self.bucket)),
                Some(403) => StoreError::Config(format!(
                    "bucket `{}`: access denied with these credentials",
                    self.bucket
                )),
                _ => unavailable("HeadBucket", &self.bucket, &e),
            })
    }

    /// Creates the bucket (tests and local runs; production buckets are made by their owners).
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(unavailable("CreateBucket", &self.bucket, &e)),
        }
    }

    /// Writes `body` at `key` unless something is there already.
    pub async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Put, StoreError> {
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Put::Written),
            Err(e) if status(&e) == Some(412) => Ok(Put::AlreadyThere),
            Err(e) => Err(unavailable("PutObject", key, &e)),
        }
    }

    /// The object at `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let response = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(unavailable("GetObject", key, &e)),
        };
        let body = response
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable {
                operation: "GetObject",
                key: key.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Some(body.into_bytes()))
    }

    /// Keys under `prefix`, in key order, after `start_after`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(start_after)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| unavailable("ListObjectsV2", prefix, &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// The sealed segments from the one holding `from_sequence` on, in sequence order.
    pub async fn index(&self, from_sequence: u64) -> Result<Vec<IndexEntry>, StoreError> {
        let prefix = format!("{}manifests/", self.root);
        // Every manifest is listed (a few thousand keys for years of segments): the one
        // holding `from_sequence` is found by its range, not by a key to start after.
        let keys = self.list(&prefix, None).await?;
        let mut entries: Vec<IndexEntry> = keys
            .iter()
            .filter_map(|k| IndexEntry::parse(k.strip_prefix(&prefix)?))
            .collect();
        entries.retain(|e| e.last_sequence >= from_sequence);
        Ok(entries)
    }

    /// The manifest of `entry`, checked against its key.
    pub async fn manifest(&self, entry: &IndexEntry) -> Result<Option<Manifest>, StoreError> {
        let key = self.manifest_key(entry);
        let Some(body) = self.get(&key).await? else {
            return Ok(None);
        };
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| StoreError::Damaged {
                key: key.clone(),
                source: segment::SegmentError::Line(1, e.to_string()),
            })?;
        if IndexEntry::of(&manifest) != *entry || manifest.format > segment::FORMAT {
            return Err(StoreError::Damaged {
                key,
                source: segment::SegmentError::Continuity(format!(
                    "the manifest (format {}) does not match its key",
                    manifest.format
                )),
            });
        }
        Ok(Some(manifest))
    }

    /// The messages of a sealed segment, verified against its manifest.
    pub async fn records(&self, manifest: &Manifest) -> Result<Vec<Record>, StoreError> {
        let key = self.segment_key(manifest.first_sequence);
        let body = self.get(&key).await?.ok_or_else(|| StoreError::Damaged {
            key: key.clone(),
            source: segment::SegmentError::Continuity("the segment is missing".into()),
        })?;
        decode_off_the_runtime(key, body, Some(manifest.clone())).await
    }

    /// The messages of the segment `entry` names, verified against its manifest; a missing
    /// manifest is damage (the index named it).
    pub async fn read_segment(&self, entry: &IndexEntry) -> Result<Vec<Record>, StoreError> {
        let manifest = self
            .manifest(entry)
            .await?
            .ok_or_else(|| StoreError::Damaged {
                key: self.manifest_key(entry),
                source: segment::SegmentError::Continuity("the manifest is missing".into()),
            })?;
        self.records(&manifest).await
    }

    /// A segment whose manifest was never written (its archiver stopped in between), decoded
    /// so that the manifest can be written from it.
    pub async fn unsealed(
        &self,
        first_sequence: u64,
    ) -> Result<Option<(Bytes, Vec<Record>)>, StoreError> {
        let key = self.segment_key(first_sequence);
        let Some(body) = self.get(&key).await? else {
            return Ok(None);
        };
        let records = decode_off_the_runtime(key, body.clone(), None).await?;
        Ok(Some((body, records)))
    }

    /// The manifest whose segment starts at `first_sequence`, if one was written.
    pub async fn manifest_starting_at(
        &self,
        first_sequence: u64,
    ) -> Result<Option<Manifest>, StoreError> {
        let prefix = format!("{}manifests/{first_sequence:020}-", self.root);
        let keys = self.list(&prefix, None).await?;
        let Some(entry) = keys
            .iter()
            .find_map(|k| IndexEntry::parse(k.strip_prefix(&format!("{}manifests/", self.root))?))
        else {
            return Ok(None);
        };
        self.manifest(&entry).await
    }
}

/// [`segment::decode`] of the object at `key`, on the blocking pool. Checking, inflating and
/// parsing a segment of 20,000 events takes a tenth of a second or more of CPU; on a runtime
/// worker it would hold up every task beside it for as long: the api's requests when a
/// notification's timeline reaches into the archive, the live projector's batches during a
/// rebuild. (The archive benchmark's replay, alone in its process, runs as fast either way.)
async fn decode_off_the_runtime(
    key: String,
    body: Bytes,
    manifest: Option<Manifest>,
) -> Result<Vec<Record>, StoreError> {
    match tokio::task::spawn_blocking(move || segment::decode(&body, manifest.as_ref())).await {
        Ok(decoded) => decoded.map_err(|source| StoreError::Damaged { key, source }),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime is shutting down.
        Err(e) => Err(StoreError::Unavailable {
            operation: "decoding",
            key,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_key_names_the_sequence_and_time_range_and_parses_back() {
        let entry = IndexEntry {
            first_sequence: 1,
            last_sequence: 12_345,
            first_time: DateTime::from_timestamp_nanos(1_790_000_000_000_000_007),
            last_time: DateTime::from_timestamp_nanos(1_790_000_100_123_456_789),
        };
        let name = entry.file_name();
        assert_eq!(
            name,
            "00000000000000000001-00000000000000012345-20260921T141320.000000007Z-20260921T141500.123456789Z.json"
        );
        assert_eq!(IndexEntry::parse(&name), Some(entry));
        assert_eq!(IndexEntry::parse("00000000000000000001.json"), None);
    }
}
