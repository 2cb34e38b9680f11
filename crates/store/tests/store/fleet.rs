//! The worker fleet: heartbeats, removal and pruning.

use crate::helpers::{backend, migrated, Raw};
use chrono::{Duration, SubsecRound, Utc};
use vatic_schema::admin::{EngineFigure, LoadState, LoadedVersionStatus};
use vatic_store::Heartbeat;
use vatic_testkit::TestDb;

fn loaded(model: &str, version: u64, state: LoadState, reason: &str) -> LoadedVersionStatus {
    LoadedVersionStatus {
        model: model.into(),
        version,
        state,
        reason: reason.into(),
        engine: String::new(),
        engines: Vec::new(),
    }
}

fn beat(id: &str, address: &str, loaded: Vec<LoadedVersionStatus>) -> Heartbeat {
    Heartbeat {
        id: id.into(),
        address: address.into(),
        started_at: (Utc::now() - Duration::minutes(3)).trunc_subsecs(3),
        loaded,
        in_flight: 0,
    }
}

#[tokio::test]
async fn a_heartbeat_inserts_then_updates_one_row() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        assert!(store.workers().await.unwrap().is_empty(), "{b}");

        let first = beat(
            "w1",
            "http://10.0.0.1:9000",
            vec![loaded("iris", 1, LoadState::Loading, "")],
        );
        store.heartbeat(&first).await.unwrap();
        let workers = store.workers().await.unwrap();
        assert_eq!(workers.len(), 1, "{b}");
        let w = &workers[0];
        assert_eq!(
            (w.id.as_str(), w.address.as_str()),
            ("w1", "http://10.0.0.1:9000"),
            "{b}"
        );
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(&w.started_at).unwrap(),
            first.started_at,
            "{b}: started_at {}",
            w.started_at
        );
        assert_eq!(w.loaded, first.loaded, "{b}");
        assert!(
            w.heartbeat_age_secs >= 0.0,
            "{b}: age {}",
            w.heartbeat_age_secs
        );

        let second = Heartbeat {
            address: "http://10.0.0.1:9001".into(),
            loaded: vec![
                // Loaded with `engine = "auto"`: the engine and both figures are kept.
                LoadedVersionStatus {
                    engine: "onnxruntime".into(),
                    engines: vec![
                        EngineFigure {
                            engine: "tract".into(),
                            samples_per_second: Some(812.5),
                            one_row_us: Some(41.0),
                            error: None,
                            chosen: false,
                        },
                        EngineFigure {
                            engine: "onnxruntime".into(),
                            samples_per_second: Some(1650.25),
                            one_row_us: Some(17.5),
                            error: None,
                            chosen: true,
                        },
                    ],
                    ..loaded("iris", 1, LoadState::Ready, "")
                },
                loaded(
                    "wine",
                    3,
                    LoadState::Unavailable,
                    "input 'x': unsupported datatype",
                ),
            ],
            in_flight: 7,
            ..first.clone()
        };
        store.heartbeat(&second).await.unwrap();
        let workers = store.workers().await.unwrap();
        assert_eq!(workers.len(), 1, "{b}: the same worker keeps one row");
        assert_eq!(workers[0].address, "http://10.0.0.1:9001", "{b}");
        assert_eq!(workers[0].loaded, second.loaded, "{b}");
        assert_eq!(workers[0].in_flight, 7, "{b}");
        let mut raw = Raw::connect(&db).await;
        assert_eq!(raw.count("SELECT COUNT(*) FROM workers").await, 1, "{b}");
    }
}

#[tokio::test]
async fn workers_can_be_removed_and_pruned() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        for id in ["w1", "w2", "w3"] {
            store
                .heartbeat(&beat(id, &format!("http://{id}:9000"), vec![]))
                .await
                .unwrap();
        }
        store.remove_worker("w2").await.unwrap();
        store.remove_worker("never-seen").await.unwrap();
        let mut ids: Vec<String> = store
            .workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["w1", "w3"], "{b}");

        let mut raw = Raw::connect(&db).await;
        raw.set_heartbeat("w1", Utc::now() - Duration::hours(1))
            .await;
        let ids: Vec<String> = store
            .workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, ["w3", "w1"], "{b}: freshest first");
        let stale = store.workers().await.unwrap().pop().unwrap();
        assert!(
            stale.heartbeat_age_secs >= 3600.0,
            "{b}: age {}",
            stale.heartbeat_age_secs
        );

        assert_eq!(
            store.prune_workers(Duration::minutes(5)).await.unwrap(),
            1,
            "{b}"
        );
        let ids: Vec<String> = store
            .workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, ["w3"], "{b}: only the stale worker was pruned");
        assert_eq!(
            store.prune_workers(Duration::minutes(5)).await.unwrap(),
            0,
            "{b}"
        );
    }
}
