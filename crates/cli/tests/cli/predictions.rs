//! `vaticctl predictions`: payloads encrypted at rest with data keys, the raw rows holding no
//! plaintext, a key rotation, and the export that decrypts for an admin.

use crate::helpers::{csv_file, reference_csv, RegistryApp, Run};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use vatic_testkit::TestDb;

/// Infers `rows` of the demo reference, one request each.
fn infer_rows(app: &RegistryApp, rows: std::ops::Range<usize>) {
    for row in rows {
        let csv = csv_file(&reference_csv(row..row + 1));
        app.vaticctl(&[
            "infer",
            "breast_cancer",
            "--csv",
            csv.path().to_str().unwrap(),
        ])
        .assert_ok();
    }
}

/// The export's lines, once `n` records are in the log.
fn export_when(app: &RegistryApp, n: usize) -> (Run, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = app.vaticctl(&["predictions", "export", "--model", "breast_cancer"]);
        let lines: Vec<Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n {
            return (run, lines);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} logged: {run:#?}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stored record's text columns.
type TextColumns = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

/// Every column of every stored record, as raw bytes.
fn raw_rows(url: &str) -> Vec<Vec<u8>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let text = "SELECT id::text, request_id, model, version, COALESCE(api_key, ''), \
                    COALESCE(request, ''), COALESCE(response, ''), COALESCE(data_key, '') FROM predictions ORDER BY at, id";
        let sealed_sql = "SELECT sealed FROM predictions ORDER BY at, id";
        let (texts, sealed): (Vec<TextColumns>, Vec<Option<Vec<u8>>>) =
            if url.starts_with("postgres") {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let texts = sqlx::query_as(text).fetch_all(&pool).await.unwrap();
                let sealed = sqlx::query_scalar(sealed_sql).fetch_all(&pool).await.unwrap();
                (texts, sealed)
            } else {
                let pool = sqlx::SqlitePool::connect(url).await.unwrap();
                let texts = sqlx::query_as(&text.replace("id::text", "id"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                let sealed = sqlx::query_scalar(sealed_sql).fetch_all(&pool).await.unwrap();
                (texts, sealed)
            };
        let mut rows: Vec<Vec<u8>> = Vec::new();
        for (t, s) in texts.into_iter().zip(sealed) {
            let mut row = format!("{t:?}").into_bytes();
            row.extend(s.unwrap_or_default());
            rows.push(row);
        }
        rows
    })
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The values of the tensor `name` in a V2 request or response.
fn tensor(v2: &Value, list: &str, name: &str) -> Vec<f64> {
    let t = v2[list]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {v2}"));
    t["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn write_keys(path: &Path, entries: &[&str]) {
    std::fs::write(
        path,
        format!("# data keys, newest last\n{}\n", entries.join("\n")),
    )
    .unwrap();
}

#[test]
fn payloads_are_sealed_at_rest_and_exported_decrypted_across_a_key_rotation() {
    let reference = vatic_testkit::demo_reference();
    for db in [TestDb::postgres(), TestDb::sqlite()] {
        let url = db.url.clone();
        let keys_dir = tempfile::tempdir().unwrap();
        let keys = keys_dir.path().join("data-keys");
        let k1 = crate::helpers::vaticctl(
            "http://127.0.0.1:1",
            &["predictions", "data-key", "--id", "k1"],
            None,
        );
        let k1 = k1.assert_ok().stdout.trim().to_string();
        let k2 = crate::helpers::vaticctl(
            "http://127.0.0.1:1",
            &["predictions", "data-key", "--id", "k2"],
            None,
        );
        let k2 = k2.assert_ok().stdout.trim().to_string();
        assert!(k1.starts_with("k1=") && k2.starts_with("k2=") && k1[3..] != k2[3..]);
        write_keys(&keys, &[&k1]);
        let with_keys = |keys: &Path| {
            let keys = keys.to_path_buf();
            move |s: &mut vatic_api::settings::ApiSettings| {
                s.prediction_log.data_keys_file = Some(keys);
                s.prediction_log.flush_interval_ms = 20;
            }
        };
        let app = RegistryApp::start_with(db, with_keys(&keys));
        app.vaticctl(&["models", "log", "breast_cancer", "--mode", "full"])
            .assert_ok();
        infer_rows(&app, 0..3);
        export_when(&app, 3);

        // Rotation: k2 is added last, so it seals from now on; k1 still opens the old rows.
        write_keys(&keys, &[&k1, &k2]);
        let app = app.restart_with(with_keys(&keys));
        infer_rows(&app, 3..5);
        let (run, lines) = export_when(&app, 5);
        run.assert_exported(5);
        assert_eq!(lines.len(), 5, "{url}");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(
                line["data_key"],
                if i < 3 { "k1" } else { "k2" },
                "{url}: {line}"
            );
            assert!(line.get("error").is_none(), "{line}");
            // Decrypted to what was sent and answered, compared with the reference values.
            let inputs = tensor(&line["request"], "inputs", "input");
            for (got, want) in inputs.iter().zip(&reference.inputs[i]) {
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{got} {want}"
                );
            }
            let probabilities = tensor(&line["response"], "outputs", "probabilities");
            for (got, want) in probabilities.iter().zip(&reference.probabilities[i]) {
                assert!((got - want).abs() < 1e-4, "{url}: {got} {want}");
            }
        }

        // The database holds none of it in clear: not the tensor names, not a feature value.
        let rows = raw_rows(&url);
        assert_eq!(rows.len(), 5);
        let feature = lines[0]["request"]["inputs"][0]["data"][0].to_string();
        assert!(feature.len() >= 4, "{feature}");
        for row in &rows {
            for marker in [
                "inputs",
                "outputs",
                "probabilities",
                "FP32",
                feature.as_str(),
            ] {
                assert!(!contains(row, marker), "{url}: a stored row shows {marker}");
            }
        }

        // Without k1, its rows are exported undecrypted and named; the command fails.
        write_keys(&keys, &[&k2]);
        let app = app.restart_with(with_keys(&keys));
        let run = app.vaticctl(&["predictions", "export"]);
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(
            run.stderr
                .contains("3 could not be decrypted (3 sealed with data key k1)"),
            "{run:#?}"
        );
        let lines: Vec<Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[0]["error"],
            "sealed with data key k1, which is not configured"
        );
        assert!(lines[0]["request"].is_null() && lines[4]["request"].is_object());

        // Each page read is audited.
        let audit = app
            .vaticctl(&["audit", "--action", "predictions_export", "-o", "json"])
            .assert_ok()
            .json();
        assert!(audit.as_array().unwrap().len() >= 3, "{audit}");
        assert!(
            audit[0]["detail"]
                .as_str()
                .unwrap()
                .contains("\"unreadable\":3"),
            "{audit}"
        );
    }
}

#[test]
fn export_refuses_a_bad_query_with_what_is_wrong() {
    let app = RegistryApp::start(TestDb::sqlite());
    for (query, want) in [
        ("limit=0", "limit: 0 is not between 1 and 10000"),
        ("limit=10001", "limit: 10001 is not between 1 and 10000"),
        (
            "after=yesterday",
            "after: 'yesterday' is not a page position",
        ),
        ("after=12:nope", "after: '12:nope' is not a page position"),
        // Times no database holds: refused here, not left to fail in the database.
        (
            "after=-8000000000000000000:01a24d39-2480-76c6-84b4-bb5b76159e50",
            "is not a page position",
        ),
        (
            "after=253402300800000000:01a24d39-2480-76c6-84b4-bb5b76159e50",
            "is not a page position",
        ),
        ("since=monday", "since: 'monday' is not an RFC 3339 time"),
        (
            "until=2026-13-01T00:00:00Z",
            "until: '2026-13-01T00:00:00Z' is not an RFC 3339 time",
        ),
        ("page=2", "invalid query"),
    ] {
        let (status, body) = app.get(&format!("/admin/v1/predictions?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(want),
            "{query}: {body}"
        );
    }
    let run = app.vaticctl(&["predictions", "export", "--since", "monday"]);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("neither an RFC 3339 time"), "{run:#?}");
    for id in ["a b", "a=b", "a,b", ""] {
        let run = app.vaticctl(&["predictions", "data-key", "--id", id]);
        run.assert_error(&[&format!("--id {id:?}: the key id must be 1 to 64 letters")]);
    }
}

#[test]
fn a_page_position_walks_the_log_once_in_arrival_order() {
    let app = RegistryApp::start_with(TestDb::postgres(), |s| {
        s.prediction_log.flush_interval_ms = 20;
    });
    app.vaticctl(&["models", "log", "breast_cancer", "--mode", "metadata"])
        .assert_ok();
    infer_rows(&app, 0..7);
    export_when(&app, 7);
    // Pages of 2: 4 requests, every record once, oldest first.
    let run = app.vaticctl(&["predictions", "export", "--page", "2"]);
    run.assert_exported(7);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    let mut ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    let times: Vec<&str> = lines.iter().map(|l| l["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 7);
    // Metadata mode: no payloads, nothing sealed (no data key configured).
    assert!(lines
        .iter()
        .all(|l| l["request"].is_null() && l.get("data_key").is_none()));
    let (status, page) = app.get("/admin/v1/predictions?limit=5");
    assert_eq!(status, 200);
    assert_eq!(page["records"].as_array().unwrap().len(), 5);
    let next = page["next"].as_str().unwrap();
    let (_, rest) = app.get(&format!("/admin/v1/predictions?limit=5&after={next}"));
    assert_eq!(rest["records"].as_array().unwrap().len(), 2);
    assert!(rest["next"].is_null());

    // To a file: the same lines, readable by its owner only.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let to = file.to_str().unwrap();
    app.vaticctl(&["predictions", "export", "--to", to])
        .assert_exported(7);
    assert!(run
        .stdout
        .lines()
        .eq(std::fs::read_to_string(&file).unwrap().lines()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}
