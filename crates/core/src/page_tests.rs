use std::collections::BTreeMap;

use chrono::TimeZone;

use super::*;
use crate::{ActorKind, Command, CustomerId, Language, Text};

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_764_812_989 + seconds, 331_665_242)
        .unwrap()
}

/// A source's notification: one actor, instant, category and expiry for all; `i` makes its
/// id, customer and text.
fn from_source(i: u128) -> SendNotification {
    SendNotification {
        notification_id: NotificationId(uuid::Uuid::from_u128(i)),
        priority: Priority::Normal,
        audience: Audience::Customers {
            customer_ids: vec![CustomerId::parse(format!("C{i:07}")).unwrap()],
        },
        content: Content {
            title: format!("Facture {i}"),
            body: "Votre facture de 12 500 FCFA est à régler avant le 4 janvier.".into(),
            language: Some(Language::parse("fr").unwrap()),
            translations: BTreeMap::from([(
                Language::parse("wo").unwrap(),
                Text {
                    title: format!("Faktiir {i}"),
                    body: "Sa faktiir bu 12 500 FCFA war na ñu ko fey.".into(),
                },
            )]),
            ..Default::default()
        },
        category: Some(Category::Billing),
        idempotency_key: None,
        delivery: DeliveryOptions {
            expires_at: Some(at(86_400)),
            collapse_key: Some(format!("bill-{i}")),
            send_at: None,
        },
        requested_by: Actor::system("source:bills"),
        accepted_at: at(0),
    }
}

/// Pages whose notifications share everything, something, or only their priority.
fn pages() -> Vec<Vec<SendNotification>> {
    let source: Vec<_> = (1..=5).map(from_source).collect();
    let vary = |change: &dyn Fn(usize, &mut SendNotification)| {
        let mut page = source.clone();
        for (i, n) in page.iter_mut().enumerate() {
            change(i, n);
        }
        page
    };
    vec![
        source.clone(),
        vec![from_source(7)],
        vary(&|i, n| n.category = (i % 2 == 0).then_some(Category::Outage)),
        vary(&|i, n| n.delivery.expires_at = Some(at(i as i64))),
        vary(&|i, n| n.delivery.expires_at = (i != 3).then(|| at(60))),
        vary(&|i, n| n.delivery.send_at = Some(at(600 + i as i64 % 2))),
        vary(&|_, n| n.delivery.send_at = Some(at(600))),
        vary(&|i, n| {
            n.requested_by = Actor {
                kind: ActorKind::Client,
                id: format!("billing \"{}\"", i % 2),
            }
        }),
        vary(&|i, n| n.accepted_at = at(i as i64)),
        vary(&|i, n| {
            n.idempotency_key = Some(format!("key \"{i}\""));
            n.delivery.collapse_key = None;
            n.category = None;
            n.delivery.expires_at = None;
            n.audience = Audience::Everyone;
            n.content.body = format!("ligne\n{i}");
        }),
        vary(&|i, n| {
            n.accepted_at = at(i as i64);
            n.requested_by.id = format!("source:{i}");
            n.category = None;
        }),
    ]
}

/// The page written by [`write_page`] from each notification's start and own fields.
fn written(page: &[SendNotification], shared: bool) -> Vec<u8> {
    let starts: Vec<(Vec<u8>, PageShared)> = page
        .iter()
        .map(|n| {
            let mut start = Vec::new();
            n.write_page_entry(&mut start);
            (start, PageShared::of(n))
        })
        .collect();
    let shared = if shared {
        PageShared::common(starts.iter().map(|(_, own)| own))
    } else {
        PageShared::default()
    };
    let mut out = Vec::new();
    write_page(
        &mut out,
        &shared,
        starts.iter().map(|(start, own)| (start.as_slice(), own)),
    );
    out
}

fn command(page: &[SendNotification]) -> Command {
    Command::page(page.to_vec()).unwrap()
}

/// How the pages were written before `shared` existed, and how earlier dispatchers read them.
#[derive(Serialize, Deserialize)]
struct EarlierPage {
    r#type: String,
    notifications: Vec<SendNotification>,
}

#[test]
fn a_page_is_written_as_serde_json_writes_it_and_reads_back_whole() {
    for page in pages() {
        let bytes = written(&page, true);
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            serde_json::to_string(&command(&page)).unwrap()
        );
        let read: Command = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read, command(&page));
    }
}

#[test]
fn a_page_states_once_what_every_notification_has_and_nothing_else() {
    let pages = pages();
    let json = |page: &[SendNotification]| -> serde_json::Value {
        serde_json::from_slice(&written(page, true)).unwrap()
    };
    let source = json(&pages[0]);
    assert_eq!(
        source["shared"],
        serde_json::json!({
            "priority": "normal",
            "category": "billing",
            "expires_at": "2025-12-05T01:49:49.331665242Z",
            "requested_by": {"kind": "system", "id": "source:bills"},
            "accepted_at": "2025-12-04T01:49:49.331665242Z",
        })
    );
    let first = source["notifications"][0].as_object().unwrap();
    let mut keys: Vec<_> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["audience", "collapse_key", "content", "notification_id"]
    );
    // Categories that differ, and a missing one, stay with their notifications.
    let categories = json(&pages[2]);
    assert!(categories["shared"].get("category").is_none());
    assert_eq!(categories["notifications"][0]["category"], "outage");
    assert!(categories["notifications"][1].get("category").is_none());
    // Every notification's own instant and actor.
    let instants = json(&pages[8]);
    assert!(instants["shared"].get("accepted_at").is_none());
    assert!(instants["notifications"][4].get("accepted_at").is_some());
    // A whole page: the earlier shape, which earlier dispatchers read.
    for page in &pages {
        let whole = written(page, false);
        let earlier: EarlierPage = serde_json::from_slice(&whole).unwrap();
        assert_eq!(earlier.r#type, "send_notifications");
        assert_eq!(&earlier.notifications, page);
        assert!(!String::from_utf8(whole.clone()).unwrap().contains("shared"));
        assert_eq!(
            serde_json::from_slice::<Command>(&whole).unwrap(),
            command(page)
        );
    }
}

#[test]
fn a_page_of_the_earlier_shape_reads_the_same_and_earlier_readers_refuse_the_new_one() {
    for page in pages() {
        let earlier = serde_json::to_vec(&EarlierPage {
            r#type: "send_notifications".into(),
            notifications: page.clone(),
        })
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<Command>(&earlier).unwrap(),
            command(&page)
        );
        // The priority is always shared, so an earlier reader fails loudly.
        let error = serde_json::from_slice::<EarlierPage>(&written(&page, true))
            .err()
            .unwrap();
        assert!(error.to_string().contains("priority"), "{error}");
    }
}

#[test]
fn a_field_neither_a_notification_nor_its_page_has_is_reported() {
    let mut page: serde_json::Value = serde_json::from_slice(&written(&pages()[0], true)).unwrap();
    page["shared"]
        .as_object_mut()
        .unwrap()
        .remove("accepted_at");
    let error = serde_json::from_value::<Command>(page).unwrap_err();
    assert!(error.to_string().contains("accepted_at"), "{error}");
}
