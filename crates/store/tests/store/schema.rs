//! Migrations: explicit, complete, idempotent, and refusing schemas from another build.

use crate::helpers::{backend, Raw};
use vatic_store::{ConnectOptions, Store, StoreError};
use vatic_testkit::TestDb;

/// The versions of the migration files committed for a backend, read from their names.
fn committed_versions(db: &TestDb) -> Vec<i64> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(backend(db));
    let mut versions: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let name = entry.expect("directory entry").file_name();
            let name = name.to_string_lossy().into_owned();
            name.split('_')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("migration file {name} starts with its version"))
        })
        .collect();
    versions.sort_unstable();
    versions
}

#[tokio::test]
async fn open_without_migrating_refuses_an_empty_database() {
    for db in TestDb::both() {
        let b = backend(&db);
        let Err(err) = Store::open(&ConnectOptions::new(&db.url), false).await else {
            panic!("{b}: an empty database was accepted");
        };
        let known = *committed_versions(&db).last().expect("migrations");
        assert!(
            matches!(err, StoreError::SchemaBehind { found: 0, known: k } if k == known),
            "{b}: {err:?}"
        );
        assert!(
            err.to_string().contains("vaticctl migrate"),
            "{b}: the error names the command that fixes it: {err}"
        );
    }
}

#[tokio::test]
async fn migrate_applies_every_version_once() {
    for db in TestDb::both() {
        let b = backend(&db);
        let versions = committed_versions(&db);
        let store = Store::connect_lazy(&ConnectOptions::new(&db.url)).expect("connect");
        assert_eq!(
            store.known_schema_version(),
            *versions.last().unwrap(),
            "{b}"
        );
        assert_eq!(
            store.schema_version().await.unwrap(),
            0,
            "{b}: fresh database"
        );

        let applied = store.migrate().await.unwrap_or_else(|e| panic!("{b}: {e}"));
        assert_eq!(
            applied, versions,
            "{b}: first migrate applies every version"
        );
        assert_eq!(
            store.schema_version().await.unwrap(),
            store.known_schema_version(),
            "{b}"
        );
        store
            .check_schema()
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));

        let again = store.migrate().await.unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(again.is_empty(), "{b}: second migrate applied {again:?}");

        Store::open(&ConnectOptions::new(&db.url), false)
            .await
            .unwrap_or_else(|e| panic!("{b}: open after migrate: {e}"));
        let mut raw = Raw::connect(&db).await;
        assert_eq!(
            raw.count("SELECT COUNT(*) FROM _sqlx_migrations").await,
            versions.len() as i64,
            "{b}: one row per migration"
        );
    }
}

#[tokio::test]
async fn open_with_migrate_prepares_an_empty_database() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = Store::open(&ConnectOptions::new(&db.url), true)
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));
        assert_eq!(
            store.schema_version().await.unwrap(),
            store.known_schema_version(),
            "{b}"
        );
        assert!(store.ping().await, "{b}: ping");
    }
}

#[tokio::test]
async fn a_schema_from_a_newer_build_is_refused() {
    for db in TestDb::both() {
        let b = backend(&db);
        let store = crate::helpers::migrated(&db).await;
        let known = store.known_schema_version();
        Raw::connect(&db)
            .await
            .insert_migration(known + 1, "from a newer build")
            .await;
        assert_eq!(store.schema_version().await.unwrap(), known + 1, "{b}");

        let too_new = |e: &StoreError| matches!(e, StoreError::SchemaTooNew { found, known: k } if *found == known + 1 && *k == known);
        for migrate in [false, true] {
            match Store::open(&ConnectOptions::new(&db.url), migrate).await {
                Ok(_) => panic!("{b}: open(migrate = {migrate}) accepted a newer schema"),
                Err(e) => assert!(too_new(&e), "{b}: open(migrate = {migrate}): {e:?}"),
            }
        }
        match store.migrate().await {
            Ok(applied) => panic!("{b}: migrate ran over a newer schema, applied {applied:?}"),
            Err(e) => assert!(too_new(&e), "{b}: migrate: {e:?}"),
        }
        match store.check_schema().await {
            Ok(()) => panic!("{b}: check_schema accepted a newer schema"),
            Err(e) => assert!(too_new(&e), "{b}: check_schema: {e:?}"),
        }
    }
}

#[test]
fn an_unknown_url_scheme_is_refused() {
    for url in ["mysql://root@localhost/vatic", "vatic.db"] {
        match Store::connect_lazy(&ConnectOptions::new(url)) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => assert!(
                matches!(e, StoreError::UnsupportedUrl(ref u) if u == url),
                "{url}: {e:?}"
            ),
        }
    }
}
