//! `vaticctl infer`: one inference request, from a V2 JSON body or from CSV rows.

mod rows;

use crate::client::{Client, ModelRef};
use crate::output;
use crate::GlobalArgs;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{ArgGroup, Args};
use std::io::Read;
use std::path::{Path, PathBuf};
use vatic_schema::v2::{self, Encoded};
use vatic_schema::{InferRequest, ModelMetadata, TensorMetadata};

/// Arguments of `vaticctl infer`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("request").required(true).args(["json", "csv"])))]
pub struct InferArgs {
    /// Model name
    pub model: String,
    /// Model version [default: the newest the server has]
    #[arg(long, value_name = "V")]
    pub model_version: Option<String>,
    /// V2 inference request body to send ("-" reads standard input)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Rows of numbers, one batch row per line, after an optional header line ("-" reads
    /// standard input)
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// With --csv: the model input the rows fill, when the model has more than one
    #[arg(long, value_name = "NAME", conflicts_with = "json")]
    pub input: Option<String>,
    /// Send inputs and receive outputs with the binary tensor extension instead of JSON
    #[arg(long)]
    pub binary: bool,
}

/// Runs `vaticctl infer`: builds the request, sends it and prints the response.
pub fn run(global: &GlobalArgs, args: &InferArgs) -> anyhow::Result<()> {
    let client = Client::new(global)?;
    let model = ModelRef {
        name: &args.model,
        version: args.model_version.as_deref(),
    };
    let request = match (&args.json, &args.csv) {
        (Some(path), _) => json_request(&RequestFile::read(path)?, args.binary)?,
        (None, Some(path)) => {
            let file = RequestFile::read(path)?;
            let metadata = client.model_metadata(model)?;
            let input = pick_input(&metadata, args.input.as_deref())?;
            csv_request(&file, input, args.binary)?
        }
        (None, None) => unreachable!("clap requires --json or --csv"),
    };
    let response = client.infer(model, request)?;
    output::print(&response, global.output, &mut std::io::stdout().lock())
}

/// The contents of a file named on the command line, and how to name it in messages.
#[derive(Debug)]
pub struct RequestFile {
    /// The path as given, or `standard input`.
    pub name: String,
    /// The contents.
    pub bytes: Bytes,
}

impl RequestFile {
    /// Reads `path`; `-` is standard input.
    pub fn read(path: &Path) -> anyhow::Result<RequestFile> {
        if path == Path::new("-") {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read standard input")?;
            return Ok(RequestFile {
                name: "standard input".into(),
                bytes: bytes.into(),
            });
        }
        let name = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {name}"))?;
        Ok(RequestFile {
            name,
            bytes: bytes.into(),
        })
    }
}

/// A V2 request body from `file`: checked, then sent as it is, or re-encoded with every input in
/// the binary section and every output asked for in binary.
pub fn json_request(file: &RequestFile, binary: bool) -> anyhow::Result<Encoded> {
    let mut request = v2::decode_request(&file.bytes, None)
        .with_context(|| format!("{} is not a V2 inference request", file.name))?;
    if !binary {
        return Ok(Encoded {
            body: file.bytes.to_vec(),
            header_length: None,
        });
    }
    request
        .parameters
        .insert(v2::BINARY_DATA_OUTPUT.into(), true.into());
    Ok(v2::encode_request(&request, true))
}

/// A request with one input, `input`, filled from the CSV rows of `file`.
pub fn csv_request(
    file: &RequestFile,
    input: &TensorMetadata,
    binary: bool,
) -> anyhow::Result<Encoded> {
    let tensor = rows::read_tensor(&file.name, &file.bytes, input)?;
    let mut request = InferRequest {
        inputs: vec![tensor],
        ..Default::default()
    };
    if binary {
        request
            .parameters
            .insert(v2::BINARY_DATA_OUTPUT.into(), true.into());
    }
    Ok(v2::encode_request(&request, binary))
}

/// The input CSV rows fill: the one named by `--input`, or the model's only input.
pub fn pick_input<'m>(
    metadata: &'m ModelMetadata,
    wanted: Option<&str>,
) -> anyhow::Result<&'m TensorMetadata> {
    let names = || {
        metadata
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let model = &metadata.name;
    match (wanted, metadata.inputs.as_slice()) {
        (Some(name), inputs) => inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            anyhow!(
                "model '{model}' has no input '{name}'; its inputs: {}",
                names()
            )
        }),
        (None, [only]) => Ok(only),
        (None, []) => bail!("model '{model}' has no inputs"),
        (None, inputs) => bail!(
            "model '{model}' has {} inputs ({}): name the one the CSV rows fill with --input NAME",
            inputs.len(),
            names()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vatic_schema::DataType;

    fn metadata(inputs: &[&str]) -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            versions: vec!["1".into()],
            platform: "onnx_onnxv1".into(),
            inputs: inputs
                .iter()
                .map(|n| TensorMetadata {
                    name: n.to_string(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, 2],
                })
                .collect(),
            outputs: Vec::new(),
        }
    }

    #[test]
    fn the_only_input_is_picked_without_a_name() {
        assert_eq!(pick_input(&metadata(&["x"]), None).unwrap().name, "x");
    }

    #[test]
    fn several_inputs_need_a_name_and_the_error_lists_them() {
        let m = metadata(&["a", "b"]);
        let err = pick_input(&m, None).unwrap_err().to_string();
        assert!(
            err.contains("2 inputs (a, b)") && err.contains("--input"),
            "{err}"
        );
        assert_eq!(pick_input(&m, Some("b")).unwrap().name, "b");
        let err = pick_input(&m, Some("c")).unwrap_err().to_string();
        assert!(
            err.contains("no input 'c'") && err.contains("a, b"),
            "{err}"
        );
    }

    #[test]
    fn binary_json_request_asks_for_binary_outputs() {
        let file = RequestFile {
            name: "r.json".into(),
            bytes: Bytes::from_static(
                br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2]}]}"#,
            ),
        };
        let plain = json_request(&file, false).unwrap();
        assert_eq!(plain.body, file.bytes.to_vec());
        assert_eq!(plain.header_length, None);

        let binary = json_request(&file, true).unwrap();
        let n = binary
            .header_length
            .expect("binary data follows the header");
        assert_eq!(binary.body.len(), n + 8);
        let decoded = v2::decode_request(&Bytes::from(binary.body), Some(n)).unwrap();
        assert!(decoded.wants_binary("anything"));
        assert_eq!(
            decoded.inputs[0].data.to_f64(DataType::Fp32),
            vec![1.0, 2.0]
        );
    }

    #[test]
    fn a_bad_json_file_is_named() {
        let file = RequestFile {
            name: "r.json".into(),
            bytes: Bytes::from_static(b"{not json"),
        };
        let err = format!("{:#}", json_request(&file, false).unwrap_err());
        assert!(
            err.starts_with("r.json is not a V2 inference request"),
            "{err}"
        );
    }
}
