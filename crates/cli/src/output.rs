//! Printing results: a table for people, or JSON for programs.

use clap::ValueEnum;
use comfy_table::{presets, CellAlignment, Table};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use vatic_schema::{DataType, InferResponse, Tensor};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables for people (for `infer`, one line per batch row)
    Table,
    /// JSON for programs (for `infer`, the V2 response as the server writes it)
    Json,
}

/// Prints `value` as indented JSON, the form `--output json` prints every answer in.
pub fn print_json(value: &impl Serialize, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// An empty table in the house style, with `header`.
pub fn table<I: ToString>(header: impl IntoIterator<Item = I>) -> Table {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED.with_rounded_corners());
    table.set_header(header.into_iter().map(|h| h.to_string()));
    table
}

/// Right-aligns the columns at `columns` (numbers).
pub fn align_right(table: &mut Table, columns: &[usize]) {
    for (i, column) in table.column_iter_mut().enumerate() {
        if columns.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A byte count for people: `1234` -> `1.2 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Prints an inference response to `out`.
pub fn print(
    response: &InferResponse,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => {
            writeln!(out, "{}", vatic_schema::v2::response_json(response, true))?;
        }
        OutputFormat::Table => {
            for (title, table) in response_tables(response) {
                if let Some(title) = title {
                    writeln!(out, "{title}:")?;
                }
                writeln!(out, "{table}")?;
            }
        }
    }
    Ok(())
}

/// The response as tables: one table when every output has the same number of rows (the first
/// dim), else one titled table per output.
pub fn response_tables(response: &InferResponse) -> Vec<(Option<&str>, Table)> {
    let rows: Vec<usize> = response.outputs.iter().map(row_count).collect();
    if rows.windows(2).all(|w| w[0] == w[1]) {
        let outputs: Vec<&Tensor> = response.outputs.iter().collect();
        return vec![(
            None,
            rows_table(&outputs, rows.first().copied().unwrap_or(0)),
        )];
    }
    response
        .outputs
        .iter()
        .zip(rows)
        .map(|(t, n)| (Some(t.name.as_str()), rows_table(&[t], n)))
        .collect()
}

/// Rows of an output: its first dim; a scalar is one row.
fn row_count(t: &Tensor) -> usize {
    t.shape.first().map_or(1, |n| *n as usize)
}

/// A `row` column, then per output one column if it has one value per row, else one per element
/// (`name[i]`, flat row-major within the row).
fn rows_table(outputs: &[&Tensor], rows: usize) -> Table {
    let mut header = vec!["row".to_string()];
    let mut numeric = vec![true];
    let columns: Vec<(Vec<Value>, usize)> = outputs
        .iter()
        .map(|t| {
            let values = t.json_values();
            let per_row = match rows {
                0 => t.shape.iter().skip(1).product::<u64>() as usize,
                n => values.len() / n,
            };
            if per_row == 1 {
                header.push(t.name.clone());
            } else {
                header.extend((0..per_row).map(|i| format!("{}[{i}]", t.name)));
            }
            numeric.extend(std::iter::repeat_n(t.datatype != DataType::Bytes, per_row));
            (values, per_row)
        })
        .collect();
    let mut table = table(header);
    for row in 0..rows {
        let mut cells = vec![row.to_string()];
        for (values, per_row) in &columns {
            let start = row * per_row;
            cells.extend(values[start..start + per_row].iter().map(cell_text));
        }
        table.add_row(cells);
    }
    for (column, numeric) in table.column_iter_mut().zip(numeric) {
        if numeric {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vatic_schema::TensorData;

    fn response() -> InferResponse {
        InferResponse {
            model_name: "m".into(),
            outputs: vec![
                Tensor::new(
                    "p",
                    DataType::Fp32,
                    vec![2, 2],
                    TensorData::from_values(&[0.25f32, 0.75, 1.0, 0.0]),
                )
                .unwrap(),
                Tensor::new(
                    "label",
                    DataType::Int64,
                    vec![2],
                    TensorData::from_values(&[1i64, 0]),
                )
                .unwrap(),
            ],
            ..Default::default()
        }
    }

    fn printed(r: &InferResponse, format: OutputFormat) -> String {
        let mut out = Vec::new();
        print(r, format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn table_has_a_column_per_element_or_per_output() {
        let text = printed(&response(), OutputFormat::Table);
        let lines: Vec<&str> = text.lines().collect();
        let cells = |line: &str| -> Vec<String> {
            line.split(['│', '┆'])
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        };
        assert_eq!(cells(lines[1]), ["row", "p[0]", "p[1]", "label"], "{text}");
        assert_eq!(cells(lines[3]), ["0", "0.25", "0.75", "1"], "{text}");
        assert_eq!(cells(lines[4]), ["1", "1.0", "0.0", "0"], "{text}");
    }

    #[test]
    fn outputs_of_different_row_counts_get_a_table_each() {
        let mut r = response();
        r.outputs[1] = Tensor::new(
            "count",
            DataType::Int32,
            vec![],
            TensorData::from_values(&[7i32]),
        )
        .unwrap();
        let tables = response_tables(&r);
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[1].0, Some("count"));
        assert!(tables[1].1.to_string().contains('7'));
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn json_is_the_v2_response_form() {
        let v: Value = serde_json::from_str(&printed(&response(), OutputFormat::Json)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model_name": "m",
                "outputs": [
                    {"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 1.0, 0.0]},
                    {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}
                ]
            })
        );
    }
}
