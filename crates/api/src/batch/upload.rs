//! A job's input file as it arrives: cut into lines, each checked for syntax (a file that cannot
//! be read is refused with the number of the line at fault), and gathered into chunks that are
//! stored as they fill. Only the chunk being filled is held in memory.

use super::rows::csv_fields;
use vatic_schema::batch::FileFormat;

/// Rows gathered to be stored together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its first row (1-based).
    pub first_row: i64,
    /// Its rows.
    pub rows: i64,
    /// Its lines, each with its end.
    pub data: Vec<u8>,
}

/// Why a file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A line is not what the format says.
    #[error("line {line}: {message}")]
    Line {
        /// Its number, from 1.
        line: u64,
        /// What is wrong with it.
        message: String,
    },
    /// A CSV file without a header row.
    #[error("the CSV file is empty: it needs a header row naming the input's columns")]
    NoHeader,
}

/// Cuts a file into checked lines and chunks.
pub struct Splitter {
    format: FileFormat,
    chunk_rows: usize,
    chunk_bytes: usize,
    max_line: usize,
    /// The start of a line whose end has not arrived.
    partial: Vec<u8>,
    /// Lines seen, blank ones included.
    line: u64,
    /// Rows seen.
    rows: i64,
    /// CSV: the header's columns, once read.
    header: Option<Vec<String>>,
    chunk: Chunk,
}

impl Splitter {
    /// A splitter of `format` files into chunks of at most `chunk_rows` rows and about
    /// `chunk_bytes` bytes; a line longer than `max_line` bytes is refused.
    pub fn new(
        format: FileFormat,
        chunk_rows: usize,
        chunk_bytes: usize,
        max_line: usize,
    ) -> Splitter {
        Splitter {
            format,
            chunk_rows,
            chunk_bytes,
            max_line,
            partial: Vec::new(),
            line: 0,
            rows: 0,
            header: None,
            chunk: Chunk {
                first_row: 1,
                rows: 0,
                data: Vec::new(),
            },
        }
    }

    /// CSV: the header's column names, once its line has arrived.
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    /// Rows read so far.
    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// Takes the next bytes of the file; returns the chunks they filled.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<Chunk>, SplitError> {
        let mut full = Vec::new();
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            let (head, rest) = bytes.split_at(end);
            bytes = &rest[1..];
            if self.partial.is_empty() {
                self.take_line(head, &mut full)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.take_line(&line, &mut full)?;
            }
        }
        if self.partial.len() + bytes.len() > self.max_line {
            return Err(self.too_long(self.line + 1));
        }
        self.partial.extend_from_slice(bytes);
        Ok(full)
    }

    /// Ends the file: takes a last line without an end, and returns the last chunks.
    pub fn finish(&mut self) -> Result<Vec<Chunk>, SplitError> {
        let mut full = Vec::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.take_line(&line, &mut full)?;
        }
        if self.format == FileFormat::Csv && self.header.is_none() {
            return Err(SplitError::NoHeader);
        }
        if self.chunk.rows > 0 {
            full.push(self.cut());
        }
        Ok(full)
    }

    fn too_long(&self, line: u64) -> SplitError {
        SplitError::Line {
            line,
            message: format!(
                "longer than {} bytes, the most a row may be (max_body_bytes)",
                self.max_line
            ),
        }
    }

    fn cut(&mut self) -> Chunk {
        let next = self.rows + 1;
        std::mem::replace(
            &mut self.chunk,
            Chunk {
                first_row: next,
                rows: 0,
                data: Vec::new(),
            },
        )
    }

    fn take_line(&mut self, line: &[u8], full: &mut Vec<Chunk>) -> Result<(), SplitError> {
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line {
            return Err(self.too_long(self.line));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let at = self.line;
        let bad = |message: String| SplitError::Line { line: at, message };
        match self.format {
            FileFormat::Jsonl => {
                serde_json::from_slice::<serde::de::IgnoredAny>(line)
                    .map_err(|e| bad(format!("not JSON: {e}")))?;
            }
            FileFormat::Csv => {
                let fields = csv_fields(line).map_err(bad)?;
                match &self.header {
                    None => {
                        if fields.iter().any(|f| f.trim().is_empty()) {
                            return Err(bad("the header row has an empty column name".into()));
                        }
                        self.header = Some(fields.iter().map(|f| f.trim().to_string()).collect());
                        return Ok(());
                    }
                    Some(header) if header.len() != fields.len() => {
                        return Err(bad(format!(
                            "{} values; the header has {} columns",
                            fields.len(),
                            header.len()
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        self.rows += 1;
        self.chunk.rows += 1;
        self.chunk.data.extend_from_slice(line);
        self.chunk.data.push(b'\n');
        if self.chunk.rows as usize >= self.chunk_rows || self.chunk.data.len() >= self.chunk_bytes
        {
            full.push(self.cut());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(format: FileFormat, pieces: &[&[u8]], rows: usize) -> Result<Vec<Chunk>, SplitError> {
        let mut s = Splitter::new(format, rows, 1 << 20, 64);
        let mut chunks = Vec::new();
        for p in pieces {
            chunks.extend(s.feed(p)?);
        }
        chunks.extend(s.finish()?);
        Ok(chunks)
    }

    #[test]
    fn lines_cut_anywhere_make_the_same_chunks() {
        let file = b"[1]\r\n\n[2]\n  \n[3]\n[4]";
        let whole = split(FileFormat::Jsonl, &[file], 2).unwrap();
        assert_eq!(
            whole,
            vec![
                Chunk {
                    first_row: 1,
                    rows: 2,
                    data: b"[1]\n[2]\n".to_vec()
                },
                Chunk {
                    first_row: 3,
                    rows: 2,
                    data: b"[3]\n[4]\n".to_vec()
                },
            ]
        );
        for at in 0..file.len() {
            let (a, b) = file.split_at(at);
            assert_eq!(
                split(FileFormat::Jsonl, &[a, b], 2).unwrap(),
                whole,
                "cut at {at}"
            );
        }
        let bytewise: Vec<&[u8]> = file.chunks(1).collect();
        assert_eq!(split(FileFormat::Jsonl, &bytewise, 2).unwrap(), whole);
    }

    #[test]
    fn a_file_that_cannot_be_read_is_refused_with_its_line() {
        let e = split(FileFormat::Jsonl, &[b"[1]\n\n{nope\n[3]\n"], 10).unwrap_err();
        assert!(e.to_string().starts_with("line 3: not JSON"), "{e}");
        let e = split(FileFormat::Csv, &[b"a,b\n1,2\n1,2,3\n"], 10).unwrap_err();
        assert_eq!(e.to_string(), "line 3: 3 values; the header has 2 columns");
        let e = split(FileFormat::Csv, &[b"a,\n1,2\n"], 10).unwrap_err();
        assert!(e.to_string().contains("empty column name"), "{e}");
        assert_eq!(
            split(FileFormat::Csv, &[b"\n\n"], 10).unwrap_err(),
            SplitError::NoHeader
        );
        let long = [b'1'; 65];
        let e = split(FileFormat::Jsonl, &[b"[1]\n", &long], 10).unwrap_err();
        assert!(
            e.to_string().starts_with("line 2: longer than 64 bytes"),
            "{e}"
        );
    }

    #[test]
    fn a_csv_header_is_not_a_row() {
        let mut s = Splitter::new(FileFormat::Csv, 10, 1 << 20, 64);
        assert!(s.feed(b" a , b\n1,2\n3,4\n").unwrap().is_empty());
        assert_eq!(s.header().unwrap(), ["a", "b"]);
        let last = s.finish().unwrap().pop().unwrap();
        assert_eq!((last.first_row, last.rows), (1, 2));
        assert_eq!(last.data, b"1,2\n3,4\n");
        assert_eq!(s.rows(), 2);
    }
}
