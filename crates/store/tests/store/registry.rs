//! The model registry: versions, their states, model settings and the audit log.

use crate::helpers::{backend, migrated, model_file, pseudo_random, push, signature, Raw};
use vatic_schema::admin::{CacheSetting, EngineSetting, LogMode, ModelSettings, VersionState};
use vatic_store::Actor;
use vatic_store::StoreError;
use vatic_testkit::TestDb;

#[tokio::test]
async fn first_push_is_stable_and_later_ones_are_staged() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let one = model_file(&pseudo_random(4096, 1));
        let two = model_file(&pseudo_random(4096, 2));

        let (v1, stored) = push(&store, "iris", None, &one, "alice").await.unwrap();
        assert!(stored, "{b}: new bytes are stored");
        assert_eq!((v1.version, v1.state), (1, VersionState::Stable), "{b}");
        assert_eq!(v1.model, "iris", "{b}");
        assert_eq!(
            (v1.sha256.as_str(), v1.size),
            (one.sha256.as_str(), one.size),
            "{b}"
        );
        assert_eq!(v1.signature, signature(), "{b}");
        assert_eq!(v1.config, "[batching]\nmax_batch_size = 8\n", "{b}");
        assert_eq!(
            (v1.created_by.as_str(), v1.updated_by.as_str()),
            ("alice", "alice"),
            "{b}"
        );
        chrono::DateTime::parse_from_rfc3339(&v1.created_at)
            .unwrap_or_else(|e| panic!("{b}: created_at {}: {e}", v1.created_at));

        let (v2, stored) = push(&store, "iris", None, &two, "bob").await.unwrap();
        assert!(stored, "{b}");
        assert_eq!((v2.version, v2.state), (2, VersionState::Staged), "{b}");
        assert_eq!(
            store.model_version("iris", 2).await.unwrap(),
            v2,
            "{b}: read back"
        );

        // An explicit free number is taken as given; numbering then continues after it.
        let (v7, _) = push(&store, "iris", Some(7), &two, "bob").await.unwrap();
        assert_eq!((v7.version, v7.state), (7, VersionState::Staged), "{b}");
        let (v8, _) = push(&store, "iris", None, &one, "bob").await.unwrap();
        assert_eq!(v8.version, 8, "{b}");
    }
}

#[tokio::test]
async fn an_existing_version_number_is_a_conflict_that_stores_nothing() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        push(&store, "iris", None, &model_file(b"first"), "alice")
            .await
            .unwrap();
        push(&store, "iris", None, &model_file(b"second"), "alice")
            .await
            .unwrap();

        let third = model_file(b"third");
        match push(&store, "iris", Some(2), &third, "alice").await {
            Ok((v, _)) => panic!("{b}: version 2 pushed twice: {v:?}"),
            Err(e) => {
                assert!(matches!(e, StoreError::Conflict(_)), "{b}: {e:?}");
                assert!(e.to_string().contains("version 2"), "{b}: {e}");
            }
        }
        let versions: Vec<u64> = store
            .model("iris")
            .await
            .unwrap()
            .versions
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, [1, 2], "{b}: the registry is unchanged");
        assert!(
            !store.has_artifact(&third.sha256).await.unwrap(),
            "{b}: a refused push leaves its file behind"
        );
        let mut raw = Raw::connect(&db).await;
        assert_eq!(raw.count("SELECT COUNT(*) FROM artifacts").await, 2, "{b}");
        let pushes = store
            .audit_log(&vatic_store::AuditQuery::newest(100))
            .await
            .unwrap()
            .iter()
            .filter(|a| a.action == "push")
            .count();
        assert_eq!(pushes, 2, "{b}: a refused push is not audited");
    }
}

#[tokio::test]
async fn the_same_bytes_are_stored_once() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let bytes = pseudo_random(3 << 20, 3);
        let (_, first) = push(&store, "iris", None, &model_file(&bytes), "alice")
            .await
            .unwrap();
        let (v2, second) = push(&store, "iris", None, &model_file(&bytes), "alice")
            .await
            .unwrap();
        let (_, other) = push(&store, "wine", None, &model_file(&bytes), "alice")
            .await
            .unwrap();
        assert!(first, "{b}: first push stores the file");
        assert!(!second, "{b}: second push of the same bytes reuses them");
        assert!(!other, "{b}: another model with the same bytes reuses them");
        assert_eq!(v2.version, 2, "{b}: the version row is still written");

        let mut raw = Raw::connect(&db).await;
        assert_eq!(raw.count("SELECT COUNT(*) FROM artifacts").await, 1, "{b}");
        assert_eq!(
            raw.count("SELECT COUNT(*) FROM artifact_chunks").await,
            3,
            "{b}: 3 MiB in 1 MiB chunks"
        );
        assert_eq!(
            raw.count("SELECT COUNT(*) FROM model_versions").await,
            3,
            "{b}"
        );
    }
}

#[tokio::test]
async fn models_list_their_versions_oldest_first() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        assert!(
            store.models().await.unwrap().is_empty(),
            "{b}: empty registry"
        );
        for (model, seed) in [
            ("wine", 10),
            ("iris", 11),
            ("wine", 12),
            ("iris", 13),
            ("wine", 14),
        ] {
            push(
                &store,
                model,
                None,
                &model_file(&pseudo_random(100, seed)),
                "alice",
            )
            .await
            .unwrap();
        }
        let models = store.models().await.unwrap();
        let listed: Vec<(&str, Vec<u64>)> = models
            .iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.versions.iter().map(|v| v.version).collect(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [("iris", vec![1, 2]), ("wine", vec![1, 2, 3])],
            "{b}"
        );
        for m in &models {
            assert!(
                m.versions.iter().all(|v| v.model == m.name),
                "{b}: {} lists only its own versions",
                m.name
            );
            assert_eq!(
                (m.log_mode, m.log_sample_rate),
                (LogMode::Metadata, 1.0),
                "{b}: default log settings"
            );
        }
        assert_eq!(store.model("wine").await.unwrap(), models[1], "{b}");
    }
}

#[tokio::test]
async fn unknown_models_and_versions_are_reported_as_such() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        push(&store, "iris", None, &model_file(b"bytes"), "alice")
            .await
            .unwrap();

        let err = store.model("nope").await.unwrap_err();
        assert!(
            matches!(err, StoreError::ModelNotFound(ref m) if m == "nope"),
            "{b}: {err:?}"
        );
        let err = store.model_version("nope", 1).await.unwrap_err();
        assert!(
            matches!(err, StoreError::ModelNotFound(ref m) if m == "nope"),
            "{b}: {err:?}"
        );
        let err = store.model_version("iris", 9).await.unwrap_err();
        assert!(
            matches!(err, StoreError::VersionNotFound { ref model, version: 9 } if model == "iris"),
            "{b}: {err:?}"
        );
        let err = store
            .retire_version("iris", 9, &Actor::named("alice"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::VersionNotFound { .. }),
            "{b}: {err:?}"
        );
        let settings = ModelSettings {
            log_mode: Some(LogMode::Full),
            log_sample_rate: None,
            cache: None,
            engine: None,
        };
        let err = store
            .set_model_settings("nope", &settings, &Actor::named("alice"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ModelNotFound(_)), "{b}: {err:?}");
    }
}

#[tokio::test]
async fn retiring_changes_the_state_and_is_audited() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        for bytes in [&b"one"[..], b"two", b"three"] {
            push(&store, "iris", None, &model_file(bytes), "alice")
                .await
                .unwrap();
        }

        // A staged version: only its own state changes.
        let retired = store
            .retire_version("iris", 2, &Actor::named("bob"))
            .await
            .unwrap();
        assert_eq!(retired.version.state, VersionState::Retired, "{b}");
        assert_eq!(retired.promoted, None, "{b}");
        assert_eq!(
            (
                retired.version.created_by.as_str(),
                retired.version.updated_by.as_str()
            ),
            ("alice", "bob"),
            "{b}"
        );
        assert_eq!(
            store.model_version("iris", 2).await.unwrap(),
            retired.version,
            "{b}: read back"
        );
        let states = |m: vatic_schema::admin::ModelInfo| -> Vec<VersionState> {
            m.versions.iter().map(|v| v.state).collect()
        };
        assert_eq!(
            states(store.model("iris").await.unwrap()),
            [
                VersionState::Stable,
                VersionState::Retired,
                VersionState::Staged
            ],
            "{b}"
        );

        // The stable version: the newest staged one takes its place in the same change.
        let retired = store
            .retire_version("iris", 1, &Actor::named("bob"))
            .await
            .unwrap();
        let promoted = retired.promoted.expect("a version was promoted");
        assert_eq!(
            (
                promoted.version,
                promoted.state,
                promoted.updated_by.as_str()
            ),
            (3, VersionState::Stable, "bob"),
            "{b}"
        );
        let model = store.model("iris").await.unwrap();
        assert_eq!(model.default_version().map(|v| v.version), Some(3), "{b}");
        assert_eq!(
            states(model),
            [
                VersionState::Retired,
                VersionState::Retired,
                VersionState::Stable
            ],
            "{b}"
        );

        let log = store
            .audit_log(&vatic_store::AuditQuery::newest(10))
            .await
            .unwrap();
        let actions: Vec<(&str, &str, Option<u64>)> = log
            .iter()
            .map(|a| (a.action.as_str(), a.actor.as_str(), a.version))
            .collect();
        assert_eq!(
            actions,
            [
                ("promote", "bob", Some(3)),
                ("retire", "bob", Some(1)),
                ("retire", "bob", Some(2)),
                ("push", "alice", Some(3)),
                ("push", "alice", Some(2)),
                ("push", "alice", Some(1))
            ],
            "{b}: newest first"
        );
        assert!(
            log.iter().all(|a| a.model.as_deref() == Some("iris")),
            "{b}: {log:?}"
        );
        let detail = |i: usize| -> serde_json::Value {
            serde_json::from_str(&log[i].detail).expect("detail is JSON")
        };
        assert_eq!(
            detail(1),
            serde_json::json!({"from": "stable", "to": "retired"}),
            "{b}"
        );
        assert_eq!(
            detail(0),
            serde_json::json!({"to": "stable", "because": "version 1 was retired"}),
            "{b}"
        );
        assert_eq!(
            store
                .audit_log(&vatic_store::AuditQuery::newest(1))
                .await
                .unwrap()
                .len(),
            1,
            "{b}: limit"
        );

        // Retiring a retired version changes nothing and is not audited.
        let again = store
            .retire_version("iris", 1, &Actor::named("carol"))
            .await
            .unwrap();
        assert_eq!(again.version.updated_by, "bob", "{b}");
        assert_eq!(
            store
                .audit_log(&vatic_store::AuditQuery::newest(10))
                .await
                .unwrap()
                .len(),
            6,
            "{b}"
        );

        // The last served version: the model is left with no stable version, and the next
        // push becomes stable.
        let retired = store
            .retire_version("iris", 3, &Actor::named("bob"))
            .await
            .unwrap();
        assert_eq!(retired.promoted, None, "{b}");
        assert_eq!(store.model("iris").await.unwrap().default_version(), None);
        let (v4, _) = push(&store, "iris", None, &model_file(b"four"), "alice")
            .await
            .unwrap();
        assert_eq!((v4.version, v4.state), (4, VersionState::Stable), "{b}");
    }
}

#[tokio::test]
async fn concurrent_first_pushes_make_one_stable_version() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let files: Vec<_> = (0..6)
            .map(|i| model_file(format!("model {i}").as_bytes()))
            .collect();
        let pushes = files.iter().map(|f| push(&store, "iris", None, f, "alice"));
        for result in futures_util::future::join_all(pushes).await {
            result.unwrap_or_else(|e| panic!("{b}: {e}"));
        }
        let model = store.model("iris").await.unwrap();
        let stable: Vec<u64> = model
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Stable)
            .map(|v| v.version)
            .collect();
        assert_eq!(stable.len(), 1, "{b}: {:?}", model.versions);
        let numbers: Vec<u64> = model.versions.iter().map(|v| v.version).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6], "{b}");
    }
}

#[tokio::test]
async fn model_settings_change_the_prediction_log() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        push(&store, "iris", None, &model_file(b"one"), "alice")
            .await
            .unwrap();

        let full = ModelSettings {
            log_mode: Some(LogMode::Full),
            log_sample_rate: Some(0.25),
            cache: None,
            engine: None,
        };
        let m = store
            .set_model_settings("iris", &full, &Actor::named("bob"))
            .await
            .unwrap();
        assert_eq!(
            (m.log_mode, m.log_sample_rate),
            (LogMode::Full, 0.25),
            "{b}"
        );
        assert_eq!(m.versions.len(), 1, "{b}");

        let off = ModelSettings {
            log_mode: Some(LogMode::Off),
            log_sample_rate: None,
            cache: None,
            engine: None,
        };
        let m = store
            .set_model_settings("iris", &off, &Actor::named("bob"))
            .await
            .unwrap();
        assert_eq!(
            (m.log_mode, m.log_sample_rate),
            (LogMode::Off, 0.25),
            "{b}: the rate is kept"
        );

        for rate in [1.5, -0.1, f64::NAN] {
            let bad = ModelSettings {
                log_mode: Some(LogMode::Full),
                log_sample_rate: Some(rate),
                cache: None,
                engine: None,
            };
            let err = store
                .set_model_settings("iris", &bad, &Actor::named("bob"))
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::Conflict(_)),
                "{b}: rate {rate}: {err:?}"
            );
        }
        for rate in [0.0, 1.0] {
            let edge = ModelSettings {
                log_mode: None,
                log_sample_rate: Some(rate),
                cache: None,
                engine: None,
            };
            let m = store
                .set_model_settings("iris", &edge, &Actor::named("bob"))
                .await
                .unwrap();
            assert_eq!((m.log_mode, m.log_sample_rate), (LogMode::Off, rate), "{b}");
        }
        let m = store.model("iris").await.unwrap();
        assert_eq!(
            (m.log_mode, m.log_sample_rate),
            (LogMode::Off, 1.0),
            "{b}: refused changes left no trace"
        );

        let log = store
            .audit_log(&vatic_store::AuditQuery::newest(10))
            .await
            .unwrap();
        let set_log = log.iter().filter(|a| a.action == "set_log").count();
        assert_eq!(set_log, 4, "{b}: one record per accepted change: {log:?}");
        assert_eq!(log[0].actor, "bob", "{b}");

        // The response cache setting: model_toml for a new model, then what is set, alone or
        // with the log's, each kind audited on its own.
        assert_eq!(m.cache, CacheSetting::ModelToml, "{b}");
        let on = ModelSettings {
            log_mode: None,
            log_sample_rate: None,
            cache: Some(CacheSetting::On),
            engine: None,
        };
        let m = store
            .set_model_settings("iris", &on, &Actor::named("carol"))
            .await
            .unwrap();
        assert_eq!(
            (m.cache, m.log_mode),
            (CacheSetting::On, LogMode::Off),
            "{b}"
        );
        let both = ModelSettings {
            log_mode: Some(LogMode::Metadata),
            log_sample_rate: None,
            cache: Some(CacheSetting::Off),
            engine: None,
        };
        let m = store
            .set_model_settings("iris", &both, &Actor::named("carol"))
            .await
            .unwrap();
        assert_eq!(
            (m.cache, m.log_mode),
            (CacheSetting::Off, LogMode::Metadata),
            "{b}"
        );
        assert_eq!(
            store.models().await.unwrap()[0].cache,
            CacheSetting::Off,
            "{b}"
        );
        let log = store
            .audit_log(&vatic_store::AuditQuery::newest(20))
            .await
            .unwrap();
        let count = |action: &str| log.iter().filter(|a| a.action == action).count();
        assert_eq!(
            (count("set_log"), count("set_cache")),
            (5, 2),
            "{b}: {log:?}"
        );

        // The engine setting: model_toml for a new model, then what is set, audited alone.
        assert_eq!(m.engine, EngineSetting::ModelToml, "{b}");
        let ort = ModelSettings {
            log_mode: None,
            log_sample_rate: None,
            cache: None,
            engine: Some(EngineSetting::Onnxruntime),
        };
        let m = store
            .set_model_settings("iris", &ort, &Actor::named("dave"))
            .await
            .unwrap();
        assert_eq!(
            (m.engine, m.cache, m.log_mode),
            (
                EngineSetting::Onnxruntime,
                CacheSetting::Off,
                LogMode::Metadata
            ),
            "{b}"
        );
        assert_eq!(
            store.models().await.unwrap()[0].engine,
            EngineSetting::Onnxruntime,
            "{b}"
        );
        let log = store
            .audit_log(&vatic_store::AuditQuery::newest(1))
            .await
            .unwrap();
        assert_eq!(
            (log[0].action.as_str(), log[0].detail.as_str()),
            ("set_engine", r#"{"engine":"onnxruntime"}"#),
            "{b}"
        );
    }
}

#[tokio::test]
async fn free_form_audit_records_are_kept() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        store
            .audit(
                &Actor::named("carol"),
                "create_key",
                None,
                r#"{"key":"k1"}"#,
            )
            .await
            .unwrap();
        store
            .audit(&Actor::named("carol"), "reload", Some("iris"), "{}")
            .await
            .unwrap();
        let log = store
            .audit_log(&vatic_store::AuditQuery::newest(10))
            .await
            .unwrap();
        assert_eq!(log.len(), 2, "{b}");
        assert_eq!(
            (
                log[0].action.as_str(),
                log[0].model.as_deref(),
                log[0].version
            ),
            ("reload", Some("iris"), None),
            "{b}"
        );
        assert_eq!(
            (
                log[1].action.as_str(),
                log[1].model.as_deref(),
                log[1].detail.as_str()
            ),
            ("create_key", None, r#"{"key":"k1"}"#),
            "{b}"
        );
    }
}

#[tokio::test]
async fn concurrent_pushes_of_different_models_all_succeed() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let files: Vec<_> = (0..8)
            .map(|i| model_file(&pseudo_random(300_000, 40 + i)))
            .collect();
        let pushes = files.iter().enumerate().map(|(i, f)| {
            let store = store.clone();
            async move { push(&store, &format!("model{i}"), None, f, "alice").await }
        });
        for (i, result) in futures_util::future::join_all(pushes)
            .await
            .into_iter()
            .enumerate()
        {
            let (v, stored) = result.unwrap_or_else(|e| panic!("{b}: push of model{i}: {e}"));
            assert_eq!(
                (v.version, v.state, stored),
                (1, VersionState::Stable, true),
                "{b}: model{i}"
            );
        }
        assert_eq!(store.models().await.unwrap().len(), 8, "{b}");
    }
}
