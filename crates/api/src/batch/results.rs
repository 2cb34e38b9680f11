//! A job's results read back in the order of its input, a few chunks at a time: JSON lines as
//! they are stored, or CSV with one column per output.

use super::Layout;
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::Value;
use vatic_schema::batch::FileFormat;
use vatic_store::Store;

/// Chunks read from the database at a time.
const CHUNKS_PER_READ: u32 = 8;

/// The results of `job`, in input order: a row whose chunk has not run yet is not there.
pub fn stream(
    store: Store,
    job: String,
    format: FileFormat,
    layout: Layout,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let header = (format == FileFormat::Csv).then(|| csv_header(&layout));
    futures_util::stream::unfold((-1i64, header, false), move |(after, header, ended)| {
        let (store, job, layout) = (store.clone(), job.clone(), layout.clone());
        async move {
            if let Some(header) = header {
                return Some((Ok(Bytes::from(header)), (after, None, ended)));
            }
            if ended {
                return None;
            }
            let chunks = match store.chunk_results(&job, after, CHUNKS_PER_READ).await {
                Ok(chunks) => chunks,
                Err(e) => {
                    tracing::warn!(job = %job, error = %e, "a job's results could not be read; the answer is cut short");
                    return Some((
                        Err(std::io::Error::other(e.to_string())),
                        (after, None, true),
                    ));
                }
            };
            let last = chunks.last().map(|c| c.seq)?;
            let mut out = Vec::new();
            for results in chunks.iter().filter_map(|c| c.results.as_deref()) {
                match format {
                    FileFormat::Jsonl => out.extend_from_slice(results),
                    FileFormat::Csv => csv_rows(&layout, results, &mut out),
                }
            }
            let more = chunks.len() == CHUNKS_PER_READ as usize;
            Some((Ok(Bytes::from(out)), (last, None, !more)))
        }
    })
}

/// The CSV results' header: the row, the version that answered, each output, the error.
fn csv_header(layout: &Layout) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let columns = ["row", "version"]
        .into_iter()
        .chain(layout.outputs.iter().map(String::as_str))
        .chain(["error"]);
    writer.write_record(columns).expect("writing to memory");
    writer.into_inner().expect("writing to memory")
}

#[derive(Deserialize)]
struct Line {
    row: i64,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    outputs: Vec<Output>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Output {
    name: String,
    data: Vec<Value>,
}

/// Appends the CSV rows of a chunk's JSON result lines to `out`: an output of one value is
/// that value, one of several a JSON array.
fn csv_rows(layout: &Layout, results: &[u8], out: &mut Vec<u8>) {
    let mut writer = csv::Writer::from_writer(std::mem::take(out));
    for text in super::rows::lines(results) {
        let Ok(line) = serde_json::from_slice::<Line>(text) else {
            continue;
        };
        let mut record = vec![line.row.to_string(), line.version.unwrap_or_default()];
        for name in &layout.outputs {
            let cell = match line.outputs.iter().find(|o| &o.name == name) {
                None => String::new(),
                Some(o) if o.data.len() == 1 => match &o.data[0] {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                },
                Some(o) => Value::Array(o.data.clone()).to_string(),
            };
            record.push(cell);
        }
        record.push(line.error.unwrap_or_default());
        writer.write_record(&record).expect("writing to memory");
    }
    *out = writer.into_inner().expect("writing to memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_results_have_a_column_per_output() {
        let layout = Layout {
            columns: vec![],
            inputs: vec![],
            outputs: vec!["label".into(), "probabilities".into()],
        };
        let mut out = csv_header(&layout);
        let lines = concat!(
            r#"{"row":1,"version":"2","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[1]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.25,0.75]}]}"#,
            "\n",
            r#"{"row":2,"error":"bad, \"very\""}"#,
            "\n"
        );
        csv_rows(&layout, lines.as_bytes(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "row,version,label,probabilities,error\n1,2,1,\"[0.25,0.75]\",\n2,,,,\"bad, \"\"very\"\"\"\n"
        );
    }
}
