"""Train the breast_cancer demo model and export it as plain ONNX.

The model is a scikit-learn Pipeline (StandardScaler + LogisticRegression)
trained on the Wisconsin breast cancer data set that ships with scikit-learn.
The ONNX graph is built by hand from the fitted parameters so that it uses only
operators of the default ONNX domain (opset 13); the serving runtime does not
implement the ai.onnx.ml operators that skl2onnx emits for such a pipeline.

The hand-built graph is checked against the skl2onnx conversion of the same
pipeline and against scikit-learn itself, all evaluated with onnxruntime.

Outputs (next to this script):
  1/model.onnx     the served model
  reference.json   64 test rows with the outputs onnxruntime computes for them
  example.json     a KServe V2 inference request with one row
  example.csv      a CSV header plus three rows
  example.bin      the example.json row as a binary-extension request (JSON header, then
                   120 bytes of little-endian float32); its header length is in
                   example.bin.header-length
"""

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
OPSET = 13
IR_VERSION = 8
N_FEATURES = 30
N_REFERENCE_ROWS = 64
PROBA_TOLERANCE = 1e-5

DOC_STRING = (
    "Logistic regression on standardized features of the Wisconsin breast "
    "cancer data set (scikit-learn load_breast_cancer). "
    "Input 'input': FLOAT [N,30], the 30 features in data set order. "
    "Output 'probabilities': FLOAT [N,2], class probabilities "
    "[P(malignant), P(benign)]. "
    "Output 'label': INT64 [N], predicted class (0 = malignant, 1 = benign)."
)


def load_split():
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0
    )
    feature_names = [str(name) for name in data.feature_names]
    return feature_names, x_train, x_test, y_train, y_test


def train(x_train, y_train):
    pipeline = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )
    pipeline.fit(x_train, y_train)
    return pipeline


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name=name)


def build_onnx(pipeline):
    """Build input -> (x - mean) / scale -> x @ coef^T + b -> sigmoid -> [1-p, p]."""
    scaler = pipeline.named_steps["scaler"]
    classifier = pipeline.named_steps["classifier"]
    assert list(classifier.classes_) == [0, 1], classifier.classes_
    assert classifier.coef_.shape == (1, N_FEATURES), classifier.coef_.shape

    initializers = [
        const("scaler_mean", scaler.mean_),
        const("scaler_scale", scaler.scale_),
        const("coef", classifier.coef_.T),  # [30, 1]
        const("intercept", classifier.intercept_),  # [1]
        const("one", 1.0),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "scaler_mean"], ["centered"]),
        helper.make_node("Div", ["centered", "scaler_scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "coef"], ["weighted"]),
        helper.make_node("Add", ["weighted", "intercept"], ["logit"]),  # [N, 1]
        helper.make_node("Sigmoid", ["logit"], ["p_benign"]),
        helper.make_node("Sub", ["one", "p_benign"], ["p_malignant"]),
        helper.make_node(
            "Concat", ["p_malignant", "p_benign"], ["probabilities"], axis=1
        ),
        helper.make_node(
            "ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "breast_cancer",
        inputs=[
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", N_FEATURES])
        ],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="vatic-train",
        doc_string=DOC_STRING,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model_bytes, x):
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    return dict(zip((o.name for o in session.get_outputs()), outputs))


def check_against_references(model, pipeline, x_test):
    """Compare the hand-built model with skl2onnx's conversion and with sklearn."""
    x32 = x_test.astype(np.float32)
    ours = run(model.SerializeToString(), x32)

    converted = to_onnx(
        pipeline,
        x32[:1],
        options={id(pipeline.named_steps["classifier"]): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 1},
    )
    theirs = run(converted.SerializeToString(), x32)
    theirs_label = next(v for v in theirs.values() if v.dtype == np.int64)
    theirs_proba = next(v for v in theirs.values() if v.dtype == np.float32)

    sk_label = pipeline.predict(x32.astype(np.float64))
    sk_proba = pipeline.predict_proba(x32.astype(np.float64))

    diff_skl2onnx = float(np.max(np.abs(ours["probabilities"] - theirs_proba)))
    diff_sklearn = float(np.max(np.abs(ours["probabilities"] - sk_proba)))
    print(f"max |p - p_skl2onnx| = {diff_skl2onnx:.3g}")
    print(f"max |p - p_sklearn|  = {diff_sklearn:.3g}")

    assert np.array_equal(ours["label"], theirs_label), "labels differ from skl2onnx"
    assert np.array_equal(ours["label"], sk_label), "labels differ from sklearn"
    assert diff_skl2onnx <= PROBA_TOLERANCE, diff_skl2onnx
    assert diff_sklearn <= PROBA_TOLERANCE, diff_sklearn
    return ours


def floats(array):
    """float32 values as Python floats, which JSON round-trips exactly."""
    return np.asarray(array, dtype=np.float32).astype(np.float64).tolist()


def to_json(value, indent=0):
    """JSON with objects indented and each list of numbers on a single line."""
    pad = " " * indent
    if isinstance(value, dict):
        items = [
            f"{pad}  {json.dumps(key)}: {to_json(item, indent + 2).lstrip()}"
            for key, item in value.items()
        ]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value):
        items = [to_json(item, indent + 2) for item in value]
        return pad + "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return pad + json.dumps(value)


def write_json(path, value):
    text = to_json(value) + "\n"
    assert json.loads(text) == value
    path.write_text(text)


def shortest_f32(value):
    """The shortest decimal string that parses back to the same float32."""
    return np.format_float_positional(np.float32(value), trim="-")


def write_outputs(model, feature_names, x_test):
    model_path = HERE / "1" / "model.onnx"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_path)

    rows = x_test[:N_REFERENCE_ROWS].astype(np.float32)
    outputs = run(model_path.read_bytes(), rows)
    reference = {
        "input_name": "input",
        "feature_names": feature_names,
        "inputs": floats(rows),
        "label": [int(v) for v in outputs["label"]],
        "probabilities": floats(outputs["probabilities"]),
    }
    write_json(HERE / "reference.json", reference)

    example = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, N_FEATURES],
                "datatype": "FP32",
                "data": reference["inputs"][0],
            }
        ]
    }
    write_json(HERE / "example.json", example)

    write_binary_example(reference["inputs"][0])

    with open(HERE / "example.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(feature_names)
        for row in reference["inputs"][:3]:
            writer.writerow([shortest_f32(v) for v in row])


def write_binary_example(row):
    """One row as a V2 binary tensor extension request that asks for JSON outputs."""
    data = np.asarray(row, dtype="<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, N_FEATURES],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    (HERE / "example.bin").write_bytes(head + data)
    (HERE / "example.bin.header-length").write_text(f"{len(head)}\n")


def main():
    feature_names, x_train, x_test, y_train, y_test = load_split()
    pipeline = train(x_train, y_train)
    model = build_onnx(pipeline)
    outputs = check_against_references(model, pipeline, x_test)
    accuracy = float(np.mean(outputs["label"] == y_test))
    print(f"test accuracy = {accuracy:.4f} ({len(y_test)} rows)")
    write_outputs(model, feature_names, x_test)
    print(f"wrote {HERE / '1' / 'model.onnx'} and reference files")


if __name__ == "__main__":
    main()
