//! Integration tests: the real binary's roles against real nats-server, PostgreSQL and the FCM
//! stand-in. One test binary, so the workspace links once.

mod archive;
mod audiences;
mod audit;
mod bad_input;
mod cancel;
mod cli;
mod cluster;
mod cluster_leaders;
mod deploy_files;
mod devices;
mod dispatcher_crash;
mod dlq;
mod end_to_end;
mod fanout;
mod fcm_failures;
mod idempotency;
mod inbox;
mod lag;
mod languages;
mod openapi;
mod openapi_contract;
mod ops;
mod ops_page;
mod projection_property;
mod projections;
mod projector_crash;
mod rate_limits;
mod readme;
mod scale_out;
mod scheduled;
mod sources;
mod streams;
mod support;
mod tracing;
mod urgent_isolation;
