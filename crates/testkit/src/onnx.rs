//! ONNX files generated at test time, for models too large to commit.

use prost::Message;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};

/// A float tensor type `[N, width]` with a free batch dimension.
fn batch_of(width: usize) -> Option<pb::TypeProto> {
    float_tensor(vec![
        dimension::Value::DimParam("N".into()),
        dimension::Value::DimValue(width as i64),
    ])
}

/// A float tensor type of the given dimensions.
fn float_tensor(dims: Vec<dimension::Value>) -> Option<pb::TypeProto> {
    let dim = |value| Dimension {
        value: Some(value),
        ..Default::default()
    };
    Some(pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: pb::tensor_proto::DataType::Float as i32,
            shape: Some(pb::TensorShapeProto {
                dim: dims.into_iter().map(dim).collect(),
            }),
        })),
        ..Default::default()
    })
}

/// A model of opset 17 with one graph.
fn model(graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "vatic-testkit".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// Writes `x [N, W] -> y [N, W]`, `y = x * x`, with both dimensions free: requests of
/// different widths cannot share a model run, so the batcher must keep them apart.
pub fn write_square(path: &Path) -> std::io::Result<()> {
    let free = || {
        float_tensor(vec![
            dimension::Value::DimParam("N".into()),
            dimension::Value::DimParam("W".into()),
        ])
    };
    let graph = pb::GraphProto {
        name: "square".into(),
        node: vec![pb::NodeProto {
            input: vec!["x".into(), "x".into()],
            output: vec!["y".into()],
            name: "square".into(),
            op_type: "Mul".into(),
            ..Default::default()
        }],
        input: vec![pb::ValueInfoProto {
            name: "x".into(),
            r#type: free(),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto {
            name: "y".into(),
            r#type: free(),
            ..Default::default()
        }],
        ..Default::default()
    };
    std::fs::write(path, model(graph).encode_to_vec())
}

/// Writes a model of `layers` dense layers, `x [N, width] -> y [N, width]`, each a `MatMul` by
/// its own `width x width` float weight followed by a `Relu`. Its file is about
/// `layers * width * width * 4` bytes, so loading it takes a while: the large model of tests
/// that check serving goes on while another version loads.
pub fn write_dense_chain(path: &Path, width: usize, layers: usize) -> std::io::Result<()> {
    let mut nodes = Vec::new();
    let mut weights = Vec::new();
    let mut previous = "x".to_string();
    // Small values, so outputs stay finite; each layer's are rotated so none is a copy.
    let mut data: Vec<u8> = (0..width * width)
        .flat_map(|i| ((i % 97) as f32 / (97.0 * width as f32)).to_le_bytes())
        .collect();
    for layer in 0..layers {
        let weight = format!("w{layer}");
        data.rotate_left(4);
        weights.push(pb::TensorProto {
            name: weight.clone(),
            dims: vec![width as i64, width as i64],
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: data.clone(),
            ..Default::default()
        });
        let product = format!("m{layer}");
        let output = if layer + 1 == layers {
            "y".to_string()
        } else {
            format!("h{layer}")
        };
        nodes.push(pb::NodeProto {
            input: vec![previous.clone(), weight],
            output: vec![product.clone()],
            name: format!("matmul{layer}"),
            op_type: "MatMul".into(),
            ..Default::default()
        });
        nodes.push(pb::NodeProto {
            input: vec![product],
            output: vec![output.clone()],
            name: format!("relu{layer}"),
            op_type: "Relu".into(),
            ..Default::default()
        });
        previous = output;
    }
    let graph = pb::GraphProto {
        name: "dense_chain".into(),
        node: nodes,
        initializer: weights,
        input: vec![pb::ValueInfoProto {
            name: "x".into(),
            r#type: batch_of(width),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto {
            name: "y".into(),
            r#type: batch_of(width),
            ..Default::default()
        }],
        ..Default::default()
    };
    std::fs::write(path, model(graph).encode_to_vec())
}

/// What [`write_outputs_relabelled`] declares of each graph output's shape.
#[derive(Debug, Clone, Copy)]
pub enum OutputShapes<'a> {
    /// The first dimension named so, as exporters name an output's own dimensions.
    FirstNamed(&'a str),
    /// The first dimension fixed at this size, as a trace with that many rows declares it.
    FirstFixed(i64),
    /// No shape at all.
    Undeclared,
}

/// Copies the model at `src` to `dst` with its graph outputs' shapes declared as `shapes` says.
pub fn write_outputs_relabelled(
    src: &Path,
    dst: &Path,
    shapes: OutputShapes<'_>,
) -> std::io::Result<()> {
    let bytes = std::fs::read(src)?;
    let mut model = pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let graph = model.graph.as_mut().expect("a graph");
    for output in &mut graph.output {
        let Some(pb::type_proto::Value::TensorType(tensor)) =
            output.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        let first = match shapes {
            OutputShapes::FirstNamed(name) => dimension::Value::DimParam(name.into()),
            OutputShapes::FirstFixed(size) => dimension::Value::DimValue(size),
            OutputShapes::Undeclared => {
                tensor.shape = None;
                continue;
            }
        };
        if let Some(dim) = tensor.shape.as_mut().and_then(|s| s.dim.first_mut()) {
            dim.value = Some(first);
        }
    }
    std::fs::write(dst, model.encode_to_vec())
}

/// How [`write_rows_collapsed`]'s model turns `x [N, 4]` into `y [1, 4]`.
#[derive(Debug, Clone, Copy)]
pub enum Collapse {
    /// `ReduceSum` over the rows: runs on any number of rows, always answers one.
    Sum,
    /// `Reshape` to `[1, 4]`: runs on one row only, as a trace with one row fixes it.
    Reshape,
}

/// Writes `x [N, 4] -> y [1, 4]`: a free batch dimension on the input that the output does not
/// keep, collapsed as `how` says.
pub fn write_rows_collapsed(path: &Path, how: Collapse) -> std::io::Result<()> {
    let (op, constant) = match how {
        Collapse::Sum => ("ReduceSum", vec![0i64]),
        Collapse::Reshape => ("Reshape", vec![1i64, 4]),
    };
    let graph = pb::GraphProto {
        name: "rows_collapsed".into(),
        node: vec![pb::NodeProto {
            input: vec!["x".into(), "c".into()],
            output: vec!["y".into()],
            name: "collapse".into(),
            op_type: op.into(),
            ..Default::default()
        }],
        initializer: vec![pb::TensorProto {
            name: "c".into(),
            dims: vec![constant.len() as i64],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: constant.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }],
        input: vec![pb::ValueInfoProto {
            name: "x".into(),
            r#type: batch_of(4),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto {
            name: "y".into(),
            r#type: float_tensor(vec![
                dimension::Value::DimValue(1),
                dimension::Value::DimValue(4),
            ]),
            ..Default::default()
        }],
        ..Default::default()
    };
    std::fs::write(path, model(graph).encode_to_vec())
}
