//! A whole pipeline per test: its own nats-server, Postgres and FCM stand-in on ephemeral
//! ports, and the roles running in this process (or as child processes where a test kills
//! them).

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xibaar::Roles;
use xibaar_config::Config;
use xibaar_fcm_standin::{StandIn, StandInConfig};
use xibaar_testkit::{KillOnDrop, NatsCluster, NatsServer, Postgres, eventually};

pub const APP_ID: &str = "1:1234567890:android:xibaar";
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// The NATS a pipeline runs on: one server, or a three-node cluster with every stream at three
/// replicas.
pub enum Nats {
    Server(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// What `nats.url` says: the server, or every node of the cluster.
    pub fn url(&self) -> String {
        match self {
            Nats::Server(s) => s.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    pub fn server(&mut self) -> &mut NatsServer {
        match self {
            Nats::Server(s) => s,
            Nats::Cluster(_) => panic!("this pipeline runs on a cluster"),
        }
    }

    pub fn cluster(&self) -> &NatsCluster {
        match self {
            Nats::Cluster(c) => c,
            Nats::Server(_) => panic!("this pipeline runs on one server"),
        }
    }

    fn replicas(&self) -> usize {
        match self {
            Nats::Server(_) => 1,
            Nats::Cluster(_) => 3,
        }
    }
}

pub struct Pipeline {
    pub nats: Nats,
    pub pg: Postgres,
    pub standin: StandIn,
    /// Holds the config and key files for the pipeline's lifetime.
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub api: String,
    pub ops: String,
    pub pool: sqlx::PgPool,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    roles: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// A test changed the stream definitions ([`Pipeline::shorten_ack_wait`]): roles started
    /// from then on keep them instead of applying the shipped ones.
    streams_changed: std::sync::atomic::AtomicBool,
}

/// Whether `GET url` answers 2xx within `timeout`.
pub async fn answers(http: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let r = http.get(url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await
    .is_some()
}

/// A port free now, for a child process to listen on ([`xibaar_testkit::free_port`]).
pub fn free_port() -> u16 {
    xibaar_testkit::free_port().expect("a free port")
}

impl Pipeline {
    /// Every role in this process.
    pub async fn start() -> Self {
        Self::start_roles(Roles::ALL).await
    }

    /// The api and the projector in this process; the test starts dispatchers itself.
    pub async fn start_without_dispatcher() -> Self {
        Self::start_roles(Roles {
            api: true,
            dispatcher: false,
            projector: true,
            archiver: false,
            sources: false,
        })
        .await
    }

    pub async fn start_roles(roles: Roles) -> Self {
        let nats = NatsServer::start().await.unwrap();
        Self::start_on(Nats::Server(nats), roles).await
    }

    /// The roles on `nats`, which may be a cluster still forming (or with a node down): they
    /// start when JetStream answers.
    pub async fn start_on(nats: Nats, roles: Roles) -> Self {
        let mut pipeline = Self::prepare_on(nats).await;
        pipeline.start_in_process(roles).await;
        pipeline
    }

    /// Postgres, the stand-in and the configuration on `nats`, no role started yet.
    pub async fn prepare_on(nats: Nats) -> Self {
        let (pg, standin) =
            tokio::join!(Postgres::start(), StandIn::start(StandInConfig::default()));
        let (pg, standin) = (pg.unwrap(), standin.unwrap());
        let database = pg.create_database("xibaar").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("service-account.json");
        xibaar_fcm_standin::write_service_account(&key, &standin.token_uri()).unwrap();
        let api_port = free_port();
        let ops_port = free_port();
        let toml = format!(
            r#"
[nats]
url = "{nats}"
stream_replicas = {replicas}
[postgres]
url = "{database}"
[api]
listen = "127.0.0.1:{api_port}"
# Tests poll as customers; the budget has its own test (rate_limits), with its own limits.
customer_requests_per_minute = 1000000
[ops]
listen = "127.0.0.1:{ops_port}"
[auth]
hs256_secret = "{SECRET}"
[fcm]
endpoint = "{fcm}"
circuit_open_for = "1s"
circuit_max_open_for = "2s"
[[fcm.apps]]
app_id = "{APP_ID}"
project_id = "xibaar-local"
service_account_file = "{key}"
[dispatcher]
retry_base_delay = "100ms"
retry_max_delay = "1s"
max_attempts = 3
[log]
format = "text"
filter = "warn"
"#,
            nats = nats.url(),
            replicas = nats.replicas(),
            fcm = standin.url(),
            key = key.display(),
        );
        let config_path = dir.path().join("xibaar.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let config = Config::from_toml(&toml).unwrap();
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        Self {
            nats,
            pg,
            standin,
            _dir: dir,
            config_path,
            config,
            api: format!("http://127.0.0.1:{api_port}"),
            ops: format!("http://127.0.0.1:{ops_port}"),
            pool,
            http: reqwest::Client::new(),
            shutdown: CancellationToken::new(),
            roles: None,
            streams_changed: Default::default(),
        }
    }

    /// Adds an `[archive]` on `s3` (plus `settings`, TOML keys of the section) to the
    /// configuration; before the roles start.
    pub fn add_archive(&mut self, s3: &xibaar_testkit::S3Server, settings: &str) {
        self.add_toml(&format!("[archive]\n{}{settings}\n", s3.archive_toml()));
    }

    /// Appends sections to the configuration; before the roles start.
    pub fn add_toml(&mut self, sections: &str) {
        let mut toml = std::fs::read_to_string(&self.config_path).unwrap();
        toml.push_str(sections);
        std::fs::write(&self.config_path, &toml).unwrap();
        self.config = Config::from_toml(&toml).unwrap();
    }

    /// Runs `roles` in this process; returns once they report started.
    pub async fn start_in_process(&mut self, roles: Roles) {
        self.shutdown = CancellationToken::new();
        let task = tokio::spawn(xibaar::run(
            self.config.clone(),
            roles,
            self.shutdown.clone(),
        ));
        self.roles = Some(task);
        let startup = format!("{}/health/startup", self.ops);
        let started = answers(&self.http, &startup, Duration::from_secs(30)).await;
        if !started {
            // Say why when the roles gave up, rather than only that they did not answer.
            let roles = self.roles.take().expect("spawned above");
            let why = if roles.is_finished() {
                format!("{:?}", roles.await)
            } else {
                "still starting after 30 s".to_owned()
            };
            panic!("the pipeline did not start: {why}");
        }
        if roles.projector {
            // Migrations are done once the checkpoint table answers.
            let pool = self.pool.clone();
            eventually(Duration::from_secs(30), || {
                let pool = pool.clone();
                async move {
                    sqlx::query("SELECT 1 FROM projection_checkpoints LIMIT 1")
                        .execute(&pool)
                        .await
                        .ok()
                        .map(|_| ())
                }
            })
            .await
            .expect("migrations ran");
        }
    }

    /// Stops the in-process roles gracefully and waits for them.
    pub async fn stop_roles(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.roles.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn token(&self, subject: &str, scopes: &[&str]) -> String {
        xibaar_api::mint(
            SECRET.as_bytes(),
            "xibaar",
            "xibaar-api",
            subject,
            scopes,
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    /// Starts `xibaar dispatcher` as its own process on this pipeline's configuration, with its
    /// own ops port and `env` on top; its output is discarded.
    pub fn spawn_dispatcher(&self, env: &[(&str, &str)]) -> KillOnDrop {
        self.spawn_role("dispatcher", env, std::process::Stdio::null())
    }

    /// Starts `xibaar <role>` as its own process on this pipeline's configuration, with its own
    /// ops port and `env` on top, its log lines (stdout) going to `log`. The process is killed
    /// when the returned value is dropped (a failed assertion included) and when the test's
    /// process dies: a role left running could take the jobs of a later test's servers that
    /// happen to get its ports.
    pub fn spawn_role(
        &self,
        role: &str,
        env: &[(&str, &str)],
        log: impl Into<std::process::Stdio>,
    ) -> KillOnDrop {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_xibaar"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg(role)
            .env("XIBAAR_OPS__LISTEN", format!("127.0.0.1:{}", free_port()));
        if self
            .streams_changed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            command.env("XIBAAR_NATS__APPLY_STREAMS_ON_START", "false");
        }
        command
            .envs(env.iter().copied())
            .stdout(log)
            .stderr(std::process::Stdio::null());
        KillOnDrop(xibaar_testkit::spawn_owned(&mut command).unwrap())
    }

    /// Starts `xibaar projections rebuild read_models` on this pipeline's configuration; its
    /// output once it exits.
    pub fn spawn_rebuild(&self) -> tokio::task::JoinHandle<std::process::Output> {
        let config = self.config_path.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_xibaar"))
                .arg("--config")
                .arg(config)
                .args(["projections", "rebuild", "read_models"])
                .output()
                .unwrap()
        })
    }

    /// Waits for a rebuild started by [`Pipeline::spawn_rebuild`], checks that it succeeded,
    /// and returns its stderr (the progress).
    pub async fn rebuilt(rebuilding: tokio::task::JoinHandle<std::process::Output>) -> String {
        let out = rebuilding.await.unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains("rebuilt read_models from sequence 1"),
            "{stdout}"
        );
        stderr.into_owned()
    }

    /// The tokens the stand-in has accepted pushes for, sorted (a token twice if pushed twice).
    pub fn pushed_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .standin
            .received()
            .into_iter()
            .map(|r| r.token.unwrap())
            .collect();
        tokens.sort();
        tokens
    }

    /// Runs the `xibaar` binary with this pipeline's configuration: success, stdout + stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        self.cli_with_env(args, &[])
    }

    /// [`Pipeline::cli`] with `env` on top (configuration overrides such as
    /// `XIBAAR_ARCHIVE__STREAM_RETENTION`).
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xibaar"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn back_office(&self) -> String {
        self.token("billing", &["notifications:send", "notifications:read"])
    }

    pub async fn register_device(&self, customer: &str, device: &str, token: &str) {
        self.register_device_in(customer, device, token, None).await
    }

    /// [`Pipeline::register_device`] with the app's locale (`wo-SN`).
    pub async fn register_device_in(
        &self,
        customer: &str,
        device: &str,
        token: &str,
        locale: Option<&str>,
    ) {
        let mut body =
            json!({ "device_id": device, "token": token, "platform": "android", "app_id": APP_ID });
        if let Some(locale) = locale {
            body["locale"] = json!(locale);
        }
        let response = self
            .http
            .post(format!("{}/v1/devices", self.api))
            .bearer_auth(self.token(customer, &[]))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }

    /// Registers `n` devices (`d00000`…, customer `c<i>`, token `tok-<i>`) as the api would, by
    /// publishing their `device.registered` events (pipelined: a large registry in seconds), and
    /// waits until the projector has them.
    pub async fn seed_devices(&self, n: usize) {
        use xibaar_core::{
            Actor, CustomerId, DeviceId, Event, EventEnvelope, FcmToken, Platform,
            event::DeviceRegistered,
        };
        let js = self.jetstream().await;
        let mut pipeline = xibaar_streams::Pipeline::new(js, 1024);
        for i in 0..n {
            let envelope = EventEnvelope::new(
                Event::DeviceRegistered(DeviceRegistered {
                    device_id: DeviceId::parse(format!("d{i:06}")).unwrap(),
                    customer_id: CustomerId::parse(format!("c{i}")).unwrap(),
                    token: FcmToken::parse(format!("tok-{i:06}")).unwrap(),
                    platform: Platform::Android,
                    app_id: APP_ID.into(),
                    app_version: None,
                    locale: None,
                }),
                format!("seed-{i}"),
                None,
                Actor::system("test"),
            );
            pipeline
                .publish(
                    envelope.subject(),
                    xibaar_streams::event_headers(&envelope),
                    envelope.to_json().unwrap().into(),
                )
                .await
                .unwrap();
        }
        pipeline.flush().await.unwrap();
        let pool = self.pool.clone();
        let seen = eventually(Duration::from_secs(120), || {
            let pool = pool.clone();
            async move {
                let count: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM devices WHERE status = 'active'")
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                (count >= n as i64).then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "the registry never held {n} devices");
    }

    /// Waits until the registry holds `n` active devices.
    pub async fn wait_for_devices(&self, n: i64) {
        let pool = self.pool.clone();
        let seen = eventually(Duration::from_secs(30), || {
            let pool = pool.clone();
            async move {
                let count: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM devices WHERE status = 'active'")
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                (count == n).then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "the registry never held {n} devices");
    }

    pub async fn send(&self, body: &Value, idempotency_key: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/notifications", self.api))
            .bearer_auth(self.back_office())
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    /// Sends `body` as the back office, expects 202, and returns the notification's id.
    pub async fn accept(&self, body: &Value) -> String {
        let r = self.send(body, None).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 202, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["notification_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn status(&self, id: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/v1/notifications/{id}", self.api))
            .bearer_auth(self.back_office())
            .send()
            .await
            .unwrap();
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until every targeted device of notification `id` has an outcome; its status.
    pub async fn wait_completed(&self, id: &str, timeout: Duration) -> Value {
        eventually(timeout, || async {
            self.status(id).await.filter(|s| s["status"] == "completed")
        })
        .await
        .unwrap_or_else(|| panic!("notification {id} did not complete within {timeout:?}"))
    }

    /// `daily_stats` as the API serves it, and as a fold of `deliveries` would have it:
    /// `(day, priority, outcome, deliveries)` rows, which must be equal.
    pub async fn daily_stats(&self) -> (Vec<Value>, Vec<Value>) {
        let reports = self.token("reports", &[xibaar_api::scopes::READ]);
        let served = self.get_json("/v1/stats/daily", Some(&reports)).await;
        let folded: Vec<(chrono::NaiveDate, String, String, i64)> = sqlx::query_as(
            "SELECT (d.occurred_at AT TIME ZONE 'UTC')::date, n.priority, \
                    CASE WHEN d.outcome = 'failed' AND d.reason = 'invalid_token' THEN 'invalid' ELSE d.outcome END, \
                    count(*) \
             FROM deliveries d JOIN notifications n USING (notification_id) \
             GROUP BY 1, 2, 3 ORDER BY 1, array_position(ARRAY['urgent','high','normal','low'], n.priority), 3",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let folded = folded
            .into_iter()
            .map(|(day, priority, outcome, n)| {
                serde_json::json!({"day": day, "priority": priority, "outcome": outcome, "deliveries": n})
            })
            .collect();
        (
            served["days"].as_array().cloned().unwrap_or_default(),
            folded,
        )
    }

    /// A projector folding `XIBAAR_EVENTS` into its own fresh database, in this process, from
    /// sequence 1: the control that read models built another way are compared with.
    pub async fn control_projection(
        &self,
        name: &str,
        batch_size: usize,
    ) -> (sqlx::PgPool, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let pool = self.pg.pool(name).await.unwrap();
        xibaar_store::migrate(&pool).await.unwrap();
        let projector = xibaar_projector::Projector::new(
            self.jetstream().await,
            pool.clone(),
            xibaar_projector::ProjectorSettings {
                batch_size,
                batch_wait: Duration::from_millis(20),
            },
        );
        let task = tokio::spawn(projector.run(self.shutdown.clone()));
        (pool, task)
    }

    /// Waits until the projection in `pool` has applied every event stored so far.
    pub async fn wait_projected(&self, pool: &sqlx::PgPool) {
        self.wait_projected_to(pool, self.events_head().await).await;
    }

    /// Waits until the projection in `pool` has applied the events up to sequence `head`.
    pub async fn wait_projected_to(&self, pool: &sqlx::PgPool, head: u64) {
        eventually(Duration::from_secs(60), || async {
            (checkpoint(pool).await as u64 >= head).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the projection did not reach sequence {head}"));
    }

    /// The in-process roles' Prometheus exposition.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.ops))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sequence of the last event in `XIBAAR_EVENTS`.
    pub async fn events_head(&self) -> u64 {
        xibaar_projector::events_head(&self.jetstream().await)
            .await
            .unwrap()
    }

    /// `GET` of an api path, with a bearer token when given, as JSON.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        let mut request = self.http.get(format!("{}{path}", self.api));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Sets the ack wait of the senders' consumers; roles started from then on keep it.
    pub async fn shorten_ack_wait(&self, ack_wait: Duration) {
        self.streams_changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let js = self.jetstream().await;
        let stream = js.get_stream("XIBAAR_DELIVERIES").await.unwrap();
        let defs = xibaar_streams::Definitions::builtin();
        for consumer in &defs.stream("XIBAAR_DELIVERIES").unwrap().consumers {
            let mut config: async_nats::jetstream::consumer::pull::Config = consumer.config.clone();
            config.ack_wait = ack_wait;
            stream.update_consumer(config).await.unwrap();
        }
    }

    /// An api's state on this pipeline's servers, with `limits` for budgets, to serve or to
    /// drive without a socket.
    pub async fn api_state(&self, limits: xibaar_api::limit::RateLimits) -> xibaar_api::AppState {
        xibaar_api::AppState::new(xibaar_api::Shared {
            js: self.jetstream().await,
            pool: self.pool.clone(),
            auth: xibaar_api::Authenticator::hs256(SECRET.as_bytes(), "xibaar", "xibaar-api"),
            limits,
            ops: xibaar_api::ops::idle_view(),
            inbox: Default::default(),
            archive: None,
            publish_timeout: std::time::Duration::from_secs(5),
        })
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let url = self.nats.url();
        let servers: Vec<&str> = url.split(',').collect();
        async_nats::jetstream::new(async_nats::connect(servers).await.unwrap())
    }

    /// Messages currently stored in `stream`.
    pub async fn stream_messages(&self, stream: &str) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}

/// The `read_models` checkpoint in `pool` (0 before the first batch, or when unreadable).
pub async fn checkpoint(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT last_sequence FROM projection_checkpoints WHERE projection = 'read_models'",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
    .unwrap_or(0)
}

pub fn notification(priority: &str, customers: &[&str], title: &str) -> Value {
    json!({
        "priority": priority,
        "audience": { "kind": "customers", "customer_ids": customers },
        "content": { "title": title, "body": "Planned maintenance tonight", "data": { "kind": "outage" } },
    })
}

/// Every read-model table in `pool`, row by row in key order (the checkpoint without the time
/// it was written).
pub async fn read_models(pool: &sqlx::PgPool) -> std::collections::BTreeMap<&'static str, Value> {
    const TABLES: [(&str, &str); 8] = [
        ("projection_checkpoints", "projection"),
        ("devices", "device_id, customer_id"),
        ("preferences", "customer_id, category"),
        ("customers", "customer_id"),
        ("notifications", "notification_id"),
        ("deliveries", "notification_id, device_id, customer_id"),
        ("inbox", "customer_id, notification_id"),
        ("daily_stats", "day, priority, outcome"),
    ];
    let mut out = std::collections::BTreeMap::new();
    for (table, key) in TABLES {
        let row = if table == "projection_checkpoints" {
            "to_jsonb(t) - 'updated_at'"
        } else {
            "to_jsonb(t)"
        };
        let rows: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(jsonb_agg({row} ORDER BY {key}), '[]') FROM {table} t"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(table, rows);
    }
    out
}

/// Sends SIGTERM to `child` and waits (up to 20 s) for it to exit successfully.
pub async fn stop_gracefully(child: &mut std::process::Child) {
    let exit = tokio::task::block_in_place(|| {
        xibaar_testkit::stop_gracefully(child, libc::SIGTERM, Duration::from_secs(20))
    })
    .expect("the process exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}
