//! A segment: a run of consecutive messages of `XIBAAR_EVENTS`, each exactly as stored, as
//! gzip-compressed NDJSON, and the manifest that describes and seals it.
//!
//! One line per message:
//!
//! ```json
//! {"seq":41,"subject":"xibaar.evt.notification.….accepted","time":"2026-12-02T19:13:05.123456789Z",
//!  "headers":{"Nats-Msg-Id":["…"],"Xibaar-Type":["notification.accepted"]},"json":{…}}
//! ```
//!
//! The payload is embedded as JSON (`json`) when it is JSON that reads back to the very same
//! bytes, so an auditor can `zcat | jq` a segment; otherwise it is `text` (UTF-8) or `base64`.
//! Either way the bytes read back are the bytes stored.

use std::{collections::BTreeMap, io::Write};

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The version of the line and manifest format; readers refuse a newer one.
pub const FORMAT: u32 = 1;

/// One message of the stream as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence: u64,
    pub subject: String,
    /// The stream's own timestamp (when the server stored it), to the nanosecond.
    pub time: DateTime<Utc>,
    /// Every header value, by name.
    pub headers: BTreeMap<String, Vec<String>>,
    pub payload: Bytes,
}

impl Record {
    /// The record of a message read from the stream.
    pub fn from_stream(message: &async_nats::jetstream::Message) -> Result<Self, SegmentError> {
        let info = message
            .info()
            .map_err(|e| SegmentError::Line(0, format!("no JetStream metadata: {e}")))?;
        let nanos = info.published.unix_timestamp_nanos();
        let time = DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX));
        let mut headers = BTreeMap::new();
        if let Some(map) = &message.headers {
            for (name, values) in map.iter() {
                headers.insert(
                    name.to_string(),
                    values.iter().map(|v| v.as_str().to_owned()).collect(),
                );
            }
        }
        Ok(Self {
            sequence: info.stream_sequence,
            subject: message.subject.to_string(),
            time,
            headers,
            payload: message.payload.clone(),
        })
    }

    /// Headers for publishing the record again, as stored.
    pub fn header_map(&self) -> async_nats::HeaderMap {
        let mut map = async_nats::HeaderMap::new();
        for (name, values) in &self.headers {
            for value in values {
                map.append(name.as_str(), value.as_str());
            }
        }
        map
    }

    /// The record as the JetStream message it was, for code that reads messages of an
    /// ordered consumer (the projector, replay). Its reply subject is the `$JS.ACK` subject
    /// the server would have given it (stream, sequence and time are read from there); such
    /// messages are never acknowledged, and this one must not be.
    pub fn as_stream_message(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> async_nats::jetstream::Message {
        let nanos = self.time.timestamp_nanos_opt().unwrap_or(0);
        let reply = format!(
            "$JS.ACK.{}.xibaar-archive.1.{seq}.{seq}.{nanos}.0",
            xibaar_streams::names::EVENTS,
            seq = self.sequence
        );
        let headers = (!self.headers.is_empty()).then(|| self.header_map());
        async_nats::jetstream::Message {
            message: async_nats::Message {
                subject: self.subject.clone().into(),
                reply: Some(reply.into()),
                payload: self.payload.clone(),
                headers,
                status: None,
                description: None,
                length: self.payload.len(),
            },
            context: js.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    seq: u64,
    subject: std::borrow::Cow<'a, str>,
    time: String,
    /// Borrowed when writing: a line is encoded for every message archived.
    #[serde(default, skip_serializing_if = "no_headers")]
    headers: std::borrow::Cow<'a, BTreeMap<String, Vec<String>>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    json: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

fn no_headers(headers: &BTreeMap<String, Vec<String>>) -> bool {
    headers.is_empty()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SegmentError {
    #[error("line {0}: {1}")]
    Line(usize, String),
    #[error("not gzip: {0}")]
    Compression(String),
    #[error("checksum {actual} differs from the manifest's {expected}")]
    Checksum { expected: String, actual: String },
    #[error("{0}")]
    Continuity(String),
}

/// Encodes records into a compressed segment.
#[derive(Debug)]
pub struct Writer {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    first: Option<(u64, DateTime<Utc>)>,
    last: Option<(u64, DateTime<Utc>)>,
    count: u64,
    /// Uncompressed NDJSON bytes so far.
    bytes: u64,
}

impl Default for Writer {
    fn default() -> Self {
        Self {
            gz: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
            first: None,
            last: None,
            count: 0,
            bytes: 0,
        }
    }
}

impl Writer {
    pub fn push(&mut self, record: &Record) {
        let text = std::str::from_utf8(&record.payload).ok();
        // Only JSON that reads back to the very same bytes is embedded as JSON.
        let json = text
            .and_then(|t| serde_json::from_str::<&RawValue>(t).ok())
            .filter(|raw| raw.get().len() == record.payload.len());
        let line = Line {
            seq: record.sequence,
            subject: record.subject.as_str().into(),
            time: record.time.to_rfc3339_opts(SecondsFormat::Nanos, true),
            headers: std::borrow::Cow::Borrowed(&record.headers),
            json,
            text: json.is_none().then(|| text.map(str::to_owned)).flatten(),
            base64: (text.is_none())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&record.payload)),
        };
        let mut encoded = serde_json::to_vec(&line).expect("a line always serializes");
        encoded.push(b'\n');
        self.bytes += encoded.len() as u64;
        self.gz
            .write_all(&encoded)
            .expect("writing into memory does not fail");
        self.first.get_or_insert((record.sequence, record.time));
        self.last = Some((record.sequence, record.time));
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn uncompressed_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn first_time(&self) -> Option<DateTime<Utc>> {
        self.first.map(|(_, t)| t)
    }

    pub fn last_time(&self) -> Option<DateTime<Utc>> {
        self.last.map(|(_, t)| t)
    }

    pub fn last_sequence(&self) -> Option<u64> {
        self.last.map(|(s, _)| s)
    }

    /// The compressed segment and its manifest; `None` for an empty writer.
    pub fn finish(self) -> Option<(Bytes, Manifest)> {
        let ((first_sequence, first_time), (last_sequence, last_time)) = (self.first?, self.last?);
        let body = self.gz.finish().expect("writing into memory does not fail");
        let manifest = Manifest {
            format: FORMAT,
            stream: xibaar_streams::names::EVENTS.to_owned(),
            first_sequence,
            last_sequence,
            first_time,
            last_time,
            count: self.count,
            uncompressed_bytes: self.bytes,
            compressed_bytes: body.len() as u64,
            sha256: sha256_hex(&body),
        };
        Some((Bytes::from(body), manifest))
    }
}

/// The lines of `text` as `str::lines` splits a string: each ended by `\n` or `\r\n`, the
/// last one's end optional, none in an empty text.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let lines = (!text.is_empty()).then(|| text.split(|b| *b == b'\n'));
    lines
        .into_iter()
        .flatten()
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// What a segment holds; written after the segment, it seals it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub stream: String,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub first_time: DateTime<Utc>,
    pub last_time: DateTime<Utc>,
    /// Messages in the segment: `last - first + 1` unless the stream itself had a gap.
    pub count: u64,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
    /// SHA-256 of the compressed object, hex.
    pub sha256: String,
}

/// Decodes a compressed segment, checking it against `manifest` when one is given: checksum,
/// count, first and last sequence, and that sequences only increase.
pub fn decode(body: &[u8], manifest: Option<&Manifest>) -> Result<Vec<Record>, SegmentError> {
    if let Some(m) = manifest {
        let actual = sha256_hex(body);
        if actual != m.sha256 {
            return Err(SegmentError::Checksum {
                expected: m.sha256.clone(),
                actual,
            });
        }
    }
    // Inflated once; each JSON payload is then a slice of these bytes, not a copy. The parser
    // checks the text of every line (UTF-8 included) as it reads it.
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut inflated)
        .map_err(|e| SegmentError::Compression(e.to_string()))?;
    let inflated = Bytes::from(inflated);
    let mut records: Vec<Record> = Vec::new();
    for (n, raw) in lines(&inflated).enumerate() {
        let n = n + 1;
        let line: Line =
            serde_json::from_slice(raw).map_err(|e| SegmentError::Line(n, e.to_string()))?;
        let payload = match (line.json, line.text, line.base64) {
            (Some(json), None, None) => inflated.slice_ref(json.get().as_bytes()),
            (None, Some(text), None) => Bytes::from(text),
            (None, None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(|e| SegmentError::Line(n, format!("base64: {e}")))?,
            _ => {
                return Err(SegmentError::Line(
                    n,
                    "exactly one of json, text and base64 must hold the payload".into(),
                ));
            }
        };
        let time = DateTime::parse_from_rfc3339(&line.time)
            .map_err(|e| SegmentError::Line(n, format!("time: {e}")))?
            .with_timezone(&Utc);
        if let Some(previous) = records.last()
            && line.seq <= previous.sequence
        {
            return Err(SegmentError::Continuity(format!(
                "line {n}: sequence {} after {}",
                line.seq, previous.sequence
            )));
        }
        records.push(Record {
            sequence: line.seq,
            subject: line.subject.into_owned(),
            time,
            headers: line.headers.into_owned(),
            payload,
        });
    }
    if let Some(m) = manifest {
        let (first, last) = (
            records.first().map(|r| r.sequence),
            records.last().map(|r| r.sequence),
        );
        if records.len() as u64 != m.count
            || first != Some(m.first_sequence)
            || last != Some(m.last_sequence)
        {
            return Err(SegmentError::Continuity(format!(
                "holds {} messages {first:?}..{last:?}; the manifest says {} messages {}..{}",
                records.len(),
                m.count,
                m.first_sequence,
                m.last_sequence
            )));
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, payload: &[u8]) -> Record {
        Record {
            sequence,
            subject: format!("xibaar.evt.test.{sequence}.happened"),
            time: DateTime::from_timestamp_nanos(1_790_000_000_123_456_789 + sequence as i64),
            headers: BTreeMap::from([
                ("Nats-Msg-Id".to_owned(), vec![format!("id-{sequence}")]),
                ("X-Two".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ]),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn every_payload_reads_back_byte_for_byte_with_its_headers_and_nanosecond_time() {
        let records = vec![
            record(7, br#"{"type":"x","data":{"n":1.50}}"#),
            record(8, b" {\"spaced\": true} "),
            record(9, "not json: é".as_bytes()),
            record(10, &[0, 159, 146, 150, 255]),
            record(12, b""),
        ];
        let mut writer = Writer::default();
        for r in &records {
            writer.push(r);
        }
        let (body, manifest) = writer.finish().unwrap();
        assert_eq!(
            (
                manifest.first_sequence,
                manifest.last_sequence,
                manifest.count
            ),
            (7, 12, 5)
        );
        assert_eq!(manifest.first_time, records[0].time);
        assert_eq!(decode(&body, Some(&manifest)).unwrap(), records);
    }

    #[test]
    fn a_damaged_segment_or_a_manifest_that_does_not_match_is_refused() {
        let mut writer = Writer::default();
        writer.push(&record(1, b"{}"));
        writer.push(&record(2, b"{}"));
        let (body, manifest) = writer.finish().unwrap();
        let mut damaged = body.to_vec();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        assert!(matches!(
            decode(&damaged, Some(&manifest)),
            Err(SegmentError::Checksum { .. })
        ));
        let wrong_count = Manifest {
            count: 3,
            ..manifest.clone()
        };
        assert!(matches!(
            decode(&body, Some(&wrong_count)),
            Err(SegmentError::Continuity(_))
        ));
        assert_eq!(decode(&body, None).unwrap().len(), 2);
    }

    /// `text` compressed as a writer compresses its lines.
    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut writer = Writer::default();
        writer.gz.write_all(text).unwrap();
        writer.gz.finish().unwrap()
    }

    #[test]
    fn lines_are_read_as_text_lines_are_and_text_that_is_not_utf8_is_refused() {
        let line = |seq: u64| {
            format!(
                r#"{{"seq":{seq},"subject":"s","time":"2026-12-04T00:00:00Z","json":{{"n":"é"}}}}"#
            )
        };
        let (one, two) = (line(1), line(2));
        for text in [
            format!("{one}\n{two}\n"),
            format!("{one}\n{two}"),
            format!("{one}\r\n{two}\r\n"),
        ] {
            let records = decode(&gzip(text.as_bytes()), None).unwrap();
            let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_ref()).collect();
            assert_eq!(payloads, [r#"{"n":"é"}"#.as_bytes(); 2], "{text:?}");
        }
        assert_eq!(decode(&gzip(b""), None).unwrap(), []);
        // A blank line inside is an error, as a line that is not JSON.
        assert!(matches!(
            decode(&gzip(format!("{one}\n\n{two}\n").as_bytes()), None),
            Err(SegmentError::Line(2, _))
        ));
        // A byte that is not UTF-8, in the payload or around it.
        let mut bad = one.clone().into_bytes();
        let e = bad.iter().position(|b| *b == 0xc3).unwrap();
        bad[e + 1] = 0xff;
        assert!(matches!(
            decode(&gzip(&bad), None),
            Err(SegmentError::Line(1, _))
        ));
        let mut bad = one.into_bytes();
        // The subject's value, `s`.
        let s = bad
            .windows(12)
            .position(|w| w == br#""subject":"s"#)
            .unwrap()
            + 11;
        bad[s] = 0xff;
        assert!(matches!(
            decode(&gzip(&bad), None),
            Err(SegmentError::Line(1, _))
        ));
    }

    #[test]
    fn an_empty_writer_seals_nothing() {
        assert!(Writer::default().finish().is_none());
    }
}
