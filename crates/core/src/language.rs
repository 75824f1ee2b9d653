//! Languages of a notification: its text in several languages, and the one a device or a
//! customer reads.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::notification::{Content, FieldViolation};

/// A language, as an ISO 639 code of two or three lower-case letters (`fr`, `wo`, `en`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Language(String);

impl JsonSchema for Language {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Language".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^[a-z]{2,3}$",
            "description": "an ISO 639 language code" })
    }
}

impl Language {
    pub fn parse(code: &str) -> Result<Self, String> {
        if (2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase()) {
            Ok(Self(code.to_owned()))
        } else {
            Err(format!(
                "`{code}` is not a language: give an ISO 639 code such as fr, wo or en"
            ))
        }
    }

    /// The language of a locale (`wo-SN`, `fr_SN`, `EN` read `wo`, `fr`, `en`), if it names one.
    pub fn of_locale(locale: &str) -> Option<Self> {
        let primary = locale.split(['-', '_']).next()?.to_ascii_lowercase();
        Self::parse(&primary).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Language {
    type Error = String;

    fn try_from(code: String) -> Result<Self, String> {
        Self::parse(&code)
    }
}

impl From<Language> for String {
    fn from(language: Language) -> String {
        language.0
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A title and body in one language.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Text {
    pub title: String,
    pub body: String,
}

impl Content {
    /// The content as a reader of `language` gets it: the text in their language when there is
    /// one, else the default; without translations (one language is all a push carries).
    pub fn localized(&self, language: Option<&Language>) -> Content {
        let mut one = Content {
            translations: Default::default(),
            ..self.clone()
        };
        if let Some((language, text)) = language.and_then(|l| self.translations.get_key_value(l)) {
            one.title.clone_from(&text.title);
            one.body.clone_from(&text.body);
            one.language = Some(language.clone());
        }
        one
    }

    /// [`Content::localized`] for a device's locale (`fr-SN`).
    pub fn for_locale(&self, locale: Option<&str>) -> Content {
        self.localized(locale.and_then(Language::of_locale).as_ref())
    }

    /// Every language the content is in, the default first.
    pub fn languages(&self) -> impl Iterator<Item = &Language> {
        self.language.iter().chain(self.translations.keys())
    }

    /// Rules only translations have: a default language, and no translation into it.
    pub(crate) fn translation_violations(&self) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        if self.translations.is_empty() {
            return violations;
        }
        match &self.language {
            None => violations.push(FieldViolation::new(
                "content.language",
                "must name the language of title and body when translations are given",
            )),
            Some(l) if self.translations.contains_key(l) => violations.push(FieldViolation::new(
                format!("content.translations.{l}"),
                "repeats the default language: title and body are already in it",
            )),
            Some(_) => {}
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::notification::ContentError;

    fn bilingual() -> Content {
        Content {
            title: "Facture".into(),
            body: "Votre facture".into(),
            language: Some(Language::parse("fr").unwrap()),
            translations: BTreeMap::from([(
                Language::parse("wo").unwrap(),
                Text {
                    title: "Faktiir".into(),
                    body: "Sa faktiir".into(),
                },
            )]),
            ..Default::default()
        }
    }

    #[test]
    fn a_device_reads_its_locales_language_or_the_default() {
        let content = bilingual();
        let wolof = content.for_locale(Some("wo-SN"));
        assert_eq!(
            (wolof.title.as_str(), wolof.body.as_str()),
            ("Faktiir", "Sa faktiir")
        );
        assert_eq!(wolof.language.as_ref().map(Language::as_str), Some("wo"));
        assert!(wolof.translations.is_empty());
        for locale in [Some("fr_SN"), Some("en-GB"), Some("??"), None] {
            let read = content.for_locale(locale);
            assert_eq!(read.title, "Facture", "{locale:?}");
            assert_eq!(read.language.as_ref().map(Language::as_str), Some("fr"));
        }
    }

    #[test]
    fn languages_are_iso_codes() {
        assert!(Language::parse("wo").is_ok());
        assert!(Language::parse("fra").is_ok());
        for bad in ["", "f", "FR", "fr-SN", "wolof"] {
            assert!(Language::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Language::of_locale("WO_sn").unwrap().as_str(), "wo");
        assert!(serde_json::from_str::<Language>("\"Fr\"").is_err());
    }

    #[test]
    fn translations_need_a_default_language_other_than_theirs() {
        let mut content = bilingual();
        assert!(content.validate().is_ok());
        content.language = None;
        assert!(content.validate().is_err());
        content.language = Some(Language::parse("wo").unwrap());
        assert!(content.validate().is_err());
        // Each language is checked as FCM would get it.
        let mut long = bilingual();
        long.translations
            .values_mut()
            .for_each(|t| t.title = "x".repeat(201));
        let Err(ContentError::Invalid(violations)) = long.validate() else {
            panic!("a translation's long title is invalid");
        };
        assert_eq!(
            violations
                .iter()
                .map(|v| v.field.as_str())
                .collect::<Vec<_>>(),
            ["content.translations.wo.title"]
        );
    }

    #[test]
    fn the_largest_payload_is_that_of_the_language_whose_text_is_longest() {
        let wo = Language::parse("wo").unwrap();
        let mut content = bilingual();
        content.data.insert("blob".into(), "d\"\u{1}".repeat(1_000));
        content.translations.get_mut(&wo).unwrap().body = "é\t\"\u{2}".repeat(250);
        let wolof = content.localized(Some(&wo)).fcm_payload_bytes();
        assert!(wolof > content.fcm_payload_bytes());
        let limit = wolof - 1;
        assert_eq!(
            content.validate_with_limit(limit),
            Err(ContentError::TooLarge {
                bytes: wolof,
                limit
            })
        );
        assert_eq!(content.validate_with_limit(wolof), Ok(()));
    }
}
