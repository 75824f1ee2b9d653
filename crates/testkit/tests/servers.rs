use xibaar_testkit::{NatsServer, Postgres};

#[tokio::test]
async fn nats_with_jetstream_starts_and_survives_a_restart() {
    let mut nats = NatsServer::start().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("t.1", "x".into()).await.unwrap().await.unwrap();
    nats.restart().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("T").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn postgres_starts_with_a_fresh_database_per_caller() {
    let pg = Postgres::start().await.unwrap();
    let url = pg.create_database("one").await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT 41 + 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 42);
    let other = Postgres::start().await.unwrap();
    assert_ne!(pg.port(), other.port());
}
