//! Values formatted for people, in the reader's language: amounts in FCFA with grouped digits,
//! numbers, dates and date-times.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::row::Value;

/// How a placeholder's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// As it is (an integer, a text).
    Plain,
    /// An amount in CFA francs, rounded to the franc: `12 500 FCFA`.
    Fcfa,
    /// A number with grouped digits: `1 234 567`.
    Number,
    /// A day: `2 décembre 2026`, `2 desaambar 2026`, `2 December 2026`.
    Date,
    /// A day and a time: `2 décembre 2026 à 14:30`.
    DateTime,
}

impl Format {
    pub const NAMES: [&'static str; 4] = ["fcfa", "number", "date", "datetime"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "fcfa" => Some(Self::Fcfa),
            "number" => Some(Self::Number),
            "date" => Some(Self::Date),
            "datetime" => Some(Self::DateTime),
            _ => None,
        }
    }
}

/// The conventions of one language. Languages without their own fall back to French, the
/// utility's language of record.
struct Conventions {
    group: &'static str,
    at: &'static str,
    /// The month names of the language's locale.
    months: &'static [String; 12],
}

/// The months' names in each language's locale, read from chrono's locale data once. A date
/// formatted through `format_localized` parses its format string every time; with text dates
/// parsed by trying format strings in turn, dates were a fifth of what building a source's
/// notification cost.
static MONTHS: std::sync::LazyLock<[[String; 12]; 3]> = std::sync::LazyLock::new(|| {
    [
        chrono::Locale::fr_FR,
        chrono::Locale::wo_SN,
        chrono::Locale::en_GB,
    ]
    .map(|locale| {
        std::array::from_fn(|m| {
            NaiveDate::from_ymd_opt(2026, m as u32 + 1, 1)
                .expect("the first of every month exists")
                .format_localized("%B", locale)
                .to_string()
        })
    })
});

/// `2 décembre 2026`: what `%-d %B %Y` writes.
fn day(date: NaiveDate, c: &Conventions) -> String {
    use chrono::Datelike;
    format!(
        "{} {} {:04}",
        date.day(),
        c.months[date.month0() as usize],
        date.year()
    )
}

fn conventions(language: &str) -> Conventions {
    match language {
        "en" => Conventions {
            group: ",",
            at: ", ",
            months: &MONTHS[2],
        },
        "wo" => Conventions {
            // Wolof in Senegal groups digits as French does (glibc's wo_SN).
            group: "\u{202f}",
            at: ", ",
            months: &MONTHS[1],
        },
        _ => Conventions {
            group: "\u{202f}",
            at: " à ",
            months: &MONTHS[0],
        },
    }
}

/// Why a value cannot be written in a format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

pub fn format(value: &Value, format: Format, language: &str) -> Result<String, FormatError> {
    let c = conventions(language);
    match format {
        Format::Plain => Ok(value.to_string()),
        Format::Fcfa => {
            let francs = value.as_number()?.round();
            Ok(format!("{} FCFA", group(francs, c.group)))
        }
        Format::Number => {
            let n = value.as_number()?;
            if n.fract() == 0.0 {
                Ok(group(n, c.group))
            } else {
                // Decimals as the language writes them: 1 234,5 in French and Wolof.
                let whole = group(n.trunc(), c.group);
                let fraction = format!("{:.2}", n.fract().abs());
                let fraction = fraction.trim_start_matches('0').trim_start_matches('.');
                let fraction = fraction.trim_end_matches('0');
                let point = if language == "en" { "." } else { "," };
                Ok(format!("{whole}{point}{fraction}"))
            }
        }
        Format::Date => Ok(day(value.as_datetime()?.date(), &c)),
        Format::DateTime => {
            use chrono::Timelike;
            let at = value.as_datetime()?;
            Ok(format!(
                "{}{}{:02}:{:02}",
                day(at.date(), &c),
                c.at,
                at.hour(),
                at.minute()
            ))
        }
    }
}

/// Digits grouped by three with `separator`. Written by hand: the grouping is a dozen lines,
/// and the number-formatting crates bring CLDR data for hundreds of locales to do it.
fn group(n: f64, separator: &str) -> String {
    let magnitude = n.abs();
    // Whole numbers (what callers pass) below 2^53 are exact as integers, whose formatting
    // costs a fraction of a float's.
    let digits = if magnitude < 9.0e15 {
        (magnitude.round() as u64).to_string()
    } else {
        format!("{magnitude:.0}")
    };
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push_str(separator);
        }
        out.push(d);
    }
    if n < 0.0 && digits.chars().any(|d| d != '0') {
        out.insert(0, '-');
    }
    out
}

impl Value {
    fn as_number(&self) -> Result<f64, FormatError> {
        match self {
            Value::Int(n) => Ok(*n as f64),
            Value::Float(f) => Ok(*f),
            Value::Text(t) => t
                .trim()
                .parse::<f64>()
                .map_err(|_| FormatError(format!("`{t}` is not a number"))),
            other => Err(FormatError(format!("{} is not a number", other.kind()))),
        }
    }

    /// A date-time; a date alone is its midnight; a text in ISO 8601 (`2026-12-02`,
    /// `2026-12-02T14:30:00`, with or without an offset) as SQL Server's `CONVERT(…, 126)`
    /// writes it; an integer is seconds since 1970.
    pub fn as_datetime(&self) -> Result<NaiveDateTime, FormatError> {
        match self {
            Value::DateTime(at) => Ok(*at),
            Value::Int(seconds) => DateTime::<Utc>::from_timestamp(*seconds, 0)
                .map(|t| t.naive_utc())
                .ok_or_else(|| FormatError(format!("{seconds} is not a time"))),
            Value::Text(t) => {
                let t = t.trim();
                // A day alone first: the commonest, and none of the other forms is 10 long.
                if t.len() == 10
                    && let Ok(d) = t.parse::<NaiveDate>()
                {
                    return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists"));
                }
                DateTime::parse_from_rfc3339(t)
                    .map(|d| d.naive_utc())
                    .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
                    .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
                    .or_else(|_| {
                        NaiveDate::parse_from_str(t, "%Y-%m-%d")
                            .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists"))
                    })
                    .map_err(|_| FormatError(format!("`{t}` is not an ISO 8601 date or time")))
            }
            other => Err(FormatError(format!("{} is not a date", other.kind()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_written_as_chronos_localized_format_writes_them() {
        for (language, locale) in [
            ("fr", chrono::Locale::fr_FR),
            ("wo", chrono::Locale::wo_SN),
            ("en", chrono::Locale::en_GB),
        ] {
            for (y, m, d) in [(2026, 1, 1), (2026, 8, 15), (2027, 12, 31), (999, 2, 3)] {
                let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
                assert_eq!(
                    day(date, &conventions(language)),
                    date.format_localized("%-d %B %Y", locale).to_string()
                );
            }
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn amounts_are_grouped_francs_in_each_language() {
        assert_eq!(
            format(&Value::Int(12_500), Format::Fcfa, "fr").unwrap(),
            "12\u{202f}500 FCFA"
        );
        assert_eq!(
            format(&text("1234567.60"), Format::Fcfa, "wo").unwrap(),
            "1\u{202f}234\u{202f}568 FCFA"
        );
        assert_eq!(
            format(&Value::Int(-950), Format::Fcfa, "en").unwrap(),
            "-950 FCFA"
        );
        assert_eq!(
            format(&Value::Float(1_000_000.0), Format::Fcfa, "en").unwrap(),
            "1,000,000 FCFA"
        );
        assert_eq!(
            format(&Value::Float(1234.5), Format::Number, "fr").unwrap(),
            "1\u{202f}234,5"
        );
        assert!(format(&text("douze"), Format::Fcfa, "fr").is_err());
    }

    #[test]
    fn dates_are_written_in_the_readers_language() {
        let day = text("2026-12-02");
        assert_eq!(format(&day, Format::Date, "fr").unwrap(), "2 décembre 2026");
        assert_eq!(
            format(&day, Format::Date, "wo").unwrap(),
            "2 desaambar 2026"
        );
        assert_eq!(format(&day, Format::Date, "en").unwrap(), "2 December 2026");
        let at = text("2026-08-15T14:30:00");
        assert_eq!(
            format(&at, Format::DateTime, "fr").unwrap(),
            "15 août 2026 à 14:30"
        );
        assert_eq!(
            format(&at, Format::DateTime, "wo").unwrap(),
            "15 uut 2026, 14:30"
        );
        assert!(format(&text("soon"), Format::Date, "fr").is_err());
    }
}
