//! A database per test: a new PostgreSQL database on the server `$DATABASE_URL` names (else
//! 127.0.0.1:5432 as postgres), or a new SQLite file; dropped when the test ends.

use sqlx::{Connection, Executor, PgConnection};

/// One test's own database.
pub struct TestDb {
    /// URL to give vatic.
    pub url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// The server the test databases are made on.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    // Runs on its own thread so it works inside and outside a tokio runtime.
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })
        .join()
        .expect("database helper thread")
    })
}

impl TestDb {
    /// A new, empty PostgreSQL database.
    pub fn postgres() -> TestDb {
        let admin = postgres_admin_url();
        let name = format!("vatic_test_{}", uuid::Uuid::new_v4().simple());
        let sql = format!("CREATE DATABASE {name}");
        block_on(async {
            let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} (set DATABASE_URL to another server): {e}")
            });
            conn.execute(sql.as_str())
                .await
                .expect("create test database");
        });
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        TestDb {
            url: format!("{base}/{name}"),
            postgres: Some((admin, name)),
            _dir: None,
        }
    }

    /// A new, empty SQLite file in a temporary folder.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        TestDb {
            url: format!("sqlite://{}", dir.path().join("vatic.db").display()),
            postgres: None,
            _dir: Some(dir),
        }
    }

    /// One of each backend, PostgreSQL first.
    pub fn both() -> [TestDb; 2] {
        [TestDb::postgres(), TestDb::sqlite()]
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.postgres.take() {
            block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        }
    }
}
