//! A source as configured, checked: templates parsed, names of priorities, categories and
//! languages read, the query's placeholders numbered. Binding it to the columns the query
//! returns ([`Plan::bind`]) checks every column it names. Every error names the key.

use std::{collections::BTreeMap, time::Duration};

use xibaar_config::{SourceConfig, SourceKind};
use xibaar_core::{Category, Language, Priority};

use crate::template::{Template, find_column};

/// A configuration key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {message}")]
pub struct PlanError {
    pub key: String,
    pub message: String,
}

/// The parameters of every source query: `@P1` the batch size, `@P2` the watermark, `@P3` its
/// second column.
const PARAMETERS: [(&str, &str); 3] = [
    ("@batch", "@P1"),
    ("@watermark_key", "@P3"),
    ("@watermark", "@P2"),
];

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    /// Who its notifications and events are requested by: `source:<name>`.
    pub actor: xibaar_core::Actor,
    pub connection: String,
    pub kind: SourceKind,
    /// The query with its placeholders numbered for `sp_executesql`.
    pub statement: String,
    pub watermark: Vec<String>,
    pub key: String,
    pub time: Option<String>,
    pub poll_interval: Duration,
    pub batch_size: u32,
    pub start: xibaar_config::SourceStart,
    pub max_rate: Option<u32>,
    pub notifications: Option<NotificationPlan>,
    /// Customers sources: attribute → column.
    pub attributes: BTreeMap<String, String>,
    pub customer: Option<String>,
    /// Column indexes, once bound.
    pub columns: Option<Columns>,
}

#[derive(Debug, Clone)]
pub struct NotificationPlan {
    pub segment: BTreeMap<String, Template>,
    pub category: Option<Category>,
    pub priority: Priority,
    pub ttl_seconds: Option<u32>,
    pub collapse_key: Option<Template>,
    pub data: BTreeMap<String, Template>,
    pub default_language: Language,
    /// Title and body by language; the default's among them.
    pub content: BTreeMap<Language, (Template, Template)>,
}

/// Where each column the source needs sits in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub names: Vec<String>,
    pub watermark: Vec<usize>,
    pub key: usize,
    pub time: Option<usize>,
    pub customer: Option<usize>,
    /// Attribute → column, for customers sources.
    pub attributes: BTreeMap<String, usize>,
}

/// The attributes a customers source may keep.
pub const ATTRIBUTES: [&str; 4] = ["commune", "zone", "contract", "language"];

impl Plan {
    pub fn new(name: &str, config: &SourceConfig) -> Result<Self, PlanError> {
        let err = |k: &str, message: String| PlanError {
            key: format!("sources.{name}.{k}"),
            message,
        };
        let statement = number_parameters(&config.query, config.watermark.len())
            .map_err(|m| err("query", m))?;
        let notifications = match config.kind {
            SourceKind::Customers => {
                for attribute in config.attributes.keys() {
                    if !ATTRIBUTES.contains(&attribute.as_str()) {
                        return Err(err(
                            &format!("attributes.{attribute}"),
                            format!("unknown attribute (known: {})", ATTRIBUTES.join(", ")),
                        ));
                    }
                }
                None
            }
            SourceKind::Notifications => Some(notification_plan(name, config)?),
        };
        Ok(Self {
            name: name.to_owned(),
            actor: xibaar_core::Actor::system(&format!("source:{name}")),
            connection: config.connection.clone(),
            kind: config.kind,
            statement,
            watermark: config.watermark.clone(),
            key: config
                .key
                .clone()
                .unwrap_or_else(|| config.watermark.last().cloned().unwrap_or_default()),
            time: config.time.clone(),
            poll_interval: config.poll_interval,
            batch_size: config.batch_size,
            start: config.start,
            max_rate: config.max_rate,
            notifications,
            attributes: config.attributes.clone(),
            customer: config.customer.clone(),
            columns: None,
        })
    }

    /// Binds every column the source names to the query's `columns`, or names the key of the
    /// first one it does not return.
    pub fn bind(&mut self, columns: &[String]) -> Result<(), PlanError> {
        let name = self.name.clone();
        let err = |k: &str, message: String| PlanError {
            key: format!("sources.{name}.{k}"),
            message,
        };
        let find = |k: &str, column: &str| {
            find_column(columns, column).ok_or_else(|| {
                err(
                    k,
                    format!(
                        "the query returns no column `{column}` (it returns: {})",
                        columns.join(", ")
                    ),
                )
            })
        };
        let watermark = self
            .watermark
            .iter()
            .map(|c| find("watermark", c))
            .collect::<Result<Vec<_>, _>>()?;
        let key = find("key", &self.key)?;
        let time = self.time.as_deref().map(|c| find("time", c)).transpose()?;
        let customer = self
            .customer
            .as_deref()
            .map(|c| find("customer", c))
            .transpose()?;
        let attributes = self
            .attributes
            .iter()
            .map(|(a, c)| Ok((a.clone(), find(&format!("attributes.{a}"), c)?)))
            .collect::<Result<BTreeMap<_, _>, PlanError>>()?;
        if let Some(n) = &mut self.notifications {
            let resolve = |k: String, t: &mut Template| t.resolve(columns).map_err(|m| err(&k, m));
            for (language, (title, body)) in &mut n.content {
                resolve(format!("content.{language}.title"), title)?;
                resolve(format!("content.{language}.body"), body)?;
            }
            for (k, t) in &mut n.data {
                resolve(format!("data.{k}"), t)?;
            }
            for (k, t) in &mut n.segment {
                resolve(format!("segment.{k}"), t)?;
            }
            if let Some(t) = &mut n.collapse_key {
                resolve("collapse_key".into(), t)?;
            }
        }
        self.columns = Some(Columns {
            names: columns.to_vec(),
            watermark,
            key,
            time,
            customer,
            attributes,
        });
        Ok(())
    }
}

fn notification_plan(name: &str, config: &SourceConfig) -> Result<NotificationPlan, PlanError> {
    let err = |k: &str, message: String| PlanError {
        key: format!("sources.{name}.{k}"),
        message,
    };
    let template = |k: &str, text: &str| Template::parse(text).map_err(|m| err(k, m));
    let priority: Priority = config.priority.parse().map_err(|_| {
        err(
            "priority",
            format!(
                "`{}` is not a priority (urgent, high, normal, low)",
                config.priority
            ),
        )
    })?;
    let category = config
        .category
        .as_deref()
        .map(|c| {
            serde_json::from_value::<Category>(serde_json::Value::String(c.to_owned())).map_err(
                |_| {
                    err(
                        "category",
                        format!("`{c}` is not a category (billing, outage, prepaid, marketing)"),
                    )
                },
            )
        })
        .transpose()?;
    let ttl_seconds = config
        .ttl
        .map(|ttl| {
            u32::try_from(ttl.as_secs())
                .ok()
                .filter(|s| (1..=xibaar_core::notification::MAX_TTL_SECONDS).contains(s))
                .ok_or_else(|| err("ttl", "must be between 1 second and 28 days".into()))
        })
        .transpose()?;
    let mut content = BTreeMap::new();
    for (language, text) in &config.content {
        let parsed =
            Language::parse(language).map_err(|m| err(&format!("content.{language}"), m))?;
        content.insert(
            parsed,
            (
                template(&format!("content.{language}.title"), &text.title)?,
                template(&format!("content.{language}.body"), &text.body)?,
            ),
        );
    }
    let default_language = match &config.default_language {
        Some(l) => Language::parse(l).map_err(|m| err("default_language", m))?,
        None => content
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| err("content", "give a title and body for a language".into()))?,
    };
    let mut segment = BTreeMap::new();
    for (attribute, text) in &config.segment {
        if !ATTRIBUTES.contains(&attribute.as_str()) {
            return Err(err(
                &format!("segment.{attribute}"),
                format!("unknown attribute (known: {})", ATTRIBUTES.join(", ")),
            ));
        }
        segment.insert(
            attribute.clone(),
            template(&format!("segment.{attribute}"), text)?,
        );
    }
    Ok(NotificationPlan {
        segment,
        category,
        priority,
        ttl_seconds,
        collapse_key: config
            .collapse_key
            .as_deref()
            .map(|t| template("collapse_key", t))
            .transpose()?,
        data: config
            .data
            .iter()
            .map(|(k, t)| Ok((k.clone(), template(&format!("data.{k}"), t)?)))
            .collect::<Result<_, PlanError>>()?,
        default_language,
        content,
    })
}

/// `@batch`, `@watermark` and `@watermark_key` as `@P1`, `@P2` and `@P3`, each a whole name
/// (`@watermarks` is left alone). The query must use `@batch` and every watermark parameter.
fn number_parameters(query: &str, watermark_columns: usize) -> Result<String, String> {
    let mut out = query.to_owned();
    for (name, numbered) in PARAMETERS {
        let needed = match name {
            "@watermark_key" => watermark_columns == 2,
            _ => true,
        };
        let (replaced, found) = replace_name(&out, name, numbered);
        if needed && found == 0 {
            return Err(format!("must use {name}"));
        }
        if !needed && found > 0 {
            return Err(format!(
                "uses {name}, which needs a second watermark column"
            ));
        }
        out = replaced;
    }
    Ok(out)
}

fn replace_name(text: &str, name: &str, with: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut found = 0;
    while let Some(at) = find_ignore_case(rest, name) {
        let after = &rest[at + name.len()..];
        let whole = !after
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        if whole {
            out.push_str(with);
            found += 1;
        } else {
            out.push_str(&rest[at..at + name.len()]);
        }
        rest = after;
    }
    out.push_str(rest);
    (out, found)
}

fn find_ignore_case(text: &str, name: &str) -> Option<usize> {
    text.to_ascii_lowercase().find(&name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_whole_names_only() {
        let q = "SELECT TOP (@batch) * FROM t WHERE (ts > @watermark OR (ts = @Watermark AND \
                 id > @watermark_key)) AND note <> '@watermarks'";
        assert_eq!(
            number_parameters(q, 2).unwrap(),
            "SELECT TOP (@P1) * FROM t WHERE (ts > @P2 OR (ts = @P2 AND id > @P3)) AND note <> \
             '@watermarks'"
        );
        assert!(
            number_parameters("SELECT TOP (@batch) 1", 1)
                .unwrap_err()
                .contains("@watermark")
        );
        assert!(
            number_parameters(q, 1)
                .unwrap_err()
                .contains("second watermark")
        );
    }
}
