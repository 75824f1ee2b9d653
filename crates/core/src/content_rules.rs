//! A notification's content against FCM's rules: what each language's title and body may
//! hold, what the data may name, and the payload size a device's message would have.

use crate::notification::{
    Audience, Content, ContentError, FCM_PAYLOAD_LIMIT, FCM_TOPIC_PAYLOAD_LIMIT, FieldViolation,
    MAX_BODY_CHARS, MAX_TITLE_CHARS, NOTIFICATION_ID_DATA_KEY,
};

/// Keys FCM reserves in `data` (it rejects messages that use them).
fn reserved_data_key(key: &str) -> bool {
    matches!(
        key,
        "from" | "notification" | "message_type" | "collapse_key"
    ) || key.starts_with("google.")
        || key.starts_with("gcm.")
}

impl Content {
    /// Bytes of the payload as FCM counts it: the notification and data objects, including the
    /// notification id Xibaar adds to the data. Counted piece by piece, without running the
    /// serializer over every string a second time; a test holds the count to what `serde_json`
    /// writes.
    pub fn fcm_payload_bytes(&self) -> usize {
        self.shared_payload_bytes() + text_bytes(&self.title, &self.body)
    }

    /// [`Content::fcm_payload_bytes`] but for the title and body: what every language's payload
    /// has in common.
    fn shared_payload_bytes(&self) -> usize {
        const NOTIFICATION: usize =
            r#"{"notification":{"title":,"body":,"image":},"data":{}}"#.len();
        // `"xibaar_notification_id":"<a UUID>"`
        let id = json_str_bytes(NOTIFICATION_ID_DATA_KEY) + 1 + 38;
        let entries = self
            .data
            .iter()
            .filter(|(key, _)| key.as_str() != NOTIFICATION_ID_DATA_KEY)
            .map(|(key, value)| json_str_bytes(key) + 1 + json_str_bytes(value) + 1)
            .sum::<usize>();
        NOTIFICATION + self.image_url.as_deref().map_or(4, json_str_bytes) + entries + id
    }

    /// Checks the content against FCM's rules for a message to `audience` (topic and condition
    /// messages have a smaller payload limit).
    pub fn validate_for(&self, audience: &Audience) -> Result<(), ContentError> {
        let limit = if audience.is_fcm_fan_out() {
            FCM_TOPIC_PAYLOAD_LIMIT
        } else {
            FCM_PAYLOAD_LIMIT
        };
        self.validate_with_limit(limit)
    }

    pub fn validate(&self) -> Result<(), ContentError> {
        self.validate_with_limit(FCM_PAYLOAD_LIMIT)
    }

    pub(crate) fn validate_with_limit(&self, limit: usize) -> Result<(), ContentError> {
        let mut violations = self.translation_violations();
        // Each device gets one language: the default's title and body, or a translation's,
        // with the same data and image. What they share is checked once, with the default.
        violations.extend(self.check_default_language());
        let shared = self.shared_payload_bytes();
        let mut largest = shared + text_bytes(&self.title, &self.body);
        for (language, text) in &self.translations {
            violations.extend(text_violations(&text.title, &text.body).into_iter().map(
                // `content.title` of a translation is `content.translations.wo.title`.
                |v| FieldViolation {
                    field: v.field.replacen(
                        "content",
                        &format!("content.translations.{language}"),
                        1,
                    ),
                    ..v
                },
            ));
            largest = largest.max(shared + text_bytes(&text.title, &text.body));
        }
        if !violations.is_empty() {
            return Err(ContentError::Invalid(violations));
        }
        if largest > limit {
            return Err(ContentError::TooLarge {
                bytes: largest,
                limit,
            });
        }
        Ok(())
    }

    /// The rules of the default language's content with what every language shares (data,
    /// image).
    fn check_default_language(&self) -> Vec<FieldViolation> {
        let mut violations = text_violations(&self.title, &self.body);
        for key in self.data.keys() {
            if key.is_empty() || reserved_data_key(key) {
                violations.push(FieldViolation::new(
                    format!("content.data.{key}"),
                    "is a key reserved by FCM",
                ));
            }
        }
        // NUL cannot be stored in Postgres text: the read models (inbox, status) could not
        // hold the notification.
        if self.image_url.as_deref().unwrap_or_default().contains('\0') {
            violations.push(FieldViolation::new(
                "content.image_url",
                "must not contain the NUL character",
            ));
        }
        for (key, value) in &self.data {
            if key.contains('\0') || value.contains('\0') {
                let field = format!("content.data.{key}").escape_default().to_string();
                violations.push(FieldViolation::new(
                    field,
                    "must not contain the NUL character",
                ));
            }
        }
        if let Some(url) = &self.image_url
            && !url.starts_with("https://")
        {
            violations.push(FieldViolation::new(
                "content.image_url",
                "must be an https URL",
            ));
        }
        violations
    }
}

/// Bytes a title and a body take in the payload, as JSON strings.
fn text_bytes(title: &str, body: &str) -> usize {
    json_str_bytes(title) + json_str_bytes(body)
}

/// The rules of one language's title and body.
fn text_violations(title: &str, body: &str) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    if title.trim().is_empty() {
        violations.push(FieldViolation::new("content.title", "must not be empty"));
    } else if title.chars().count() > MAX_TITLE_CHARS {
        violations.push(FieldViolation::new(
            "content.title",
            format!("must be at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    if body.chars().count() > MAX_BODY_CHARS {
        violations.push(FieldViolation::new(
            "content.body",
            format!("must be at most {MAX_BODY_CHARS} characters"),
        ));
    }
    // NUL cannot be stored in Postgres text: the read models (inbox, status) could not hold
    // the notification.
    for (field, text) in [("content.title", title), ("content.body", body)] {
        if text.contains('\0') {
            violations.push(FieldViolation::new(
                field,
                "must not contain the NUL character",
            ));
        }
    }
    violations
}

/// Whether `serde_json` writes `text` as it is between its quotes: no `"`, `\\` or control
/// character. Most text has nothing to escape, and a test without branches over 32 bytes at a
/// time (vectorized) says so.
pub(crate) fn needs_no_escape(text: &str) -> bool {
    text.as_bytes().chunks(32).all(|chunk| {
        chunk.iter().fold(0u8, |found, &b| {
            found | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
        }) == 0
    })
}

/// Bytes of `text` written as a JSON string by `serde_json`, quotes included, counted without
/// writing it out. Counted by hand, as `serde_json` escapes: `"`, `\` and the controls with a
/// short form take two bytes, the other controls six (`\u00XX`), everything else (UTF-8
/// included) itself.
fn json_str_bytes(text: &str) -> usize {
    if needs_no_escape(text) {
        return 2 + text.len();
    }
    2 + text.len()
        + text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    /// [`Content::fcm_payload_bytes`], counted from what `serde_json` writes.
    fn written(content: &Content) -> usize {
        /// The data as the FCM client sends it: the notification id in place of any value
        /// the content gives that key.
        struct Data<'a>(&'a BTreeMap<String, String>);
        impl Serialize for Data<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let nil = uuid::Uuid::nil();
                let mut map = serializer.serialize_map(None)?;
                for (key, value) in self.0 {
                    if key != NOTIFICATION_ID_DATA_KEY {
                        map.serialize_entry(key, value)?;
                    }
                }
                map.serialize_entry(NOTIFICATION_ID_DATA_KEY, &nil)?;
                map.end()
            }
        }
        #[derive(Serialize)]
        struct Notification<'a> {
            title: &'a str,
            body: &'a str,
            image: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Payload<'a> {
            notification: Notification<'a>,
            data: Data<'a>,
        }
        let payload = Payload {
            notification: Notification {
                title: &content.title,
                body: &content.body,
                image: content.image_url.as_deref(),
            },
            data: Data(&content.data),
        };
        json_bytes(&payload)
    }

    /// Bytes of `value` written as JSON, counted: nothing is written out.
    fn json_bytes(value: &impl Serialize) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 += bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut counter = Counter(0);
        match serde_json::to_writer(&mut counter, value) {
            Ok(()) => counter.0,
            Err(_) => usize::MAX,
        }
    }

    #[test]
    fn a_payload_is_counted_as_serde_json_writes_it() {
        let mut content = Content {
            title: "Facture \"8\"".into(),
            body: "Votre facture\nde 5\u{202f}008 FCFA".into(),
            ..Default::default()
        };
        assert_eq!(content.fcm_payload_bytes(), written(&content));
        content.image_url = Some("https://example.com/a\\b.png".into());
        content.data.insert("bill".into(), "B-1\t".into());
        assert_eq!(content.fcm_payload_bytes(), written(&content));
        content
            .data
            .insert(NOTIFICATION_ID_DATA_KEY.into(), "ignored".into());
        content.data.insert("z".into(), String::new());
        assert_eq!(content.fcm_payload_bytes(), written(&content));
    }

    #[test]
    fn a_string_is_counted_as_serde_json_writes_it() {
        let every_byte: String = (0u8..=0x7f).map(char::from).collect();
        for text in [
            "",
            "Facture n° 8 à régler",
            "\"quoted\" \\ back",
            "tab\tnew\nline\r\u{8}\u{c}\u{1}\u{1f}\u{7f}",
            "ñ 12\u{202f}500 FCFA 🙂",
            every_byte.as_str(),
        ] {
            assert_eq!(json_str_bytes(text), json_bytes(&text), "{text:?}");
        }
    }
}
