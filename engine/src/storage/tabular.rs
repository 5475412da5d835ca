//! Reading and writing whole tables as CSV or Parquet, for the data-steward
//! tools (`cohort anonymize`, `cohort deidentify`).
//!
//! CSV columns are typed by looking at every value: a column is an integer or
//! a float only if every non-empty value parses as one and no integer has a
//! leading zero (so ZIP codes and MRNs stay text); empty cells are nulls.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchReader};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema};

use crate::{Error, Result};

/// The file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format of `path`, from its extension.
    pub fn of(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(Format::Csv),
            Some("parquet") => Ok(Format::Parquet),
            _ => Err(Error::Invalid(format!(
                "{}: unknown table format; use a .csv or .parquet file",
                path.display()
            ))),
        }
    }
}

/// Reads a whole table.
pub fn read(path: &Path) -> Result<RecordBatch> {
    let format = Format::of(path)?;
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    match format {
        Format::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                    .build()?;
            let schema = reader.schema();
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(concat_batches(&schema, &batches)?)
        }
        Format::Csv => read_csv(path, file),
    }
}

fn read_csv(path: &Path, file: File) -> Result<RecordBatch> {
    let bad = |e: arrow::error::ArrowError| Error::Invalid(format!("{}: {e}", path.display()));
    let mut reader = BufReader::new(file);
    let (header, _) = arrow_csv::reader::Format::default()
        .with_header(true)
        .infer_schema(&mut reader, Some(1))
        .map_err(bad)?;
    if header.fields().is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the file has no header row",
            path.display()
        )));
    }
    let text_schema = Arc::new(Schema::new(
        header
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let reader = arrow_csv::ReaderBuilder::new(text_schema.clone())
        .with_header(true)
        .with_batch_size(65_536)
        .build(file)
        .map_err(bad)?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    let text = concat_batches(&text_schema, &batches)?;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in text_schema.fields().iter().zip(text.columns()) {
        let typed = type_column(column);
        fields.push(Field::new(field.name(), typed.data_type().clone(), true));
        columns.push(typed);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The narrowest of Int64, Float64 and Utf8 that holds every value.
fn type_column(column: &ArrayRef) -> ArrayRef {
    let s = column.as_string::<i32>();
    let values = (0..s.len()).filter(|&i| s.is_valid(i)).map(|i| s.value(i));
    let (mut ints, mut floats, mut any) = (true, true, false);
    for v in values {
        any = true;
        let leading_zero = v.len() > 1 && v.starts_with('0') && !v.starts_with("0.");
        ints &= !leading_zero && v.parse::<i64>().is_ok();
        floats &= !leading_zero && v.parse::<f64>().is_ok_and(f64::is_finite);
        if !ints && !floats {
            break;
        }
    }
    let target = match (any, ints, floats) {
        (true, true, _) => DataType::Int64,
        (true, false, true) => DataType::Float64,
        _ => return column.clone(),
    };
    cast(column, &target).unwrap_or_else(|_| column.clone())
}

/// How cohort writes Parquet: Snappy-compressed.
pub fn parquet_properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build()
}

/// Writes a table to `path` (format by extension), replacing it atomically.
pub fn write(path: &Path, batch: &RecordBatch) -> Result<()> {
    let format = Format::of(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = crate::storage::fsutil::temp_in(dir)?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Error::io("opening", tmp.path().to_owned(), e))?;
    match format {
        Format::Csv => {
            let mut w = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .build(file);
            w.write(batch)?;
        }
        Format::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(
                file,
                batch.schema(),
                Some(parquet_properties()),
            )?;
            w.write(batch)?;
            w.close()?;
        }
    }
    crate::storage::fsutil::persist(tmp, path, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_types_keep_leading_zeros_as_text_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(
            &path,
            "age,zip,score,name\n34,02139,1.5,Ann\n90,10027,,Bo\n",
        )
        .unwrap();
        let t = read(&path).unwrap();
        let types: Vec<_> = t
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            [
                DataType::Int64,
                DataType::Utf8,
                DataType::Float64,
                DataType::Utf8
            ]
        );
        assert_eq!(t.column(2).null_count(), 1);
        for ext in ["csv", "parquet"] {
            let out = dir.path().join(format!("out.{ext}"));
            write(&out, &t).unwrap();
            assert_eq!(read(&out).unwrap(), t, "{ext} round trip");
        }
        let err = read(&dir.path().join("t.xlsx")).unwrap_err().to_string();
        assert!(err.contains(".csv or .parquet"), "{err}");
    }
}
