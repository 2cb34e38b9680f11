//! `vaticctl keys` against an api that requires keys: a key made, listed without its secret,
//! used within its role and scope, refused outside them, and revoked.

use crate::helpers::{vaticctl_with_env, RegistryApp, EXAMPLE_CSV};
use vatic_server::auth::{KeyRing, Role};
use vatic_testkit::TestDb;

/// A database, migrated, holding one admin key, which is returned.
fn database_with_admin(db: &TestDb) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store =
            vatic_store::Store::open(&vatic_store::ConnectOptions::new(db.url.clone()), true)
                .await
                .unwrap();
        let ring = KeyRing::load(&store, Default::default()).await.unwrap();
        let key = vatic_api::auth::new_key(Role::Admin, "test admin", None, "test");
        let (_, secret) = ring.create(key, None).await.unwrap();
        store.close().await;
        secret
    })
}

#[test]
fn keys_are_made_listed_used_within_their_scope_and_revoked() {
    let db = TestDb::sqlite();
    let admin = database_with_admin(&db);
    let app = RegistryApp::start_with(db, |s| s.auth.enabled = Some(true));
    let as_key = |key: &str, args: &[&str]| {
        vaticctl_with_env(&app.base, args, None, &[("VATIC_API_KEY", key)])
    };

    // No key: refused, and the message says how to send one.
    let run = vaticctl_with_env(&app.base, &["models", "list"], None, &[]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr.contains("401") && run.stderr.contains("Authorization"),
        "{run:#?}"
    );

    let run = as_key(
        &admin,
        &[
            "keys",
            "create",
            "--role",
            "predictor",
            "--models",
            "breast_cancer",
            "--expires",
            "1h",
            "--name",
            "checkout",
        ],
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    let secret = run.stdout.trim().to_string();
    assert!(secret.starts_with("vk_"), "{run:#?}");
    assert!(run.stderr.contains("shown this once"), "{run:#?}");
    let id = vatic_server::auth::token::id_of(&secret);

    let run = as_key(&admin, &["keys", "list", "-o", "json"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(!run.stdout.contains(&secret), "a listing shows a secret");
    let listed = run.json();
    let made = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("the new key is listed");
    assert_eq!(made["role"], "predictor");
    assert_eq!(made["models"], serde_json::json!(["breast_cancer"]));
    assert_eq!(made["name"], "checkout");
    assert!(made["expires_at"].is_string());

    // Within its role and scope it works; outside them it is refused.
    as_key(&secret, &["infer", "breast_cancer", "--csv", EXAMPLE_CSV]).assert_ok();
    as_key(&secret, &["models", "list"]).assert_error(&["403", "predictor"]);
    as_key(&secret, &["keys", "list"]).assert_error(&["403"]);

    as_key(&admin, &["keys", "revoke", &id]).assert_ok();
    as_key(&secret, &["infer", "breast_cancer", "--csv", EXAMPLE_CSV])
        .assert_error(&["401", "revoked"]);
    as_key(&admin, &["keys", "revoke", &id]).assert_error(&["404", &id]);
    as_key(
        &admin,
        &[
            "keys",
            "create",
            "--role",
            "predictor",
            "--models",
            "bad name",
        ],
    )
    .assert_error(&["400", "invalid model name"]);

    // Both changes are in the audit log, under the admin key that made them.
    let run = as_key(&admin, &["audit", "-o", "json"]);
    let audit = run.json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actor"].as_str().unwrap_or("").contains("test admin"))
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"keys_create") && actions.contains(&"keys_revoke"),
        "{audit}"
    );
}
