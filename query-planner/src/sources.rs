//! Tables for a planner, from files or batches.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::future::BoxFuture;

use crate::error::{Error, Result};

/// A Parquet file (or a directory of them), read lazily: a query reads
/// only the columns and row groups it needs.
/// (Boxed, like [`crate::Planner::plan`], so that DataFusion's listing
/// code is compiled once, in this crate.)
pub fn parquet(path: &Path) -> BoxFuture<'_, Result<Arc<dyn TableProvider>>> {
    Box::pin(parquet_inner(path))
}

async fn parquet_inner(path: &Path) -> Result<Arc<dyn TableProvider>> {
    let location = path
        .to_str()
        .ok_or_else(|| Error::Policy(format!("{} is not a UTF-8 path", path.display())))?;
    if !path.exists() {
        return Err(Error::Policy(format!("{} does not exist", path.display())));
    }
    let context = SessionContext::new();
    context
        .register_parquet("source", location, ParquetReadOptions::default())
        .await?;
    Ok(context.table_provider("source").await?)
}

/// Batches already in memory (split in two partitions when large enough,
/// so that execution runs in parallel).
pub fn batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Arc<dyn TableProvider>> {
    let partitions = match batches.as_slice() {
        [one] if one.num_rows() > 1 => {
            let half = one.num_rows() / 2;
            vec![
                vec![one.slice(0, half)],
                vec![one.slice(half, one.num_rows() - half)],
            ]
        }
        _ => vec![batches],
    };
    Ok(Arc::new(MemTable::try_new(schema, partitions)?))
}
