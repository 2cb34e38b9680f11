//! Registry change notices: LISTEN/NOTIFY on PostgreSQL, none on SQLite.

use crate::helpers::{migrated, model_file, push};
use std::time::Duration;
use vatic_schema::admin::{LogMode, ModelSettings};
use vatic_store::Actor;
use vatic_store::Listener;
use vatic_testkit::TestDb;

/// Upper bound on waiting for a notice; generous so a loaded machine does not fail the test.
const WAIT: Duration = Duration::from_secs(10);

async fn next(listener: &mut Listener, after: &str) -> String {
    tokio::time::timeout(WAIT, listener.recv())
        .await
        .unwrap_or_else(|_| panic!("postgres: no notice after {after}"))
        .unwrap_or_else(|e| panic!("postgres: listening after {after}: {e}"))
}

#[tokio::test]
async fn registry_changes_reach_listeners_on_other_handles() {
    let db = TestDb::postgres();
    let listening = migrated(&db).await;
    let mut listener = listening.listen().await.unwrap().expect("postgres listens");

    let writer = migrated(&db).await;
    push(&writer, "iris", None, &model_file(b"one"), "alice")
        .await
        .unwrap();
    assert_eq!(next(&mut listener, "a push").await, "iris");

    push(&writer, "wine", None, &model_file(b"two"), "alice")
        .await
        .unwrap();
    assert_eq!(next(&mut listener, "a second push").await, "wine");

    writer
        .retire_version("iris", 1, &Actor::named("bob"))
        .await
        .unwrap();
    assert_eq!(next(&mut listener, "a retire").await, "iris");

    let settings = ModelSettings {
        log_mode: Some(LogMode::Full),
        log_sample_rate: None,
        cache: None,
        engine: None,
    };
    writer
        .set_model_settings("wine", &settings, &Actor::named("bob"))
        .await
        .unwrap();
    assert_eq!(next(&mut listener, "a settings change").await, "wine");
}

#[tokio::test]
async fn sqlite_has_no_listener() {
    let db = TestDb::sqlite();
    let store = migrated(&db).await;
    assert!(
        store.listen().await.unwrap().is_none(),
        "sqlite: listen() gives None"
    );
}
