//! What a row becomes: a notification (notifications sources), whose id derives from the row's
//! name, or a `customer.attributes_changed` event (customers sources). Rows are built a chunk
//! at a time ([`Builder`]), each notification's texts rendered into the strings the row before
//! left.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use xibaar_core::{
    Actor, Audience, Contract, CustomerAttributes, CustomerId, Event, EventEnvelope, Language,
    NotificationId, Priority, SendNotification, SendRequest,
    event::CustomerAttributesChanged,
    notification::{Content, MAX_ATTRIBUTE_CHARS},
    page::PageShared,
};

use crate::{
    emit::{Encoded, Message, Origin},
    plan::{Columns, NotificationPlan, Plan},
    row::{Row, Value},
    template::Template,
};

/// What a row becomes.
#[derive(Debug, Clone)]
pub enum Emitted {
    /// A notification, to be stored in a page with its neighbours ([`crate::emit::page`]).
    Notification(Encoded),
    /// An event, stored on its own.
    Event(Message),
}

/// Namespace of notification ids derived from source rows (UUIDv5).
const SOURCE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5c3a_61e2_0f4d_4b8e_9a71_d2c8_40b6_1f93);

/// What `row` becomes, or why it cannot become anything.
pub fn emit(plan: &Plan, row: &Row, now: DateTime<Utc>) -> Result<Emitted, String> {
    Builder::new(plan, now).build(row)
}

/// Builds rows of one source, one after another, into what they become, as [`emit`] does each
/// row alone but keeping what a row leaves for the next: the request its notification is
/// rendered into (so the texts of a row reuse the strings of the one before, instead of a
/// dozen allocations a row), and the fields every notification built at `now` shares, kept
/// once for all of them.
pub struct Builder<'a> {
    plan: &'a Plan,
    now: DateTime<Utc>,
    /// The last row's request: every field is written again for each row.
    request: SendRequest,
    /// The shared fields of the last notification, with and without its requester.
    own: Option<(PageShared, Arc<PageShared>)>,
    /// The row's name ([`Origin::name`]).
    name: String,
}

impl<'a> Builder<'a> {
    pub fn new(plan: &'a Plan, now: DateTime<Utc>) -> Self {
        let request = match &plan.notifications {
            Some(n) => plan_request(
                n,
                Audience::Everyone,
                Content {
                    language: Some(n.default_language.clone()),
                    ..Content::default()
                },
                None,
            ),
            None => empty_request(Priority::Normal),
        };
        Self {
            plan,
            now,
            request,
            own: None,
            name: String::new(),
        }
    }

    /// What `row` becomes, or why it cannot become anything.
    pub fn build(&mut self, row: &Row) -> Result<Emitted, String> {
        let plan = self.plan;
        let columns = plan.columns.as_ref().expect("a bound plan");
        self.name.clear();
        if Origin::write_name(row, columns, &plan.name, &mut self.name)? {
            return Err(format!(
                "key column `{}` is NULL or empty",
                columns.names[columns.key]
            ));
        }
        let customer = |row: &Row| -> Result<CustomerId, String> {
            let index = columns.customer.expect("checked at start");
            let value = &row.0[index];
            CustomerId::parse(value.text().into_owned())
                .map_err(|e| format!("customer column `{}`: {e}", columns.names[index]))
        };
        match &plan.notifications {
            Some(n) => {
                match (columns.customer, &mut self.request.audience) {
                    (Some(_), Audience::Customers { customer_ids }) => {
                        customer_ids.clear();
                        customer_ids.push(customer(row)?);
                    }
                    (Some(_), audience) => {
                        *audience = Audience::Customers {
                            customer_ids: vec![customer(row)?],
                        };
                    }
                    (None, audience) => *audience = segment(n, row)?,
                }
                render_request(n, &mut self.request, row)?;
                self.request
                    .validate(self.now)
                    .map_err(|e| describe_request_error(&e))?;
                let id = NotificationId(xibaar_core::ids::derived_uuid(
                    &SOURCE_NAMESPACE,
                    self.name.as_bytes(),
                ));
                Ok(Emitted::Notification(self.encode(n, id)))
            }
            None => {
                let customer_id = customer(row)?;
                let attributes = attributes(columns, row)?;
                let envelope = EventEnvelope::new(
                    Event::CustomerAttributesChanged(CustomerAttributesChanged {
                        customer_id,
                        attributes,
                        origin: self.name.clone(),
                    }),
                    self.name.clone(),
                    None,
                    plan.actor.clone(),
                );
                Ok(Emitted::Event(Message {
                    subject: envelope.subject(),
                    headers: xibaar_streams::event_headers(&envelope),
                    payload: Bytes::from(envelope.to_json().map_err(|e| e.to_string())?),
                    page: None,
                }))
            }
        }
    }

    /// The request as the notification `id`, encoded; its parts go back into the builder for
    /// the next row. The entry is written from the command the request becomes, as for any
    /// other notification; only its requester is left out there, as a page states it once.
    fn encode(&mut self, n: &NotificationPlan, id: NotificationId) -> Encoded {
        let request = std::mem::replace(&mut self.request, empty_request(n.priority));
        // An empty id does not allocate: the requester is the plan's, in `own`.
        let send = request.into_command(id, None, Actor::system(""), self.now);
        let mut start = Vec::with_capacity(512);
        send.write_page_entry(&mut start);
        let own = self.own(&send);
        let priority = send.priority;
        let SendNotification {
            audience,
            content,
            delivery,
            ..
        } = send;
        self.request = plan_request(n, audience, content, delivery.collapse_key);
        Encoded {
            id,
            priority,
            start,
            own,
        }
    }

    /// The fields of `send` a page may state once, with the plan's requester: those of the
    /// notification before when they are the same (they are for every notification built at
    /// one time from one plan).
    fn own(&mut self, send: &SendNotification) -> Arc<PageShared> {
        let unattributed = PageShared {
            requested_by: None,
            ..PageShared::of(send)
        };
        match &self.own {
            Some((kept, own)) if *kept == unattributed => own.clone(),
            _ => {
                let own = Arc::new(PageShared {
                    requested_by: Some(self.plan.actor.clone()),
                    ..unattributed.clone()
                });
                self.own = Some((unattributed, own.clone()));
                own
            }
        }
    }
}

/// A request without content, audience or options: allocates nothing.
fn empty_request(priority: Priority) -> SendRequest {
    SendRequest {
        priority,
        audience: Audience::Everyone,
        content: Content::default(),
        category: None,
        ttl_seconds: None,
        collapse_key: None,
        send_at: None,
    }
}

/// The request of plan `n` with these parts: its options are the plan's. The content's language
/// is the plan's default from the first row on ([`Builder::new`]), and a command gives it back.
fn plan_request(
    n: &NotificationPlan,
    audience: Audience,
    content: Content,
    collapse_key: Option<String>,
) -> SendRequest {
    SendRequest {
        priority: n.priority,
        audience,
        content,
        category: n.category,
        ttl_seconds: n.ttl_seconds,
        collapse_key,
        send_at: None,
    }
}

/// Renders the plan's templates for `row` into `request` (one of [`plan_request`]'s): its texts
/// in each language, its data and its collapse key, into the strings already there. The first
/// error is returned; the request is then only partly written, and the next row writes every
/// text again.
fn render_request(
    n: &NotificationPlan,
    request: &mut SendRequest,
    row: &Row,
) -> Result<(), String> {
    // The key named in an error is written only when there is one: this runs for every row.
    let render =
        |what: &dyn Fn() -> String, t: &Template, language: &Language, out: &mut String| {
            out.clear();
            t.render_into(row, language.as_str(), out)
                .map_err(|e| format!("{}: {e}", what()))
        };
    let content = &mut request.content;
    for (language, (title, body)) in &n.content {
        let text = if *language == n.default_language {
            (&mut content.title, &mut content.body)
        } else {
            let text = entry(&mut content.translations, language);
            (&mut text.title, &mut text.body)
        };
        render(
            &|| format!("content.{language}.title"),
            title,
            language,
            text.0,
        )?;
        render(
            &|| format!("content.{language}.body"),
            body,
            language,
            text.1,
        )?;
    }
    for (k, t) in &n.data {
        let value = entry(&mut content.data, k);
        render(&|| format!("data.{k}"), t, &n.default_language, value)?;
    }
    match &n.collapse_key {
        Some(t) => {
            let key = request.collapse_key.get_or_insert_with(String::new);
            render(&|| "collapse_key".into(), t, &n.default_language, key)?;
        }
        None => request.collapse_key = None,
    }
    Ok(())
}

/// The value under `key`, inserted empty the first time.
fn entry<'m, K: Ord + Clone, V: Default>(map: &'m mut BTreeMap<K, V>, key: &K) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.clone(), V::default());
    }
    map.get_mut(key).expect("just inserted")
}

fn segment(n: &NotificationPlan, row: &Row) -> Result<Audience, String> {
    let value = |attribute: &str| -> Result<Option<String>, String> {
        n.segment
            .get(attribute)
            .map(|t| {
                t.render(row, "fr")
                    .map_err(|e| format!("segment.{attribute}: {e}"))
            })
            .transpose()
    };
    let contract = value("contract")?
        .map(|c| {
            Contract::parse(&c)
                .ok_or_else(|| format!("segment.contract: `{c}` is neither prepaid nor postpaid"))
        })
        .transpose()?;
    let language = value("language")?
        .map(|l| Language::parse(&l).map_err(|e| format!("segment.language: {e}")))
        .transpose()?;
    Ok(Audience::Segment {
        commune: value("commune")?,
        zone: value("zone")?,
        contract,
        language,
    })
}

fn attributes(columns: &Columns, row: &Row) -> Result<CustomerAttributes, String> {
    let text = |attribute: &str| -> Result<Option<String>, String> {
        let Some(index) = columns.attributes.get(attribute) else {
            return Ok(None);
        };
        match &row.0[*index] {
            Value::Null => Ok(None),
            value => {
                let text = value.to_string().trim().to_owned();
                if text.is_empty() {
                    Ok(None)
                } else if text.chars().count() > MAX_ATTRIBUTE_CHARS || text.contains('\0') {
                    Err(format!(
                        "attribute {attribute}: must be at most {MAX_ATTRIBUTE_CHARS} characters, without NUL"
                    ))
                } else {
                    Ok(Some(text))
                }
            }
        }
    };
    Ok(CustomerAttributes {
        commune: text("commune")?,
        zone: text("zone")?,
        contract: text("contract")?
            .map(|c| {
                Contract::parse(&c).ok_or_else(|| {
                    format!("attribute contract: `{c}` is neither prepaid nor postpaid")
                })
            })
            .transpose()?,
        language: text("language")?
            .map(|l| {
                Language::of_locale(&l)
                    .ok_or_else(|| format!("attribute language: `{l}` is not a language"))
            })
            .transpose()?,
    })
}

fn describe_request_error(e: &xibaar_core::RequestError) -> String {
    match e {
        xibaar_core::RequestError::Invalid(violations) => violations
            .iter()
            .map(|v| format!("{} {}", v.field, v.message))
            .collect::<Vec<_>>()
            .join("; "),
        xibaar_core::RequestError::TooLarge(m) => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use xibaar_core::Command;

    use super::*;
    use crate::emit::page;

    const COLUMNS: [&str; 5] = ["BILL_ID", "CUSTOMER_ID", "AMOUNT", "DUE", "NOTE"];

    fn plan(audience: &str) -> Plan {
        let toml = format!(
            r#"
[sql.billing]
host = "127.0.0.1"
user = "xibaar"
password = "s3cret"
[sources.bills]
connection = "billing"
kind = "notifications"
query = "SELECT TOP (@batch) * FROM BILLS WHERE BILL_ID > @watermark ORDER BY BILL_ID"
watermark = ["BILL_ID"]
{audience}
category = "billing"
ttl = "1d"
default_language = "fr"
collapse_key = "{{DUE}}-{{BILL_ID}}"
data = {{ bill = "{{BILL_ID}}", screen = "bills" }}
[sources.bills.content.fr]
title = "Facture {{BILL_ID}}"
body = "Votre facture de {{AMOUNT:fcfa}} est à régler avant le {{DUE:date}}. {{NOTE}}"
[sources.bills.content.wo]
title = "Faktiir {{BILL_ID}}"
body = "Sa faktiir bu {{AMOUNT:fcfa}} war na ñu ko fey balaa {{DUE:date}}."
[sources.bills.content.en]
title = "Bill {{BILL_ID}}"
body = "{{NOTE}}"
"#
        );
        let config = xibaar_config::Config::from_toml(&toml).unwrap();
        let mut plan = Plan::new("bills", &config.sources["bills"]).unwrap();
        plan.bind(&COLUMNS.map(String::from)).unwrap();
        plan
    }

    fn row(id: i64, customer: Value, due: &str, note: &str) -> Row {
        Row(vec![
            Value::Int(id),
            customer,
            Value::Int(5_000 + id),
            Value::Text(due.into()),
            Value::Text(note.into()),
        ])
    }

    /// Rows that become notifications, with rows between them that fail at every step a row
    /// can: its customer, a template, the content rules, the collapse key.
    fn rows() -> Vec<Row> {
        let customer = |c: &str| Value::Text(c.into());
        vec![
            row(1, customer("C-1"), "2026-12-15", "one"),
            row(2, customer("C 2"), "2026-12-15", "bad customer"),
            row(
                3,
                customer("C-3"),
                "2026-12-15",
                "quotes \"and\" \\ new\nline",
            ),
            row(4, customer("C-4"), "not a date", "a template fails"),
            row(5, customer("C-5"), "2026-12-16", "after"),
            row(6, customer("C-6"), "2026-12-16", &"long ".repeat(500)),
            row(7, customer("C-7"), "2026-12-17", "nul\0inside"),
            row(8, customer("C-8"), "2026-12-17", ""),
            row(9, Value::Null, "2026-12-17", "no customer"),
            row(
                10,
                customer("C-10"),
                "2026-12-18 ",
                "a space in the collapse key",
            ),
            row(11, customer("C-11"), "2026-12-18", "last"),
        ]
    }

    fn same(a: &Result<Emitted, String>, b: &Result<Emitted, String>) -> bool {
        match (a, b) {
            (Ok(Emitted::Notification(a)), Ok(Emitted::Notification(b))) => {
                a.id == b.id && a.priority == b.priority && a.start == b.start && a.own == b.own
            }
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }

    #[test]
    fn a_builder_going_from_row_to_row_builds_each_as_if_it_were_alone() {
        let now = Utc::now();
        for audience in [
            "customer = \"CUSTOMER_ID\"",
            "segment = { commune = \"{NOTE}\" }",
        ] {
            let plan = plan(audience);
            let mut builder = Builder::new(&plan, now);
            let rows = rows();
            let mut accepted = 0;
            for row in &rows {
                let built = builder.build(row);
                let alone = emit(&plan, row, now);
                assert!(
                    same(&built, &alone),
                    "{audience}, {row:?}: {built:?} against {alone:?}"
                );
                accepted += usize::from(built.is_ok());
            }
            assert!(
                accepted >= 3 && accepted < rows.len(),
                "{audience}: {accepted} rows accepted; the rows must test both"
            );
        }
    }

    #[test]
    fn a_builders_page_is_the_page_of_its_notifications_encoded_whole() {
        let now = Utc::now();
        let plan = plan("customer = \"CUSTOMER_ID\"");
        let mut builder = Builder::new(&plan, now);
        let built: Vec<Encoded> = rows()
            .iter()
            .filter_map(|row| match builder.build(row) {
                Ok(Emitted::Notification(n)) => Some(n),
                _ => None,
            })
            .collect();
        // One shared set of fields for the whole builder.
        assert!(built.iter().all(|n| Arc::ptr_eq(&n.own, &built[0].own)));
        let page = page(built, false).unwrap();
        let command: Command = serde_json::from_slice(&page.payload).unwrap();
        let notifications = command.notifications().to_vec();
        assert_eq!(notifications[0].requested_by, plan.actor);
        assert_eq!(notifications[0].content.title, "Facture 1");
        assert_eq!(
            notifications[0].content.translations[&Language::parse("wo").unwrap()].body,
            "Sa faktiir bu 5\u{202f}001 FCFA war na ñu ko fey balaa 15 desaambar 2026."
        );
        assert_eq!(
            notifications[1].content.translations[&Language::parse("en").unwrap()].body,
            "quotes \"and\" \\ new\nline"
        );
        assert_eq!(
            notifications[1].delivery.expires_at,
            Some(now + chrono::Duration::days(1))
        );
        let whole =
            crate::emit::page(notifications.into_iter().map(Encoded::of).collect(), false).unwrap();
        assert_eq!(page.payload, whole.payload);
        assert_eq!(page.subject, whole.subject);
    }

    #[test]
    fn the_shared_fields_are_kept_only_while_they_are_the_same() {
        let now = Utc::now();
        let plan = plan("customer = \"CUSTOMER_ID\"");
        let mut builder = Builder::new(&plan, now);
        let Ok(Emitted::Notification(first)) = builder.build(&rows()[0]) else {
            panic!("the first row is a notification");
        };
        let page = page(vec![first.clone()], false).unwrap();
        let command: Command = serde_json::from_slice(&page.payload).unwrap();
        let mut send = command.notifications()[0].clone();
        assert_eq!(*first.own, PageShared::from(send.clone()));
        // Another time of acceptance: other shared fields, with the plan's requester.
        send.accepted_at = now + chrono::Duration::seconds(1);
        let other = builder.own(&send);
        assert!(!Arc::ptr_eq(&other, &first.own));
        assert_eq!(*other, PageShared::from(send.clone()));
        assert!(Arc::ptr_eq(&builder.own(&send), &other));
    }
}
