use crate::helpers::{csv_file, reference_csv, vaticctl, TestApp, EXAMPLE_CSV, EXAMPLE_JSON};

#[test]
fn an_unknown_model_reports_the_servers_message_and_status() {
    let app = TestApp::get();
    for source in [["--json", EXAMPLE_JSON], ["--csv", EXAMPLE_CSV]] {
        app.vaticctl(&[&["infer", "no_such_model"][..], &source].concat())
            .assert_error(&["error: unknown model 'no_such_model' (HTTP 404)"]);
    }
}

#[test]
fn an_unknown_version_reports_the_servers_message_and_status() {
    TestApp::get()
        .vaticctl(&[
            "infer",
            "breast_cancer",
            "--model-version",
            "9",
            "--json",
            EXAMPLE_JSON,
        ])
        .assert_error(&["version '9'", "(HTTP 404)"]);
}

#[test]
fn a_request_the_model_refuses_reports_the_servers_message() {
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    let data = vec![1.0; 29];
    let body = serde_json::json!({"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 29], "data": data}
    ]});
    std::fs::write(file.path(), body.to_string()).unwrap();
    let run = TestApp::get().vaticctl(&[
        "infer",
        "breast_cancer",
        "--json",
        file.path().to_str().unwrap(),
    ]);
    run.assert_error(&["input", "(HTTP 400)"]);
}

#[test]
fn a_row_with_the_wrong_number_of_values_names_its_line() {
    let mut lines = reference_csv(0..3);
    let short = lines[2].rsplit_once(',').unwrap().0.to_string();
    lines[2] = short;
    let file = csv_file(&lines);
    let path = file.path().to_str().unwrap();
    TestApp::get()
        .vaticctl(&["infer", "breast_cancer", "--csv", path])
        .assert_error(&[&format!(
            "{path}, line 3: found 29 values, but input 'input' (shape [-1, 30]) takes 30 per row"
        )]);
}

#[test]
fn a_value_that_is_not_a_number_names_its_line_and_column() {
    let mut lines = reference_csv(0..3);
    let mut cells: Vec<&str> = lines[3].split(',').collect();
    cells[4] = "abc";
    lines[3] = cells.join(",");
    let file = csv_file(&lines);
    let path = file.path().to_str().unwrap();
    TestApp::get()
        .vaticctl(&["infer", "breast_cancer", "--csv", path])
        .assert_error(&[&format!(
            "{path}, line 4, column 5: 'abc' is not a number (FP32)"
        )]);
}

#[test]
fn an_unknown_input_lists_the_models_inputs() {
    TestApp::get()
        .vaticctl(&[
            "infer",
            "breast_cancer",
            "--csv",
            EXAMPLE_CSV,
            "--input",
            "pixels",
        ])
        .assert_error(&["model 'breast_cancer' has no input 'pixels'; its inputs: input"]);
}

#[test]
fn an_unreachable_server_is_named() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    vaticctl(
        &server,
        &["infer", "breast_cancer", "--json", EXAMPLE_JSON],
        None,
    )
    .assert_error(&[&format!("cannot connect to the vatic server at {server}")]);
}

#[test]
fn a_missing_file_is_named() {
    let missing = "models/breast_cancer/no_such_file";
    for flag in ["--csv", "--json"] {
        // Both fail before any request, so no server is needed.
        vaticctl(
            "http://127.0.0.1:1",
            &["infer", "breast_cancer", flag, missing],
            None,
        )
        .assert_error(&[&format!("cannot read {missing}: ")]);
    }
}

#[test]
fn a_json_file_that_is_not_a_request_is_named() {
    vaticctl(
        "http://127.0.0.1:1",
        &["infer", "breast_cancer", "--json", EXAMPLE_CSV],
        None,
    )
    .assert_error(&[&format!("{EXAMPLE_CSV} is not a V2 inference request")]);
}

#[test]
fn a_bad_server_url_is_refused() {
    vaticctl(
        "localhost:8080",
        &["infer", "breast_cancer", "--json", EXAMPLE_JSON],
        None,
    )
    .assert_error(&["--server 'localhost:8080'"]);
}
