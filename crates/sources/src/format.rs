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
fn day(date: NaiveDate, c: &Conventions, out: &mut String) {
    use chrono::Datelike;
    let mut digits = itoa::Buffer::new();
    out.push_str(digits.format(date.day()));
    out.push(' ');
    out.push_str(&c.months[date.month0() as usize]);
    out.push(' ');
    let year = date.year();
    let written = digits.format(year);
    if (0..1000).contains(&year) {
        // `%Y` pads a year to four digits.
        out.push_str(&"000"[..4 - written.len()]);
    }
    out.push_str(written);
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

/// `value` in `format` for a reader of `language`, written at the end of `out` (nothing is
/// written when it cannot be).
pub fn format_into(
    value: &Value,
    format: Format,
    language: &str,
    out: &mut String,
) -> Result<(), FormatError> {
    let c = conventions(language);
    match format {
        Format::Plain => match value {
            Value::Int(n) => out.push_str(itoa::Buffer::new().format(*n)),
            Value::Text(t) | Value::Bytes(t) => out.push_str(t),
            other => {
                use std::fmt::Write;
                write!(out, "{other}").expect("writing to a String");
            }
        },
        // An integer column (what amounts mostly are) is written from its digits, exactly
        // beyond 2^53 too, without going through a float.
        Format::Fcfa | Format::Number if let Value::Int(n) = value => {
            group_digits(
                *n < 0,
                itoa::Buffer::new().format(n.unsigned_abs()),
                c.group,
                out,
            );
            if format == Format::Fcfa {
                out.push_str(" FCFA");
            }
        }
        Format::Fcfa => {
            let francs = value.as_number()?.round();
            group(francs, c.group, out);
            out.push_str(" FCFA");
        }
        Format::Number => {
            let n = value.as_number()?;
            group(n.trunc(), c.group, out);
            if n.fract() != 0.0 {
                // Decimals as the language writes them: 1 234,5 in French and Wolof.
                let fraction = std::format!("{:.2}", n.fract().abs());
                let fraction = fraction.trim_start_matches('0').trim_start_matches('.');
                let fraction = fraction.trim_end_matches('0');
                out.push_str(if language == "en" { "." } else { "," });
                out.push_str(fraction);
            }
        }
        Format::Date => day(value.as_datetime()?.date(), &c, out),
        Format::DateTime => {
            use chrono::Timelike;
            let at = value.as_datetime()?;
            day(at.date(), &c, out);
            out.push_str(c.at);
            for (i, part) in [at.hour(), at.minute()].into_iter().enumerate() {
                if i > 0 {
                    out.push(':');
                }
                if part < 10 {
                    out.push('0');
                }
                out.push_str(itoa::Buffer::new().format(part));
            }
        }
    }
    Ok(())
}

/// Digits grouped by three with `separator`, written at the end of `out`. Written by hand: the
/// grouping is a dozen lines, and the number-formatting crates bring CLDR data for hundreds of
/// locales to do it.
fn group(n: f64, separator: &str, out: &mut String) {
    let magnitude = n.abs();
    // Whole numbers (what callers pass) below 2^53 are exact as integers, whose formatting
    // costs a fraction of a float's.
    let mut integer = itoa::Buffer::new();
    let float;
    let digits = if magnitude < 9.0e15 {
        integer.format(magnitude.round() as u64)
    } else {
        float = std::format!("{magnitude:.0}");
        float.as_str()
    };
    group_digits(
        n < 0.0 && digits.bytes().any(|d| d != b'0'),
        digits,
        separator,
        out,
    );
}

/// `digits` (ASCII) grouped by three from the right with `separator`, after a minus sign when
/// `negative`.
fn group_digits(negative: bool, digits: &str, separator: &str, out: &mut String) {
    if negative {
        out.push('-');
    }
    let first = match digits.len() % 3 {
        0 => digits.len().min(3),
        head => head,
    };
    out.push_str(&digits[..first]);
    let mut at = first;
    while at < digits.len() {
        out.push_str(separator);
        out.push_str(&digits[at..at + 3]);
        at += 3;
    }
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
                if let Some(d) = iso_day(t) {
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

/// `YYYY-MM-DD`, read directly. Written by hand: chrono reads it through its general parser,
/// which cost a sixth of building a notification whose template shows a date.
fn iso_day(t: &str) -> Option<NaiveDate> {
    let b = t.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let year = i32::try_from(number(&b[..4])?).ok()?;
    NaiveDate::from_ymd_opt(year, number(&b[5..7])?, number(&b[8..])?)
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
                let mut written = String::new();
                day(date, &conventions(language), &mut written);
                assert_eq!(
                    written,
                    date.format_localized("%-d %B %Y", locale).to_string()
                );
            }
        }
    }

    #[test]
    fn days_are_read_as_chrono_reads_them() {
        for t in [
            "2026-12-02",
            "0999-02-03",
            "2024-02-29",
            "2026-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-011",
            "2026/12/02",
            "+026-12-02",
            "2026-12-0a",
            "20261202xx",
        ] {
            let read = Value::Text(t.into()).as_datetime().ok().map(|at| at.date());
            assert_eq!(read, t.parse::<NaiveDate>().ok(), "{t}");
            if let Some(d) = iso_day(t) {
                assert_eq!(Some(d), read, "{t}");
            }
        }
    }

    /// `value` in `format` for a reader of `language`.
    fn format(value: &Value, format: Format, language: &str) -> Result<String, FormatError> {
        let mut out = String::new();
        format_into(value, format, language, &mut out)?;
        Ok(out)
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn an_integer_is_grouped_as_the_same_number_read_as_a_decimal_and_exactly_beyond() {
        for n in [
            0i64,
            1,
            12,
            123,
            1_234,
            12_345,
            123_456,
            1_234_567,
            -1,
            -999,
            -1_000,
            999_999,
            1 << 53,
            -(1 << 53),
        ] {
            for f in [Format::Fcfa, Format::Number] {
                for language in ["fr", "wo", "en"] {
                    assert_eq!(
                        format(&Value::Int(n), f, language).unwrap(),
                        format(&Value::Float(n as f64), f, language).unwrap(),
                        "{n} {f:?} {language}"
                    );
                }
            }
        }
        assert_eq!(
            format(&Value::Int(i64::MAX), Format::Number, "en").unwrap(),
            "9,223,372,036,854,775,807"
        );
        assert_eq!(
            format(&Value::Int(i64::MIN), Format::Fcfa, "en").unwrap(),
            "-9,223,372,036,854,775,808 FCFA"
        );
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
