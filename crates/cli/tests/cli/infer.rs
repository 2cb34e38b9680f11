use crate::helpers::{csv_file, reference_csv, TestApp, EXAMPLE_CSV, EXAMPLE_JSON};
use serde_json::{json, Value};
use vatic_testkit::demo_reference;

fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("output {name} in {response}"))
}

#[test]
fn csv_rows_print_a_table_of_the_reference_outputs() {
    let run = TestApp::get().vaticctl(&["infer", "breast_cancer", "--csv", EXAMPLE_CSV]);
    run.assert_ok();
    let table = run.table();
    assert_eq!(
        table[0],
        ["row", "probabilities[0]", "probabilities[1]", "label"],
        "{}",
        run.stdout
    );
    assert_eq!(table.len(), 4, "header and 3 rows in {}", run.stdout);
    let reference = demo_reference();
    for (i, cells) in table[1..].iter().enumerate() {
        assert_eq!(cells[0], i.to_string());
        assert_eq!(
            cells[3].parse::<i64>().unwrap(),
            reference.label[i],
            "row {i}"
        );
        for (j, want) in reference.probabilities[i].iter().enumerate() {
            let got: f64 = cells[1 + j].parse().unwrap();
            assert!(
                (got - want).abs() <= 1e-5,
                "row {i}: probabilities[{j}] {got} vs {want}"
            );
        }
    }
}

#[test]
fn csv_rows_as_json_match_the_reference() {
    let run = TestApp::get().vaticctl(&[
        "--output",
        "json",
        "infer",
        "breast_cancer",
        "--csv",
        EXAMPLE_CSV,
    ]);
    let response = run.assert_ok().json();
    assert_eq!(response["model_name"], "breast_cancer");
    assert_eq!(output(&response, "probabilities")["shape"], json!([3, 2]));
    assert_eq!(output(&response, "label")["shape"], json!([3]));
    demo_reference().check_response(&response, 0..3);
}

#[test]
fn csv_rows_from_stdin_travel_in_binary() {
    let rows = reference_csv(0..8).join("\n");
    let run = TestApp::get().vaticctl_with_stdin(
        &[
            "infer",
            "breast_cancer",
            "--csv",
            "-",
            "--binary",
            "-o",
            "json",
        ],
        rows.as_bytes(),
    );
    demo_reference().check_response(&run.assert_ok().json(), 0..8);
}

#[test]
fn csv_rows_may_name_the_input() {
    let file = csv_file(&reference_csv(3..5));
    let path = file.path().to_str().unwrap();
    let run = TestApp::get().vaticctl(&[
        "infer",
        "breast_cancer",
        "--csv",
        path,
        "--input",
        "input",
        "--output",
        "json",
    ]);
    demo_reference().check_response(&run.assert_ok().json(), 3..5);
}

#[test]
fn a_json_request_matches_the_reference() {
    let run = TestApp::get().vaticctl(&[
        "infer",
        "breast_cancer",
        "--json",
        EXAMPLE_JSON,
        "--output",
        "json",
    ]);
    let response = run.assert_ok().json();
    demo_reference().check_response(&response, 0..1);
    assert_eq!(output(&response, "probabilities")["datatype"], "FP32");
    assert_eq!(output(&response, "label")["datatype"], "INT64");
}

#[test]
fn a_binary_json_request_prints_the_same_json() {
    let app = TestApp::get();
    let args = [
        "infer",
        "breast_cancer",
        "--json",
        EXAMPLE_JSON,
        "-o",
        "json",
    ];
    let plain = app.vaticctl(&args).assert_ok().json();
    let binary = app
        .vaticctl(&[&args[..], &["--binary"]].concat())
        .assert_ok()
        .json();
    demo_reference().check_response(&binary, 0..1);
    assert_eq!(binary, plain);
}

#[test]
fn a_json_request_from_stdin_to_a_pinned_version() {
    let body = std::fs::read(vatic_testkit::root().join(EXAMPLE_JSON)).unwrap();
    let run = TestApp::get().vaticctl_with_stdin(
        &[
            "infer",
            "breast_cancer",
            "--model-version",
            "1",
            "--json",
            "-",
        ],
        &body,
    );
    let table = run.assert_ok().table();
    assert_eq!(table.len(), 2, "{}", run.stdout);
    assert_eq!(table[1][3], demo_reference().label[0].to_string());
}
