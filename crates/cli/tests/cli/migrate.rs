//! `vaticctl migrate` against fresh databases of both backends.

use crate::helpers::{vaticctl, vaticctl_with_env, Run};
use serde_json::json;
use vatic_testkit::TestDb;

/// No API server is involved; `--server` points nowhere.
const NO_SERVER: &str = "http://127.0.0.1:1";

fn migrate(args: &[&str]) -> Run {
    vaticctl(NO_SERVER, &[&["migrate"][..], args].concat(), None)
}

/// The migration versions the repository holds for a backend: the numbers that start the file
/// names under `migrations/<backend>/`.
fn migration_versions(backend: &str) -> Vec<i64> {
    let dir = vatic_testkit::root().join("migrations").join(backend);
    let mut versions: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .map(|name| {
            name.split('_')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("migration file {name} starts with its version"))
        })
        .collect();
    versions.sort();
    versions
}

#[test]
fn a_fresh_database_gets_every_migration_once() {
    for db in TestDb::both() {
        let backend = if db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        };
        let versions = migration_versions(backend);
        let newest = *versions.last().expect("at least one migration");
        let url = db.url.as_str();

        let applied = migrate(&["--database-url", url, "-o", "json"])
            .assert_ok()
            .json();
        assert_eq!(
            applied,
            json!({"applied": versions, "schema_version": newest}),
            "{backend}"
        );

        let run = migrate(&["--database-url", url]);
        assert_eq!(
            run.assert_ok().stdout,
            format!("already at version {newest}: nothing to apply\n"),
            "{backend}"
        );
        let again = migrate(&["--database-url", url, "-o", "json"])
            .assert_ok()
            .json();
        assert_eq!(
            again,
            json!({"applied": [], "schema_version": newest}),
            "{backend}"
        );

        let run = migrate(&["--check", "--database-url", url]);
        assert!(
            run.assert_ok().stdout.contains(&format!(
                "the schema is at version {newest}, the version this build needs"
            )),
            "{backend}: {run:#?}"
        );
        let check = migrate(&["--check", "--database-url", url, "-o", "json"])
            .assert_ok()
            .json();
        assert_eq!(
            check,
            json!({"schema_version": newest, "known_schema_version": newest}),
            "{backend}"
        );
    }
}

#[test]
fn the_table_output_lists_the_migrations_applied() {
    let db = TestDb::sqlite();
    let versions = migration_versions("sqlite");
    let list: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
    let run = migrate(&["--database-url", &db.url]);
    assert_eq!(
        run.assert_ok().stdout,
        format!(
            "applied {} migrations ({}): the schema is at version {}\n",
            versions.len(),
            list.join(", "),
            versions.last().unwrap()
        )
    );
}

#[test]
fn check_on_an_empty_database_fails_and_names_both_versions() {
    let db = TestDb::postgres();
    let newest = *migration_versions("postgres").last().unwrap();
    migrate(&["--check", "--database-url", &db.url]).assert_error(&[&format!(
        "the database schema is at version 0 but this build needs version {newest}"
    )]);

    // An empty SQLite file is an empty database.
    let db = TestDb::sqlite();
    let path = db.url.strip_prefix("sqlite://").unwrap();
    std::fs::write(path, b"").unwrap();
    let newest = *migration_versions("sqlite").last().unwrap();
    migrate(&["--check", "--database-url", &db.url]).assert_error(&[&format!(
        "the database schema is at version 0 but this build needs version {newest}"
    )]);

    // A file that is not there is not created by a check.
    let missing = TestDb::sqlite();
    let path = missing.url.strip_prefix("sqlite://").unwrap();
    migrate(&["--check", "--database-url", &missing.url])
        .assert_error(&[&format!("there is no SQLite database at {path}")]);
    assert!(!std::path::Path::new(path).exists());
}

#[test]
fn the_database_url_may_come_from_the_environment() {
    let db = TestDb::sqlite();
    let run = vaticctl_with_env(NO_SERVER, &["migrate"], None, &[("DATABASE_URL", &db.url)]);
    assert!(run.assert_ok().stdout.starts_with("applied "), "{run:#?}");
    vaticctl_with_env(
        NO_SERVER,
        &["migrate", "--check"],
        None,
        &[("DATABASE_URL", &db.url)],
    )
    .assert_ok();

    let run = migrate(&[]);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("--database-url <URL>"), "{run:#?}");
}

#[test]
fn bad_or_unreachable_databases_are_named_without_their_password() {
    migrate(&["--database-url", "mysql://root:s3cret@127.0.0.1/vatic"]).assert_error(&[
        "unsupported database URL 'mysql://root:***@127.0.0.1/vatic'",
        "postgres://",
        "sqlite://",
    ]);

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://vatic:s3cret@127.0.0.1:{port}/vatic");
    let run = migrate(&["--database-url", &url]);
    run.assert_error(&[&format!(
        "cannot connect to the database postgres://vatic:***@127.0.0.1:{port}/vatic"
    )]);
    assert!(!run.stderr.contains("s3cret"), "{run:#?}");

    let db = TestDb::postgres();
    let base = db.url.rsplit_once('/').unwrap().0;
    migrate(&["--database-url", &format!("{base}/vatic_no_such_database")])
        .assert_error(&["database \"vatic_no_such_database\" does not exist"]);
}

#[test]
fn the_password_may_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    let db = TestDb::postgres();
    // The test server trusts every password: the file is read and the migration runs.
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let file_arg = file.to_str().unwrap();
    migrate(&["--database-url", &db.url, "--password-file", file_arg]).assert_ok();
    let missing = dir.path().join("none");
    let run = migrate(&[
        "--database-url",
        &db.url,
        "--password-file",
        missing.to_str().unwrap(),
    ]);
    run.assert_error(&[&format!(
        "--password-file {}: cannot read it",
        missing.display()
    )]);
    std::fs::write(&file, "\n").unwrap();
    migrate(&["--database-url", &db.url, "--password-file", file_arg])
        .assert_error(&[&format!("--password-file {file_arg}: is empty")]);
    let sqlite = format!("sqlite://{}", dir.path().join("v.db").display());
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let run = migrate(&["--database-url", &sqlite, "--password-file", file_arg]);
    run.assert_error(&["a sqlite:// database has no password"]);
    assert!(!run.stderr.contains("s3cret"), "{run:#?}");
}

#[test]
fn a_schema_newer_than_the_build_is_refused() {
    let db = TestDb::sqlite();
    migrate(&["--database-url", &db.url]).assert_ok();
    // What a newer vatic leaves behind: a migration this build does not carry.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            conn.execute(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (9999, 'future', TRUE, x'00', 0)",
            )
            .await
            .unwrap();
            conn.close().await.unwrap();
        });
    let newest = *migration_versions("sqlite").last().unwrap();
    let message = format!(
        "the database schema is at version 9999, newer than this build of vatic knows ({newest})"
    );
    migrate(&["--database-url", &db.url]).assert_error(&[&message]);
    migrate(&["--check", "--database-url", &db.url]).assert_error(&[&message]);
}
