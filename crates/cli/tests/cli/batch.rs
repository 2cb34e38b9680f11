//! `vaticctl batch` against a standalone api: a CSV file submitted and followed to its end,
//! its results written as JSONL and CSV and checked against the demo's reference values, the
//! job listed, retried and cancelled, and the errors a user meets.

use crate::helpers::{csv_file, reference_csv, RegistryApp};
use serde_json::Value;
use vatic_testkit::TestDb;

#[test]
fn a_file_is_submitted_followed_and_its_results_written() {
    let app = RegistryApp::start_with(TestDb::sqlite(), |s| {
        s.batch.chunk_rows = 8;
        s.batch.poll_ms = 50;
    });
    let reference = vatic_testkit::demo_reference();
    let mut lines = reference_csv(0..20);
    // Row 3 has a word where a number goes.
    lines[3] = lines[3].replacen(|c: char| c.is_ascii_digit(), "x", 1);
    let file = csv_file(&lines);
    let path = file.path().to_str().unwrap();

    let run = app.vaticctl(&[
        "batch",
        "submit",
        path,
        "--model",
        "breast_cancer",
        "--wait",
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    let job = run.json();
    assert_eq!(job["state"], "succeeded", "{run:#?}");
    assert_eq!(
        (job["rows_total"].as_u64(), job["rows_failed"].as_u64()),
        (Some(20), Some(1))
    );
    assert!(run.stderr.contains("submitted: 20 rows"), "{run:#?}");
    assert!(run.stderr.contains("1 of 20 rows failed"), "{run:#?}");
    let id = job["id"].as_str().unwrap();

    // JSONL on standard output, one line per row, in order.
    let run = app.vaticctl(&["batch", "results", id, "--format", "jsonl"]);
    run.assert_ok();
    let results: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 20);
    for (i, line) in results.iter().enumerate() {
        assert_eq!(line["row"], i + 1);
        if i == 2 {
            assert!(
                line["error"].as_str().unwrap().contains("is not a number"),
                "{line}"
            );
            continue;
        }
        let label = line["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap();
        assert_eq!(
            label["data"][0].as_i64(),
            Some(reference.label[i]),
            "{line}"
        );
    }
    // CSV into a file.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scores.csv");
    let run = app.vaticctl(&["batch", "results", id, "--file", out.to_str().unwrap()]);
    run.assert_ok();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 21, "{text}");
    assert!(text.starts_with("row,version,"), "{text}");

    let run = app.vaticctl(&["batch", "status", id]);
    run.assert_ok();
    let table = run.table();
    assert_eq!(
        table[0][..6],
        ["id", "model", "state", "rows", "done", "failed"]
    );
    assert_eq!(
        table[1][..6],
        [id, "breast_cancer", "succeeded", "20", "20", "1"]
    );
    let run = app.vaticctl(&["batch", "list", "-o", "json"]);
    run.assert_ok();
    assert_eq!(run.json()[0]["id"], id);

    // The failed row runs again (and fails again: its data is what it is).
    let run = app.vaticctl(&["batch", "retry", id, "--wait", "-o", "json"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        (
            run.json()["rows_done"].as_u64(),
            run.json()["rows_failed"].as_u64()
        ),
        (Some(20), Some(1))
    );
    let run = app.vaticctl(&["batch", "cancel", id]);
    run.assert_error(&["has ended (succeeded)", "nothing to cancel"]);
}

#[test]
fn batch_errors_say_what_to_do() {
    let app = RegistryApp::start_with(TestDb::sqlite(), |s| s.batch.run = false);
    let file = csv_file(&reference_csv(0..2));
    let path = file.path().to_str().unwrap();
    app.vaticctl(&["batch", "submit", path, "--model", "nosuch"])
        .assert_error(&["nosuch"]);
    app.vaticctl(&[
        "batch",
        "submit",
        "/no/such/file.csv",
        "--model",
        "breast_cancer",
    ])
    .assert_error(&["cannot open /no/such/file.csv"]);
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("rows.txt");
    std::fs::write(&txt, "{oops\n").unwrap();
    app.vaticctl(&[
        "batch",
        "submit",
        txt.to_str().unwrap(),
        "--model",
        "breast_cancer",
    ])
    .assert_error(&["rows.txt", "--format"]);
    app.vaticctl(&[
        "batch",
        "submit",
        txt.to_str().unwrap(),
        "--model",
        "breast_cancer",
        "--format",
        "jsonl",
    ])
    .assert_error(&["line 1", "not JSON"]);
    app.vaticctl(&["batch", "status", "nosuch"])
        .assert_error(&["batch job 'nosuch' not found"]);
    app.vaticctl(&["batch", "results", "nosuch"])
        .assert_error(&["not found"]);
    // A queued job (this api runs no rows) is cancelled, then cannot be cancelled again.
    let run = app.vaticctl(&[
        "batch",
        "submit",
        path,
        "--model",
        "breast_cancer",
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    let id = run.json()["id"].as_str().unwrap().to_string();
    let run = app.vaticctl(&["batch", "retry", &id]);
    run.assert_error(&["is queued", "retry it once it has ended"]);
    let run = app.vaticctl(&["batch", "cancel", &id, "-o", "json"]);
    run.assert_ok();
    assert_eq!(run.json()["state"], "cancelled");
    let run = app.vaticctl(&["batch", "status", &id, "--wait"]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("cancelled by anonymous"), "{run:#?}");
}

#[test]
fn a_gzip_file_is_sent_compressed() {
    let app = RegistryApp::start_with(TestDb::sqlite(), |s| s.batch.poll_ms = 50);
    let file = csv_file(&reference_csv(0..5));
    let status = std::process::Command::new("gzip")
        .args(["-k", file.path().to_str().unwrap()])
        .status()
        .expect("gzip");
    assert!(status.success());
    let gz = format!("{}.gz", file.path().display());
    let run = app.vaticctl(&[
        "batch",
        "submit",
        &gz,
        "--model",
        "breast_cancer",
        "--wait",
        "-o",
        "json",
    ]);
    std::fs::remove_file(&gz).unwrap();
    assert_eq!(run.code, Some(0), "{run:#?}");
    let job = run.json();
    assert_eq!(
        (job["state"].as_str(), job["input_format"].as_str()),
        (Some("succeeded"), Some("csv"))
    );
    assert_eq!(
        (job["rows_done"].as_u64(), job["rows_failed"].as_u64()),
        (Some(5), Some(0))
    );
}
