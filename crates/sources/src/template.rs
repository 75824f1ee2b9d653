//! Content templates: text with `{column}` and `{column:format}` placeholders (`{{` and `}}`
//! for braces). Written by hand: the grammar is two tokens, and template engines would bring
//! a language of their own where operators should only name columns.

use crate::{
    format::{Format, FormatError, format_into},
    row::{Row, Value},
};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field {
        column: String,
        /// Index in the query's columns, once resolved.
        index: usize,
        format: Format,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err("a `}` without its `{` (write `}}` for a brace)".into()),
                '{' => {
                    let mut inside = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!(
                                    "`{{{inside}` is not closed with `}}` (write `{{{{` for a brace)"
                                ));
                            }
                            Some(c) => inside.push(c),
                        }
                    }
                    let (column, format_name) = match inside.split_once(':') {
                        Some((c, f)) => (c.trim(), Some(f.trim())),
                        None => (inside.trim(), None),
                    };
                    if column.is_empty() {
                        return Err("`{}` names no column".into());
                    }
                    let format = match format_name {
                        None => Format::Plain,
                        Some(name) => Format::parse(name).ok_or_else(|| {
                            format!(
                                "`{{{inside}}}`: unknown format `{name}` (known: {})",
                                Format::NAMES.join(", ")
                            )
                        })?,
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field {
                        column: column.to_owned(),
                        index: usize::MAX,
                        format,
                    });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// The columns the template names.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field { column, .. } => Some(column.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Binds each placeholder to its column among `columns` (case-insensitively, as SQL Server
    /// names them); the first unknown one is the error.
    pub fn resolve(&mut self, columns: &[String]) -> Result<(), String> {
        for part in &mut self.parts {
            if let Part::Field { column, index, .. } = part {
                *index = find_column(columns, column).ok_or_else(|| {
                    format!(
                        "unknown column `{column}` (the query returns: {})",
                        columns.join(", ")
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The text for `row`, values formatted for a reader of `language`.
    pub fn render(&self, row: &Row, language: &str) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.capacity());
        self.render_into(row, language, &mut out)?;
        Ok(out)
    }

    /// Room for a rendering: the literal text and a few words for each value.
    fn capacity(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Field { .. } => 24,
            })
            .sum()
    }

    /// [`Template::render`], at the end of `out`.
    pub fn render_into(
        &self,
        row: &Row,
        language: &str,
        out: &mut String,
    ) -> Result<(), RenderError> {
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field {
                    column,
                    index,
                    format: f,
                } => {
                    let value = row.0.get(*index).unwrap_or(&Value::Null);
                    if *value == Value::Null {
                        return Err(RenderError {
                            column: column.clone(),
                            error: FormatError("is NULL".into()),
                        });
                    }
                    format_into(value, *f, language, out).map_err(|error| RenderError {
                        column: column.clone(),
                        error,
                    })?;
                }
            }
        }
        Ok(())
    }
}

pub fn find_column(columns: &[String], name: &str) -> Option<usize> {
    columns.iter().position(|c| c.eq_ignore_ascii_case(name))
}

/// A row's value that a template cannot write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}` {error}")]
pub struct RenderError {
    pub column: String,
    pub error: FormatError,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<String> {
        ["bill_id", "amount", "due"].map(String::from).to_vec()
    }

    #[test]
    fn placeholders_are_filled_and_formatted_in_the_readers_language() {
        let mut t = Template::parse("{{Bill}} {bill_id}: {AMOUNT:fcfa} by {due:date}").unwrap();
        t.resolve(&columns()).unwrap();
        let row = Row(vec![
            Value::Int(42),
            Value::Text("12500.00".into()),
            Value::Text("2026-12-31".into()),
        ]);
        assert_eq!(
            t.render(&row, "fr").unwrap(),
            "{Bill} 42: 12\u{202f}500 FCFA by 31 décembre 2026"
        );
        assert_eq!(
            t.columns().collect::<Vec<_>>(),
            ["bill_id", "AMOUNT", "due"]
        );
    }

    #[test]
    fn bad_templates_and_values_are_named() {
        for (bad, says) in [
            ("{amount", "not closed"),
            ("amount}", "without its `{`"),
            ("{}", "names no column"),
            ("{amount:euro}", "unknown format `euro`"),
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut t = Template::parse("{amout}").unwrap();
        let e = t.resolve(&columns()).unwrap_err();
        assert!(e.contains("unknown column `amout`") && e.contains("bill_id, amount, due"));
        let mut t = Template::parse("{amount:fcfa}").unwrap();
        t.resolve(&columns()).unwrap();
        let e = t
            .render(&Row(vec![Value::Int(1), Value::Null, Value::Null]), "fr")
            .unwrap_err();
        assert_eq!(e.to_string(), "column `amount` is NULL");
    }
}
