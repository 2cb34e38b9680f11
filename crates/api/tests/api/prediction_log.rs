//! The prediction log writer against real databases: batching, overflow to the spool, an outage
//! staged with a proxy that cuts the connections, crash leftovers, shutdown.

use chrono::Utc;
use std::path::Path;
use std::time::Duration;
use vatic_api::prediction_log::{
    PredictionLog, PredictionLogSettings, PredictionLogStats, SPOOL_FILE, SPOOL_REPLAYING_FILE,
};
use vatic_store::{ConnectOptions, Delivery, PredictionRecord, Store};
use vatic_testkit::{TcpProxy, TestDb};

fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        if let Some(log) =
            vatic_server::telemetry::init(&Default::default(), "test").expect("logging")
        {
            log.keep();
        }
    }
}

fn record(i: usize) -> PredictionRecord {
    PredictionRecord {
        id: uuid::Uuid::new_v4(),
        at: Utc::now(),
        request_id: format!("req-{i}"),
        model: "iris".into(),
        version: "1".into(),
        api_key: i.is_multiple_of(2).then(|| "key-1".to_string()),
        status: 200,
        latency_us: 1000 + i as u64,
        request: Some(format!(r#"{{"inputs": [{{"name": "x", "data": [{i}]}}]}}"#)),
        response: i
            .is_multiple_of(3)
            .then(|| r#"{"outputs": []}"#.to_string()),
        sealed: None,
        shadow: false,
    }
}

/// Opens (and migrates) a store that gives up on a connection after one second.
async fn open_store(url: &str) -> Store {
    let opts = ConnectOptions {
        acquire_timeout: Duration::from_secs(1),
        ..ConnectOptions::new(url)
    };
    Store::open(&opts, true).await.expect("store opens")
}

fn settings(spool_dir: &Path) -> PredictionLogSettings {
    PredictionLogSettings {
        batch_size: 50,
        flush_interval_ms: 20,
        retry_interval_ms: 200,
        spool_dir: spool_dir.to_path_buf(),
        ..Default::default()
    }
}

/// Polls until `done` holds, for at most `secs` seconds.
async fn wait_for(
    what: &str,
    secs: u64,
    log: &PredictionLog,
    done: impl Fn(&PredictionLogStats) -> bool,
) {
    for _ in 0..secs * 20 {
        if done(&log.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} within {secs} s; stats: {:?}", log.stats());
}

fn replayed_all(s: &PredictionLogStats) -> bool {
    s.spool_bytes == 0 && s.queue_depth == 0
}

fn spool_files(dir: &Path) -> Vec<String> {
    [SPOOL_FILE, SPOOL_REPLAYING_FILE]
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .map(String::from)
        .collect()
}

fn spool_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(SPOOL_FILE))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_logged_record_is_written_once() {
    init_tracing();
    for db in TestDb::both() {
        let store = open_store(&db.url).await;
        let spool = tempfile::tempdir().unwrap();
        let log = PredictionLog::start(store.clone(), settings(spool.path()), None).unwrap();
        let n = 1234;
        for i in 0..n {
            log.log(record(i));
        }
        log.shutdown().await;
        let stats = log.stats();
        assert_eq!(
            store.prediction_count(None).await.unwrap(),
            n as u64,
            "{}",
            db.url
        );
        assert_eq!(stats.written, n as u64, "{stats:?}");
        assert_eq!(
            (stats.spooled, stats.dropped, stats.rejected),
            (0, 0, 0),
            "{stats:?}"
        );
        assert_eq!((stats.queue_depth, stats.spool_bytes), (0, 0), "{stats:?}");
        assert!(spool_files(spool.path()).is_empty());

        // A record that arrives after shutdown is kept in the spool for the next start.
        log.log(record(n));
        assert_eq!(log.stats().spooled, 1);
        assert_eq!(spool_lines(spool.path()), 1);
        // The spool folder is the log's until the last handle is dropped.
        assert!(PredictionLog::start(store.clone(), settings(spool.path()), None).is_err());
        drop(log);
        let next = PredictionLog::start(store.clone(), settings(spool.path()), None).unwrap();
        next.shutdown().await;
        assert_eq!(next.stats().replayed, 1);
        assert_eq!(store.prediction_count(None).await.unwrap(), n as u64 + 1);
        assert!(spool_files(spool.path()).is_empty());
    }
}

#[tokio::test]
async fn a_full_queue_overflows_to_the_spool_which_is_replayed() {
    init_tracing();
    for db in TestDb::both() {
        let store = open_store(&db.url).await;
        let spool = tempfile::tempdir().unwrap();
        let settings = PredictionLogSettings {
            queue_capacity: 1,
            ..settings(spool.path())
        };
        let log = PredictionLog::start(store.clone(), settings, None).unwrap();
        // On this single-threaded runtime the writer cannot run until the loop ends.
        let n = 2000;
        for i in 0..n {
            log.log(record(i));
        }
        let stats = log.stats();
        assert_eq!(stats.spooled, n as u64 - 1, "{stats:?}");
        assert!(stats.spool_bytes > 0, "{stats:?}");
        wait_for("the spool replayed", 30, &log, replayed_all).await;
        log.shutdown().await;
        let stats = log.stats();
        assert_eq!(
            store.prediction_count(None).await.unwrap(),
            n as u64,
            "{}",
            db.url
        );
        assert_eq!(stats.written + stats.replayed, n as u64, "{stats:?}");
        assert_eq!(stats.replayed, stats.spooled, "{stats:?}");
        assert_eq!(
            (stats.dropped, stats.rejected, stats.spool_bytes),
            (0, 0, 0),
            "{stats:?}"
        );
        assert!(spool_files(spool.path()).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_logged_during_a_database_outage_arrive_once_it_is_back() {
    init_tracing();
    let db = TestDb::postgres();
    let proxy = TcpProxy::for_url(&db.url);
    let store = open_store(&proxy.url(&db.url)).await;
    let spool = tempfile::tempdir().unwrap();
    let log = PredictionLog::start(store.clone(), settings(spool.path()), None).unwrap();
    let mut logged = 0;
    let mut log_for = |log: &PredictionLog, ms: u64| {
        let log = log.clone();
        let first = logged;
        logged += ms as usize / 5;
        async move {
            for i in first..first + ms as usize / 5 {
                log.log(record(i));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    log_for(&log, 500).await;
    proxy.cut();
    log_for(&log, 3000).await;
    let during = log.stats();
    assert!(
        during.spooled > 0,
        "nothing spooled while the database was away: {during:?}"
    );
    proxy.restore();
    log_for(&log, 500).await;
    wait_for("the spool replayed", 30, &log, replayed_all).await;
    log.shutdown().await;

    let stats = log.stats();
    let count = store.prediction_count(None).await.unwrap();
    assert_eq!(count, logged as u64, "{stats:?}");
    assert!(stats.spooled > 0 && stats.replayed > 0, "{stats:?}");
    assert_eq!(
        (stats.dropped, stats.rejected, stats.spool_bytes),
        (0, 0, 0),
        "{stats:?}"
    );
    // A batch whose commit answer was lost in the cut is replayed as a duplicate, counted by neither.
    assert!(stats.written + stats.replayed <= count, "{stats:?}");
    assert!(spool_files(spool.path()).is_empty());
}

#[tokio::test]
async fn a_spool_left_by_a_crash_is_replayed_at_start() {
    init_tracing();
    for db in TestDb::both() {
        let store = open_store(&db.url).await;
        let spool = tempfile::tempdir().unwrap();
        let records: Vec<PredictionRecord> = (0..100).map(record).collect();
        let lines = |rs: &[PredictionRecord]| -> String {
            rs.iter()
                .map(|r| serde_json::to_string(r).unwrap() + "\n")
                .collect()
        };
        // The crash came in the middle of a replay (its first 20 records were in) and in the
        // middle of an append to the new spool file.
        store
            .insert_predictions(&records[..20], Delivery::First)
            .await
            .unwrap();
        std::fs::write(
            spool.path().join(SPOOL_REPLAYING_FILE),
            lines(&records[..60]),
        )
        .unwrap();
        let torn = serde_json::to_string(&record(100)).unwrap();
        let active = lines(&records[60..]) + &torn[..torn.len() / 2];
        std::fs::write(spool.path().join(SPOOL_FILE), active).unwrap();

        let log = PredictionLog::start(store.clone(), settings(spool.path()), None).unwrap();
        wait_for("the spool replayed", 30, &log, replayed_all).await;
        log.log(record(101));
        log.shutdown().await;
        let stats = log.stats();
        assert_eq!(
            store.prediction_count(None).await.unwrap(),
            101,
            "{}",
            db.url
        );
        assert_eq!((stats.replayed, stats.written), (80, 1), "{stats:?}");
        assert_eq!(
            (stats.dropped, stats.rejected, stats.spool_bytes),
            (0, 0, 0),
            "{stats:?}"
        );
        assert!(spool_files(spool.path()).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_a_database_keeps_everything_in_the_spool() {
    init_tracing();
    let db = TestDb::postgres();
    let proxy = TcpProxy::for_url(&db.url);
    let store = open_store(&proxy.url(&db.url)).await;
    let spool = tempfile::tempdir().unwrap();
    let log = PredictionLog::start(store.clone(), settings(spool.path()), None).unwrap();
    for i in 0..50 {
        log.log(record(i));
    }
    wait_for("the first records written", 30, &log, |s| s.written == 50).await;
    proxy.cut();
    for i in 50..250 {
        log.log(record(i));
    }
    log.shutdown().await;
    let stats = log.stats();
    assert_eq!(
        (stats.written, stats.spooled, stats.dropped),
        (50, 200, 0),
        "{stats:?}"
    );
    assert_eq!(spool_lines(spool.path()), 200);
    assert_eq!(
        stats.spool_bytes,
        std::fs::metadata(spool.path().join(SPOOL_FILE))
            .unwrap()
            .len()
    );

    // The database is back: the next start replays the spool.
    drop(log);
    let direct = open_store(&db.url).await;
    assert_eq!(direct.prediction_count(None).await.unwrap(), 50);
    let next = PredictionLog::start(direct.clone(), settings(spool.path()), None).unwrap();
    wait_for("the spool replayed", 30, &next, replayed_all).await;
    next.shutdown().await;
    assert_eq!(next.stats().replayed, 200, "{:?}", next.stats());
    assert_eq!(direct.prediction_count(None).await.unwrap(), 250);
    assert!(spool_files(spool.path()).is_empty());
}

#[tokio::test]
async fn a_record_the_database_refuses_is_set_aside_and_the_rest_written() {
    init_tracing();
    // PostgreSQL's text cannot hold a NUL byte, and refuses a value with one.
    let db = TestDb::postgres();
    let store = open_store(&db.url).await;
    let spool = tempfile::tempdir().unwrap();
    let log = PredictionLog::start(store.clone(), settings(spool.path()), None).unwrap();
    for i in 0..120 {
        let mut r = record(i);
        if i == 77 {
            r.request = Some("{\"x\": \"\0\"}".into());
        }
        log.log(r);
    }
    log.shutdown().await;
    let stats = log.stats();
    assert_eq!(store.prediction_count(None).await.unwrap(), 119);
    assert_eq!((stats.written, stats.rejected), (119, 1), "{stats:?}");
    assert_eq!((stats.spooled, stats.dropped), (0, 0), "{stats:?}");
}

/// The bytes of every stored record's columns, as the database holds them.
async fn raw_rows(url: &str) -> Vec<Vec<u8>> {
    let sql = "SELECT id::text, request_id, model, version, api_key, request, response, data_key, sealed FROM predictions";
    let mut rows = Vec::new();
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for row in sqlx::query(sql).fetch_all(&pool).await.unwrap() {
            rows.push(raw_row(&row));
        }
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for row in sqlx::query(&sql.replace("id::text", "id"))
            .fetch_all(&pool)
            .await
            .unwrap()
        {
            rows.push(raw_row(&row));
        }
        pool.close().await;
    }
    rows
}

fn raw_row<R: sqlx::Row>(row: &R) -> Vec<u8>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let mut bytes = Vec::new();
    for i in 0..row.len() {
        let column = match row.try_get::<Option<String>, _>(i) {
            Ok(text) => text.map(String::into_bytes),
            Err(_) => row.try_get::<Option<Vec<u8>>, _>(i).unwrap(),
        };
        bytes.extend(column.unwrap_or_default());
        bytes.push(0);
    }
    bytes
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn with_a_data_key_neither_the_spool_nor_the_table_holds_a_payload_in_clear() {
    init_tracing();
    let keys = std::sync::Arc::new(
        vatic_store::DataKeys::parse(&vatic_store::new_data_key("k1"), "test").unwrap(),
    );
    for db in TestDb::both() {
        let store = open_store(&db.url).await;
        let spool = tempfile::tempdir().unwrap();
        let settings = PredictionLogSettings {
            queue_capacity: 1,
            ..settings(spool.path())
        };
        let log = PredictionLog::start(store.clone(), settings, Some(keys.clone())).unwrap();
        let sent: Vec<PredictionRecord> = (0..100)
            .map(|i| PredictionRecord {
                request: Some(format!(
                    r#"{{"inputs":[{{"name":"secret-input-{i}","data":[0.{i}1234567]}}]}}"#
                )),
                response: Some(format!(r#"{{"outputs":[{{"name":"secret-output-{i}"}}]}}"#)),
                ..record(i)
            })
            .collect();
        // On this single-threaded runtime the writer cannot run until the loop ends: all but
        // one record go to the spool file first.
        for r in &sent {
            log.log(r.clone());
        }
        let spooled = std::fs::read(spool.path().join(SPOOL_FILE)).unwrap();
        assert_eq!(
            spooled
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            99
        );
        for marker in ["secret-input", "secret-output", "inputs", "1234567"] {
            assert!(!contains(&spooled, marker), "the spool shows {marker}");
        }
        wait_for("the spool replayed", 30, &log, replayed_all).await;
        log.shutdown().await;

        let rows = raw_rows(&db.url).await;
        assert_eq!(rows.len(), 100, "{}", db.url);
        for row in &rows {
            for marker in ["secret-input", "secret-output", "inputs", "1234567"] {
                assert!(!contains(row, marker), "{}: a row shows {marker}", db.url);
            }
        }
        // Each record opens to what was logged, with the key that sealed it.
        let mut stored = store.recent_predictions("iris", 1000).await.unwrap();
        assert_eq!(stored.len(), 100);
        for got in &mut stored {
            assert_eq!(got.sealed.as_ref().map(|s| s.key.as_str()), Some("k1"));
            assert_eq!((&got.request, &got.response), (&None, &None));
            got.open(&keys).unwrap();
            let want = sent.iter().find(|r| r.id == got.id).unwrap();
            assert_eq!(got.request, want.request);
            assert_eq!(got.response, want.response);
        }

        // A spool that a run without data keys left in clear is sealed as it is replayed.
        drop(log);
        let plain =
            PredictionLog::start(store.clone(), self::settings(spool.path()), None).unwrap();
        plain.shutdown().await;
        let late = PredictionRecord {
            request: Some(r#"{"inputs":[{"name":"late-secret"}]}"#.into()),
            ..record(500)
        };
        plain.log(late.clone());
        let spooled = std::fs::read(spool.path().join(SPOOL_FILE)).unwrap();
        assert!(contains(&spooled, "late-secret"));
        drop(plain);
        let next = PredictionLog::start(
            store.clone(),
            self::settings(spool.path()),
            Some(keys.clone()),
        )
        .unwrap();
        next.shutdown().await;
        assert_eq!(next.stats().replayed, 1);
        let rows = raw_rows(&db.url).await;
        assert_eq!(rows.len(), 101, "{}", db.url);
        assert!(rows.iter().all(|row| !contains(row, "late-secret")));
        let mut stored = store.recent_predictions("iris", 1000).await.unwrap();
        let got = stored.iter_mut().find(|r| r.id == late.id).unwrap();
        assert_eq!(got.sealed.as_ref().map(|s| s.key.as_str()), Some("k1"));
        got.open(&keys).unwrap();
        assert_eq!(got.request, late.request);
    }
}
