//! The OpenAPI 3.1 description of the api, generated from the handlers and the types they
//! take and return (utoipa), served at `/openapi.json` with an interactive page at `/docs`.
//! `schemas/openapi.json` is the checked-in copy; a test fails when the code drifts from it.

use utoipa::{
    Modify, OpenApi,
    openapi::{
        ContentBuilder, Header, HeaderBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder,
        path::{Operation, ParameterIn},
        schema::Type,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{ops, problem::Problem, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Xibaar",
        description = "Push notifications for the utility's customer app: devices, inbox, preferences and live updates for customers; sending, status and audit for back-office clients. Every change is an event in the log; reads come from its read models.\n\nAuthenticate with a bearer JWT: a customer's token has the customer id as `sub` and no scope; a back-office client's token carries scopes (`notifications:send`, `notifications:read`, `audit:read`, `ops:read`). Every error is an RFC 9457 problem.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
        version = "1.1.0",
    ),
    servers(
        (url = "http://127.0.0.1:8080", description = "The local pipeline of `scripts/run-local`; a deployment serves the same paths at its own address"),
    ),
    paths(
        routes::notifications::send,
        routes::notifications::status,
        routes::notifications::cancel,
        routes::notifications::timeline,
        routes::devices::register,
        routes::devices::list,
        routes::devices::remove,
        routes::inbox::list,
        routes::inbox::unread_count,
        routes::inbox::mark_read,
        routes::inbox::mark_all_read,
        routes::inbox::stream,
        routes::preferences::show,
        routes::preferences::change,
        routes::stats::daily,
        ops::snapshot,
        ops::stream,
        ops::page,
    ),
    components(schemas(
        xibaar_core::CustomerId,
        xibaar_core::DeviceId,
        xibaar_core::FcmToken,
        routes::preferences::CategoryChoices,
        Problem,
    )),
    modifiers(&BearerAuth, &CommonProblems, &BodyExamples),
    tags(
        (name = "customer-app", description = "The customer's app, with the customer's own token: devices, inbox, live updates and category choices"),
        (name = "back-office", description = "Back-office and internal systems, with scoped client tokens: sending, status, cancellation and daily figures"),
        (name = "audit", description = "Auditors: timelines read from the event log (scope `audit:read`)"),
        (name = "ops", description = "Operators: live figures (scope `ops:read`) and the ops page"),
    )
)]
struct ApiDoc;

/// The document, as `/openapi.json` serves it.
pub fn document() -> Document {
    ApiDoc::openapi()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The problems every operation of a kind can answer with, declared once as shared responses
/// and referenced from each operation that can meet them:
/// - authenticated: 401 (no or bad token), 403 (scope missing, or not a customer's token),
///   429 (budget spent), 503 (JetStream or Postgres away);
/// - with a JSON body: 400 (malformed), 413 (too large), 415 (not JSON), 422 (invalid fields);
/// - with query or header parameters: 400 and 422 (invalid parameters).
struct CommonProblems;

const PROBLEMS: [(&str, &str, &str); 8] = [
    (
        "400",
        "BadRequest",
        "Malformed request: unreadable JSON or header",
    ),
    (
        "401",
        "Unauthorized",
        "No bearer token, or one that is invalid or expired",
    ),
    (
        "403",
        "Forbidden",
        "The token lacks the scope, or is not a customer's token",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body or the FCM payload exceeds its limit",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not application/json",
    ),
    (
        "422",
        "Invalid",
        "Fields or parameters break the rules; `errors` names each one",
    ),
    (
        "429",
        "TooManyRequests",
        "The caller's request budget is spent; see `Retry-After`",
    ),
    (
        "503",
        "Unavailable",
        "A dependency is away; retry (see `Retry-After`)",
    ),
];

fn seconds_header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        ))
        .description(Some(description))
        .build()
}

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (status, name, description) in PROBLEMS {
            let mut example = crate::examples::for_schema("Problem").unwrap_or_default();
            example["status"] = status.parse::<u16>().unwrap_or_default().into();
            example["title"] = description.into();
            if status != "422" {
                example["detail"] = description.to_lowercase().into();
                example["errors"] = serde_json::Value::Null;
            }
            let mut response = ResponseBuilder::new().description(description).content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .example(Some(example))
                    .build(),
            );
            if matches!(status, "429" | "503") {
                response = response.header(
                    "Retry-After",
                    seconds_header("Seconds to wait before retrying"),
                );
            }
            components
                .responses
                .insert(name.to_owned(), RefOr::T(response.build()));
        }
        operations_mut(openapi).for_each(add_problems);
    }
}

/// Every operation of the document (the api uses these four methods).
fn operations_mut(openapi: &mut Document) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}

/// Puts an example on every request and response body that has none (`crate::examples`).
struct BodyExamples;

impl Modify for BodyExamples {
    fn modify(&self, openapi: &mut Document) {
        for operation in operations_mut(openapi) {
            let id = operation.operation_id.clone().unwrap_or_default();
            let bodies = operation
                .request_body
                .iter_mut()
                .filter_map(|b| match b {
                    RefOr::T(b) => Some(b),
                    RefOr::Ref(_) => None,
                })
                .flat_map(|b| b.content.iter_mut())
                .chain(
                    operation
                        .responses
                        .responses
                        .values_mut()
                        .filter_map(|r| match r {
                            RefOr::T(r) => Some(r),
                            RefOr::Ref(_) => None,
                        })
                        .flat_map(|r| r.content.iter_mut()),
                );
            for (content_type, content) in bodies {
                let RefOr::T(content) = content else { continue };
                if content.example.is_some() {
                    continue;
                }
                let schema = match &content.schema {
                    Some(RefOr::Ref(r)) => r.ref_location.rsplit('/').next(),
                    _ => None,
                };
                content.example = schema
                    .and_then(crate::examples::for_schema)
                    .or_else(|| crate::examples::for_media_type(content_type, &id));
            }
        }
    }
}

fn add_problems(operation: &mut Operation) {
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let with_body = operation.request_body.is_some();
    let with_parameters = operation.parameters.iter().flatten().any(|p| match p {
        RefOr::T(p) => matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Header),
        RefOr::Ref(_) => true,
    });
    let mut statuses = Vec::new();
    if authenticated {
        statuses.extend(["401", "403", "429", "503"]);
    }
    if with_body {
        statuses.extend(["400", "413", "415", "422"]);
    }
    if with_parameters {
        statuses.extend(["400", "422"]);
    }
    for status in statuses {
        let name = PROBLEMS
            .iter()
            .find(|(s, ..)| *s == status)
            .map(|(_, name, _)| *name)
            .unwrap_or("Invalid");
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        document()
            .to_pretty_json()
            .expect("the OpenAPI document serialises")
    });
    &JSON
}

/// `GET /openapi.json`.
pub async fn serve() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
}

/// `GET /docs`: the interactive reference (Scalar) over the same document.
pub async fn docs() -> axum::response::Html<String> {
    static PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        utoipa_scalar::Scalar::new(document())
            .title("Xibaar API")
            .to_html()
    });
    axum::response::Html(PAGE.clone())
}
