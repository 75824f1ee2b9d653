//! A row as a source reads it: each column's value, whatever SQL Server type it came in.

use std::fmt;

use chrono::{NaiveDate, NaiveDateTime};
use serde::Serialize;
use tiberius::{ColumnData, FromSql};

/// One column's value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    /// Dates and date-times without an offset are the utility's local time; with an offset,
    /// converted to UTC.
    DateTime(NaiveDateTime),
    /// Binary data, in hexadecimal.
    Bytes(String),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a decimal",
            Value::Bool(_) => "a bit",
            Value::Text(_) => "a text",
            Value::DateTime(_) => "a date",
            Value::Bytes(_) => "binary data",
        }
    }

    /// The value as text, as [`Display`](fmt::Display) writes it: a text column borrowed and
    /// an integer written by `itoa`, without the formatting machinery (keys and customers of
    /// every row are read this way).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Value::Text(t) | Value::Bytes(t) => std::borrow::Cow::Borrowed(t),
            Value::Int(n) => std::borrow::Cow::Owned(itoa::Buffer::new().format(*n).to_owned()),
            other => std::borrow::Cow::Owned(other.to_string()),
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    fn from_column(data: ColumnData<'static>) -> Value {
        match data {
            // Text decoded by tiberius is moved, not copied.
            ColumnData::String(Some(s)) => Value::Text(s.into_owned()),
            data => Self::from_borrowed(&data),
        }
    }

    fn from_borrowed(data: &ColumnData<'static>) -> Value {
        let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
        match data {
            ColumnData::U8(v) => or_null(v.map(i64::from).map(Value::Int)),
            ColumnData::I16(v) => or_null(v.map(i64::from).map(Value::Int)),
            ColumnData::I32(v) => or_null(v.map(i64::from).map(Value::Int)),
            ColumnData::I64(v) => or_null(v.map(Value::Int)),
            ColumnData::F32(v) => or_null(v.map(f64::from).map(Value::Float)),
            ColumnData::F64(v) => or_null(v.map(Value::Float)),
            ColumnData::Bit(v) => or_null(v.map(Value::Bool)),
            ColumnData::String(v) => or_null(v.as_ref().map(|s| Value::Text(s.to_string()))),
            ColumnData::Guid(v) => or_null(v.map(|g| Value::Text(g.to_string()))),
            ColumnData::Binary(v) => or_null(
                v.as_ref()
                    .map(|b| Value::Bytes(b.iter().map(|byte| format!("{byte:02x}")).collect())),
            ),
            ColumnData::Numeric(v) => or_null(v.map(|n| {
                if n.scale() == 0 {
                    i64::try_from(i128::from(n)).map_or(Value::Float(f64::from(n)), Value::Int)
                } else {
                    Value::Float(f64::from(n))
                }
            })),
            ColumnData::Xml(v) => or_null(v.as_ref().map(|x| Value::Text(x.to_string()))),
            ColumnData::Date(_) => NaiveDate::from_sql(data)
                .ok()
                .flatten()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map_or(Value::Null, Value::DateTime),
            ColumnData::DateTimeOffset(_) => chrono::DateTime::<chrono::Utc>::from_sql(data)
                .ok()
                .flatten()
                .map_or(Value::Null, |d| Value::DateTime(d.naive_utc())),
            ColumnData::Time(_) => chrono::NaiveTime::from_sql(data)
                .ok()
                .flatten()
                .map_or(Value::Null, |t| {
                    Value::Text(t.format("%H:%M:%S").to_string())
                }),
            ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => {
                NaiveDateTime::from_sql(data)
                    .ok()
                    .flatten()
                    .map_or(Value::Null, Value::DateTime)
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{}", u8::from(*b)),
            Value::Text(t) | Value::Bytes(t) => f.write_str(t),
            Value::DateTime(at) => write!(f, "{}", at.format("%Y-%m-%dT%H:%M:%S")),
        }
    }
}

/// A row's values, in the query's column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn from_tiberius(row: tiberius::Row) -> Row {
        Row(row.into_iter().map(Value::from_column).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_values_text_is_what_display_writes() {
        let values = [
            Value::Null,
            Value::Int(-9_223_372_036_854_775_808),
            Value::Int(42),
            Value::Float(1.5),
            Value::Bool(true),
            Value::Text("C-1 é".into()),
            Value::Bytes("00ff".into()),
            Value::DateTime(
                NaiveDate::from_ymd_opt(2026, 12, 4)
                    .unwrap()
                    .and_hms_opt(4, 5, 6)
                    .unwrap(),
            ),
        ];
        for value in values {
            assert_eq!(value.text(), value.to_string());
        }
    }
}
