//! The prediction log: replays stored once, exact payloads, newest-first reads and retention.

use crate::helpers::{backend, migrated, Raw};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use std::collections::BTreeSet;
use uuid::Uuid;
use vatic_store::Actor;
use vatic_store::{Delivery, PredictionRecord, Store};
use vatic_testkit::TestDb;

/// Now, to the microsecond both backends keep.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn record(model: &str, at: DateTime<Utc>) -> PredictionRecord {
    PredictionRecord {
        id: Uuid::new_v4(),
        at,
        request_id: format!("req-{}", Uuid::new_v4().simple()),
        model: model.into(),
        version: "1".into(),
        api_key: Some("key-1".into()),
        status: 200,
        latency_us: 1234,
        request: Some(
            r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1.5,2.5]}]}"#.into(),
        ),
        response: Some(
            r#"{"outputs":[{"name":"y","datatype":"INT64","shape":[1],"data":[1]}]}"#.into(),
        ),
        sealed: None,
        shadow: false,
    }
}

/// Asserts `got` is `want`, every field exactly: the payloads come back as the text that was
/// stored, whitespace and key order included, on both backends.
fn assert_same(got: &PredictionRecord, want: &PredictionRecord, b: &str) {
    assert_eq!(got, want, "{b}");
}

/// Inserts records, panicking on an error; how many were new.
async fn insert(store: &Store, records: &[PredictionRecord], delivery: Delivery) -> u64 {
    store.insert_predictions(records, delivery).await.unwrap()
}

async fn ids(store: &Store, model: &str) -> BTreeSet<Uuid> {
    store
        .recent_predictions(model, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[tokio::test]
async fn a_replay_stores_only_the_records_not_stored_yet() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        assert_eq!(
            insert(&store, &[], Delivery::First).await,
            0,
            "{b}: empty batch"
        );
        let at = now();
        let batch: Vec<PredictionRecord> = (0..50)
            .map(|i| {
                record(
                    if i % 5 == 0 { "wine" } else { "iris" },
                    at - Duration::seconds(i),
                )
            })
            .collect();
        assert_eq!(insert(&store, &batch, Delivery::First).await, 50, "{b}");
        assert_eq!(store.prediction_count(None).await.unwrap(), 50, "{b}");
        assert_eq!(
            store.prediction_count(Some("iris")).await.unwrap(),
            40,
            "{b}"
        );
        assert_eq!(
            store.prediction_count(Some("wine")).await.unwrap(),
            10,
            "{b}"
        );
        assert_eq!(
            store.prediction_count(Some("none")).await.unwrap(),
            0,
            "{b}"
        );

        assert_eq!(
            insert(&store, &batch, Delivery::Retry).await,
            0,
            "{b}: a replay adds nothing"
        );
        assert_eq!(store.prediction_count(None).await.unwrap(), 50, "{b}");

        // A replay mixed with new records stores only the new ones, even twice in one batch.
        let fresh = record("iris", now());
        let mut mixed = batch[10..20].to_vec();
        mixed.push(fresh.clone());
        mixed.push(fresh.clone());
        assert_eq!(insert(&store, &mixed, Delivery::Retry).await, 1, "{b}");
        assert_eq!(store.prediction_count(None).await.unwrap(), 51, "{b}");

        // A replay over two days, one record stored already on each, the rest new.
        let yesterday = record("iris", at - Duration::days(1));
        let stored = [yesterday.clone(), record("iris", at + Duration::seconds(1))];
        assert_eq!(insert(&store, &stored, Delivery::First).await, 2, "{b}");
        let mut replay = stored.to_vec();
        replay.push(record(
            "iris",
            at - Duration::days(1) + Duration::seconds(1),
        ));
        replay.push(record("wine", at + Duration::seconds(2)));
        assert_eq!(insert(&store, &replay, Delivery::Retry).await, 2, "{b}");
        assert_eq!(store.prediction_count(None).await.unwrap(), 55, "{b}");
        let got = store.recent_predictions("iris", 1000).await.unwrap();
        assert_eq!(
            got.iter().filter(|r| r.id == yesterday.id).count(),
            1,
            "{b}"
        );
    }
}

#[tokio::test]
async fn payloads_round_trip_exactly() {
    let awkward = "tab\there, line\nbreak, cr\rreturn, back\\slash, \\N, \\., quote\"s 'single', naïve café ☃ 日本語 🎉";
    let request = serde_json::json!({
        "inputs": [{"name": awkward, "datatype": "BYTES", "shape": [3], "data": [awkward, "\\", "\u{7f}\u{e9}"]}],
        "parameters": {"note": awkward, "nested": {"n": 0.1, "big": 12345678901234i64, "neg": -2.5e-8}},
    });
    // Pretty printing with tabs puts raw tabs and newlines between tokens.
    let mut pretty = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    serde::Serialize::serialize(
        &request,
        &mut serde_json::Serializer::with_formatter(&mut pretty, formatter),
    )
    .unwrap();
    let pretty = String::from_utf8(pretty).unwrap();
    assert!(pretty.contains('\t') && pretty.contains('\n'));

    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let at = now();
        let records = vec![
            PredictionRecord {
                request_id: awkward.into(),
                version: "v\t2\n".into(),
                api_key: Some("\\N".into()),
                status: 503,
                latency_us: u32::MAX as u64 * 7,
                request: Some(pretty.clone()),
                response: Some(serde_json::json!({"error": awkward}).to_string()),
                ..record("iris", at)
            },
            PredictionRecord {
                api_key: None,
                request: None,
                response: None,
                ..record("iris", at - Duration::milliseconds(1))
            },
            PredictionRecord {
                request_id: String::new(),
                request: Some("[]".into()),
                response: Some("\"\\\\N\"".into()),
                ..record("iris", at - Duration::microseconds(1500))
            },
        ];
        assert_eq!(insert(&store, &records, Delivery::First).await, 3, "{b}");
        let got = store.recent_predictions("iris", 10).await.unwrap();
        assert_eq!(got.len(), 3, "{b}");
        for (got, want) in got.iter().zip(&records) {
            assert_same(got, want, b);
        }
    }
}

#[tokio::test]
async fn times_keep_their_microseconds_on_both_sides_of_both_epochs() {
    // PostgreSQL counts time from 2000-01-01 and Unix from 1970-01-01: one instant on each side
    // of each, to the microsecond, plus one with nanoseconds the log does not keep.
    let times = [
        (
            "1969-12-31 23:59:59.499999+00",
            "1969-12-31T23:59:59.4999995Z",
        ),
        (
            "1970-01-01 00:00:00.000001+00",
            "1970-01-01T00:00:00.000001Z",
        ),
        (
            "1999-12-31 23:59:59.999999+00",
            "1999-12-31T23:59:59.999999Z",
        ),
        ("2000-01-01 00:00:00+00", "2000-01-01T00:00:00Z"),
        (
            "2026-12-01 18:27:37.123456+00",
            "2026-12-01T18:27:37.123456789Z",
        ),
    ];
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let records: Vec<PredictionRecord> = times
            .iter()
            .map(|(_, at)| record("iris", at.parse().unwrap()))
            .collect();
        assert_eq!(insert(&store, &records, Delivery::First).await, 5, "{b}");
        let got = store.recent_predictions("iris", 10).await.unwrap();
        assert_eq!(got.len(), 5, "{b}");
        for (got, want) in got.iter().rev().zip(&records) {
            assert_eq!(got.id, want.id, "{b}");
            assert_eq!(got.at, want.at.trunc_subsecs(6), "{b}");
        }
        if db.is_postgres() {
            let mut raw = Raw::connect(&db).await;
            for (sql_time, _) in times {
                let sql = format!("SELECT COUNT(*) FROM predictions WHERE at = '{sql_time}'");
                assert_eq!(raw.count(&sql).await, 1, "{sql}");
            }
            // The payloads are text; cast to json, the json operators read them.
            let sql = "SELECT COUNT(*) FROM predictions \
                       WHERE request::json->'inputs'->0->>'name' = 'x' \
                       AND (response::json->'outputs'->0->'data'->>0)::int = 1";
            assert_eq!(raw.count(sql).await, 5, "{sql}");
        }
    }
}

#[tokio::test]
async fn recent_predictions_are_newest_first_and_limited() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let at = now();
        let records: Vec<PredictionRecord> = (0..6)
            .map(|i| {
                record(
                    "iris",
                    at - Duration::minutes(i * 7) - Duration::microseconds(i),
                )
            })
            .collect();
        let mut shuffled = records.clone();
        shuffled.swap(0, 4);
        shuffled.swap(1, 5);
        insert(&store, &shuffled, Delivery::First).await;
        insert(&store, &[record("wine", at)], Delivery::First).await;

        let got = store.recent_predictions("iris", 4).await.unwrap();
        assert_eq!(got.len(), 4, "{b}: limit");
        for (got, want) in got.iter().zip(&records) {
            assert_same(got, want, b);
        }
        assert!(
            store
                .recent_predictions("none", 4)
                .await
                .unwrap()
                .is_empty(),
            "{b}"
        );
    }
}

#[tokio::test]
async fn retention_removes_old_days_and_keeps_recent_ones() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let today = now();
        let old_day = today - Duration::days(10);
        let old: Vec<PredictionRecord> = (0..3)
            .map(|i| record("iris", old_day - Duration::seconds(i)))
            .collect();
        let recent: Vec<PredictionRecord> = (0..4)
            .map(|i| record("iris", today - Duration::seconds(i)))
            .collect();
        let mut batch = old.clone();
        batch.extend(recent.iter().cloned());
        assert_eq!(insert(&store, &batch, Delivery::First).await, 7, "{b}");

        let report = store
            .apply_retention(7, &Actor::named("ops"))
            .await
            .unwrap();
        if db.is_postgres() {
            let partition = format!("predictions_p{}", old_day.format("%Y%m%d"));
            assert_eq!(report.partitions_dropped, [partition], "{b}: {report:?}");
        } else {
            assert_eq!(report.rows_deleted, 3, "{b}: {report:?}");
            assert!(report.partitions_dropped.is_empty(), "{b}: {report:?}");
        }
        assert_eq!(store.prediction_count(None).await.unwrap(), 4, "{b}");
        let want: BTreeSet<Uuid> = recent.iter().map(|r| r.id).collect();
        assert_eq!(
            ids(&store, "iris").await,
            want,
            "{b}: today's records are kept"
        );

        let audit = store
            .audit_log(&vatic_store::AuditQuery::newest(1))
            .await
            .unwrap();
        assert_eq!(
            (audit[0].action.as_str(), audit[0].actor.as_str()),
            ("retention", "ops"),
            "{b}"
        );

        let again = store
            .apply_retention(7, &Actor::named("ops"))
            .await
            .unwrap();
        assert_eq!(again, Default::default(), "{b}: nothing left to remove");

        // A late record for a dropped day is still accepted: its day is made again.
        let late = record("iris", old_day);
        assert_eq!(
            insert(&store, std::slice::from_ref(&late), Delivery::First).await,
            1,
            "{b}"
        );
        assert_eq!(store.prediction_count(None).await.unwrap(), 5, "{b}");
    }
}

#[tokio::test]
async fn times_are_kept_to_the_microsecond_on_both_backends() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = migrated(&db).await;
        let base = now();
        let fine = base + Duration::microseconds(17) + Duration::nanoseconds(789);
        assert_ne!(
            fine,
            fine.trunc_subsecs(6),
            "the test time has sub-microsecond digits"
        );
        let r = record("iris", fine);
        assert_eq!(
            insert(&store, std::slice::from_ref(&r), Delivery::First).await,
            1,
            "{b}"
        );
        assert_eq!(
            insert(&store, std::slice::from_ref(&r), Delivery::Retry).await,
            0,
            "{b}: replay"
        );
        let got = store.recent_predictions("iris", 1).await.unwrap();
        assert_eq!(got[0].at, fine.trunc_subsecs(6), "{b}");
        assert_eq!(got[0].id, r.id, "{b}");
    }
}

#[tokio::test]
async fn a_day_dropped_by_another_handle_is_made_again() {
    for db in TestDb::both() {
        let b = backend(&db);
        let writer = migrated(&db).await;
        let retention = migrated(&db).await;
        let old_day = now() - Duration::days(10);
        let first = record("iris", old_day);
        assert_eq!(insert(&writer, &[first], Delivery::First).await, 1, "{b}");
        retention
            .apply_retention(7, &Actor::named("ops"))
            .await
            .unwrap();
        assert_eq!(writer.prediction_count(None).await.unwrap(), 0, "{b}");

        // The writer remembers making that day; the batch must still be stored, today's record too.
        let late = record("iris", old_day - Duration::seconds(1));
        let today = record("iris", now());
        let stored = writer
            .insert_predictions(&[late, today], Delivery::First)
            .await
            .unwrap_or_else(|e| panic!("{b}: insert after another handle's retention: {e}"));
        assert_eq!(stored, 2, "{b}");
        assert_eq!(writer.prediction_count(None).await.unwrap(), 2, "{b}");
    }
}

#[tokio::test]
async fn payloads_logged_as_jsonb_survive_the_moves_to_json_and_text() {
    let db = TestDb::postgres();
    // The schema as it was before migration 0004: the committed migrations before it.
    let old = tempfile::tempdir().unwrap();
    let dir = vatic_testkit::root().join("migrations/postgres");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let kind = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT data_type::text FROM information_schema.columns \
             WHERE table_name = 'predictions' AND column_name = 'request'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(kind(pool.clone()).await, "jsonb");
    let at: DateTime<Utc> = "2026-01-15T10:00:00Z".parse().unwrap();
    sqlx::query(
        "CREATE TABLE predictions_p20260115 PARTITION OF predictions \
         FOR VALUES FROM ('2026-01-15 00:00:00+00') TO ('2026-01-16 00:00:00+00')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO predictions VALUES ($1, $2, 'req-old', 'iris', '1', NULL, 200, 7, \
         '{\"inputs\":[{\"name\":\"x\",\"data\":[1.5]}]}', NULL)",
    )
    .bind(id)
    .bind(at)
    .execute(&pool)
    .await
    .unwrap();

    let store = migrated(&db).await;
    assert_eq!(kind(pool.clone()).await, "text");
    let got = store.recent_predictions("iris", 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    // jsonb kept the document in its own normal form; json, then text, keep that text.
    assert_eq!(
        got[0].request.as_deref(),
        Some(r#"{"inputs": [{"data": [1.5], "name": "x"}]}"#)
    );
    // New records keep the text they were written with.
    let fresh = record("iris", now());
    assert_eq!(
        insert(&store, std::slice::from_ref(&fresh), Delivery::First).await,
        1
    );
    let got = store.recent_predictions("iris", 1).await.unwrap();
    assert_same(&got[0], &fresh, "postgres");
    // A replay still finds both, the one from before the migrations too.
    let old = PredictionRecord {
        id,
        ..record("iris", at)
    };
    assert_eq!(insert(&store, &[old, fresh], Delivery::Retry).await, 0);
    assert_eq!(store.prediction_count(None).await.unwrap(), 2);
}

#[tokio::test]
async fn the_log_on_postgres_has_one_brin_index_on_time() {
    let db = TestDb::postgres();
    let store = migrated(&db).await;
    let at: DateTime<Utc> = "2026-03-02T08:00:00Z".parse().unwrap();
    insert(&store, &[record("iris", at)], Delivery::First).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename IN ('predictions', 'predictions_p20260302') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    for def in &indexes {
        assert!(def.contains("USING brin (at)"), "{indexes:?}");
    }
}
