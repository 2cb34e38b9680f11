//! `vaticctl workers`, `retention` and `audit` against an api with its own database.

use crate::helpers::RegistryApp;
use vatic_schema::admin::{LoadState, LoadedVersionStatus};
use vatic_store::{ConnectOptions, Heartbeat, Store};
use vatic_testkit::TestDb;

#[test]
fn retention_answers_on_both_backends() {
    for db in TestDb::both() {
        let postgres = db.is_postgres();
        let app = RegistryApp::start(db);
        let run = app.vaticctl(&["retention", "--keep-days", "30"]);
        let table = run.assert_ok().table();
        assert_eq!(
            table,
            [
                vec!["keep days", "partitions dropped", "rows deleted"],
                vec!["30", "-", "0"]
            ],
            "postgres: {postgres}"
        );
        let report = app
            .vaticctl(&["retention", "--keep-days", "30", "-o", "json"])
            .assert_ok()
            .json();
        assert_eq!(
            report,
            serde_json::json!({"partitions_dropped": [], "rows_deleted": 0}),
            "postgres: {postgres}"
        );
        let audit = app
            .vaticctl(&["audit", "--limit", "1", "-o", "json"])
            .assert_ok()
            .json();
        assert_eq!(audit[0]["action"], "retention", "{audit}");
    }
}

#[test]
fn retention_needs_a_number_of_days() {
    let run = crate::helpers::vaticctl("http://127.0.0.1:1", &["retention"], None);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("--keep-days <N>"), "{run:#?}");
}

#[test]
fn audit_lists_admin_changes_newest_first() {
    let app = RegistryApp::start(TestDb::sqlite());
    app.vaticctl(&["models", "log", "breast_cancer", "--mode", "full"])
        .assert_ok();
    let run = app.vaticctl(&["audit"]);
    let table = run.assert_ok().table();
    assert_eq!(
        table[0],
        ["at", "actor", "role", "from", "action", "target", "outcome", "request", "detail"]
    );
    // The newest is the change above (from this machine, the api open on loopback), then the
    // import of the demo model at start.
    assert_eq!(
        &table[1][1..7],
        [
            "anonymous",
            "admin",
            "127.0.0.1",
            "set_log",
            "breast_cancer",
            "ok"
        ],
        "{}",
        run.stdout
    );
    assert!(table[1][8].contains("\"full\""), "{}", run.stdout);
    let import = table
        .iter()
        .find(|r| r[4] == "push")
        .unwrap_or_else(|| panic!("the import in {}", run.stdout));
    assert_eq!(
        import[1..7],
        ["import", "-", "-", "push", "breast_cancer/1", "ok"]
    );

    let one = app
        .vaticctl(&["audit", "--limit", "1", "-o", "json"])
        .assert_ok()
        .json();
    assert_eq!(one.as_array().unwrap().len(), 1, "{one}");
}

#[test]
fn workers_lists_the_fleet() {
    // In standalone mode the api serves models itself: the fleet table starts empty.
    let app = RegistryApp::start(TestDb::sqlite());
    let header = vec![
        "id",
        "address",
        "heartbeat",
        "in flight",
        "started at",
        "loaded",
    ];
    let run = app.vaticctl(&["workers"]);
    assert_eq!(run.assert_ok().table(), std::slice::from_ref(&header));
    let workers = app.vaticctl(&["workers", "-o", "json"]).assert_ok().json();
    assert_eq!(workers, serde_json::json!([]));

    // A worker's heartbeat, as a worker process writes it.
    let loaded = |model: &str, state, reason: &str| LoadedVersionStatus {
        model: model.into(),
        version: 1,
        state,
        reason: reason.into(),
        engine: if state == LoadState::Ready {
            "tract".into()
        } else {
            String::new()
        },
        engines: Vec::new(),
    };
    let beat = Heartbeat {
        id: "w-1".into(),
        address: "http://10.0.0.5:8081".into(),
        started_at: chrono::Utc::now(),
        loaded: vec![
            loaded("breast_cancer", LoadState::Ready, ""),
            loaded("cnn", LoadState::Unavailable, "no such file"),
        ],
        in_flight: 3,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = Store::connect_lazy(&ConnectOptions::new(app.db_url.clone())).unwrap();
            store.heartbeat(&beat).await.unwrap();
            store.close().await;
        });

    let run = app.vaticctl(&["workers"]);
    let table = run.assert_ok().table();
    assert_eq!(table.len(), 2, "{}", run.stdout);
    assert_eq!(table[0], header);
    assert_eq!(table[1][..2], ["w-1", "http://10.0.0.5:8081"]);
    assert!(table[1][2].ends_with(" s ago"), "{}", run.stdout);
    assert_eq!(table[1][3], "3", "requests in flight: {}", run.stdout);
    assert_eq!(
        table[1][5],
        "breast_cancer/1 ready on tract; cnn/1 unavailable (no such file)"
    );
    let workers = app.vaticctl(&["workers", "-o", "json"]).assert_ok().json();
    assert_eq!(workers[0]["id"], "w-1", "{workers}");
    assert_eq!(workers[0]["loaded"][1]["state"], "UNAVAILABLE", "{workers}");
    assert_eq!(workers[0]["in_flight"], 3, "{workers}");
}

#[test]
fn admin_commands_without_a_registry_report_the_servers_message() {
    // The shared api has no database.
    let app = crate::helpers::TestApp::get();
    for args in [
        &["models", "list"][..],
        &["workers"],
        &["audit"],
        &["retention", "--keep-days", "1"],
    ] {
        app.vaticctl(args)
            .assert_error(&["the admin API needs the registry database", "(HTTP 503)"]);
    }
}
