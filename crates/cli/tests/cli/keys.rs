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

    // A push sends the key too, and is refused without it.
    let push = ["models", "push", "cnn", "testdata/models/cnn/1/model.onnx"];
    let run = vaticctl_with_env(&app.base, &push, None, &[]);
    assert!(
        run.code == Some(1) && run.stderr.contains("401"),
        "{run:#?}"
    );
    let run = as_key(&admin, &push);
    assert_eq!(run.code, Some(0), "{run:#?}");

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

    // Both changes are in the audit log, under the admin key that made them, with its role,
    // the address and the request id.
    let admin_id = vatic_server::auth::token::id_of(&admin);
    let run = as_key(
        &admin,
        &[
            "audit", "-o", "json", "--key-id", &admin_id, "--since", "1h",
        ],
    );
    let audit = run.json();
    let records = audit.as_array().unwrap();
    let created = records
        .iter()
        .find(|r| r["action"] == "keys_create")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(created["key_id"], admin_id.as_str());
    assert_eq!(created["key_name"], "test admin");
    assert_eq!(created["role"], "admin");
    assert_eq!(created["remote_addr"], "127.0.0.1");
    assert_eq!(created["target"], format!("key {id}"));
    assert_eq!(created["outcome"], "ok");
    assert!(created["request_id"].is_string(), "{created}");
    assert!(
        records.iter().any(|r| r["action"] == "keys_revoke"),
        "{audit}"
    );
    let run = as_key(&admin, &["audit", "-o", "json", "--action", "keys_revoke"]);
    let only = run.json();
    assert!(
        only.as_array()
            .unwrap()
            .iter()
            .all(|r| r["action"] == "keys_revoke")
            && !only.as_array().unwrap().is_empty(),
        "{only}"
    );

    // The predictor's refused attempt at the key list is recorded too (in the background).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let run = as_key(
            &admin,
            &[
                "audit",
                "-o",
                "json",
                "--action",
                "GET /admin/v1/keys",
                "--key-id",
                &id,
            ],
        );
        let refused = run.json();
        if let Some(r) = refused.as_array().unwrap().first() {
            assert_eq!(r["outcome"], "refused");
            assert_eq!(r["role"], "predictor");
            assert!(
                r["detail"]
                    .as_str()
                    .unwrap()
                    .contains("may not use this route"),
                "{r}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refused attempt is not in the audit log"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    as_key(&admin, &["audit", "--since", "ten"])
        .code
        .filter(|c| *c == 2)
        .expect("clap refuses a bad --since");
}
