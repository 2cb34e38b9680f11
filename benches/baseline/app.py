"""The hand-written baseline: an ONNX model behind FastAPI and onnxruntime, the way a tutorial
builds it, speaking just enough of the KServe V2 REST API (model metadata and JSON infer) for
`vaticctl bench` to drive it. scripts/bench.sh runs it beside vatic.

    MODEL_DIR=models uvicorn app:app --port 8000 --workers 2
"""

import os
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

MODEL_DIR = Path(os.environ.get("MODEL_DIR", "models"))

DTYPES = {"tensor(float)": ("FP32", np.float32), "tensor(int64)": ("INT64", np.int64)}

app = FastAPI()
sessions = {
    path.parent.parent.name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for path in MODEL_DIR.glob("*/1/model.onnx")
}


class InferInput(BaseModel):
    name: str
    shape: List[int]
    datatype: str
    data: List[Any]


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: List[InferInput]


def session_for(name: str) -> ort.InferenceSession:
    if name not in sessions:
        raise HTTPException(status_code=404, detail=f"unknown model {name}")
    return sessions[name]


def describe(arg):
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": DTYPES[arg.type][0], "shape": shape}


@app.get("/v2/models/{name}")
def metadata(name: str):
    session = session_for(name)
    return {
        "name": name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [describe(i) for i in session.get_inputs()],
        "outputs": [describe(o) for o in session.get_outputs()],
    }


@app.post("/v2/models/{name}/infer")
def infer(name: str, request: InferRequest):
    session = session_for(name)
    feeds = {}
    for tensor in request.inputs:
        dtype = np.float32 if tensor.datatype == "FP32" else np.int64
        feeds[tensor.name] = np.array(tensor.data, dtype=dtype).reshape(tensor.shape)
    results = session.run(None, feeds)
    outputs = []
    for meta, value in zip(session.get_outputs(), results):
        outputs.append({
            "name": meta.name,
            "datatype": DTYPES[meta.type][0],
            "shape": list(value.shape),
            "data": value.ravel().tolist(),
        })
    return {"model_name": name, "model_version": "1", "id": request.id, "outputs": outputs}
