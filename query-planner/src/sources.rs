//! Tables for a planner, from files or batches.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
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
    // Strings as offsets and bytes rather than 16-byte views: a column of
    // short ids or codes takes half the memory, and the bounding holds
    // every row of the query (docs/BENCHMARKS.md, issue 30).
    let config = datafusion::prelude::SessionConfig::new().set_bool(
        "datafusion.execution.parquet.schema_force_view_types",
        false,
    );
    let context = SessionContext::new_with_config(config);
    context
        .register_parquet("source", location, ParquetReadOptions::default())
        .await?;
    let listing = context.table_provider("source").await?;
    if !path.is_file() {
        return Ok(listing);
    }
    let rows = row_group_rows(path)?;
    Ok(Arc::new(RowSplit {
        inner: listing,
        rows,
    }))
}

/// The rows of each row group of the Parquet file at `path` (its footer
/// alone is read).
fn row_group_rows(path: &Path) -> Result<Vec<usize>> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: &dyn std::fmt::Display| {
        Error::Policy(format!(
            "{} is not a readable Parquet file: {e}",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(&e))?;
    Ok(reader
        .metadata()
        .row_groups()
        .iter()
        .map(|group| usize::try_from(group.num_rows()).unwrap_or(0))
        .collect())
}

/// One Parquet file scanned in as many partitions as the session has
/// cores, cut by rows rather than by bytes.
///
/// DataFusion cuts a file by byte ranges and gives each row group to the
/// range holding its middle, so a file written as one row group (pandas'
/// and pyarrow's default up to a million rows) is read by one core. Here
/// each partition reads its own rows of the same file, through a Parquet
/// access plan of row selections: whole pages outside a partition's rows
/// are skipped without being decoded. Which partition reads a row is a
/// function of the file alone.
#[derive(Debug)]
struct RowSplit {
    inner: Arc<dyn TableProvider>,
    /// Rows per row group.
    rows: Vec<usize>,
}

/// Below this many rows a file is read by one partition: a second costs
/// more to start than it saves.
const ROWS_WORTH_SPLITTING: usize = 1 << 17;

impl RowSplit {
    /// Each partition's access plan: its share of the rows, in order.
    fn plans(&self, partitions: usize) -> Vec<ParquetAccessPlan> {
        use datafusion::datasource::physical_plan::parquet::RowGroupAccess;
        use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
        let total: usize = self.rows.iter().sum();
        let share = total.div_ceil(partitions);
        (0..partitions)
            .map(|p| {
                let (from, to) = ((p * share).min(total), ((p + 1) * share).min(total));
                let mut start = 0;
                let access = self
                    .rows
                    .iter()
                    .map(|&rows| {
                        let end = start + rows;
                        let (lo, hi) = (from.max(start), to.min(end));
                        let access = if lo >= hi {
                            RowGroupAccess::Skip
                        } else if lo == start && hi == end {
                            RowGroupAccess::Scan
                        } else {
                            let mut selectors = Vec::with_capacity(3);
                            if lo > start {
                                selectors.push(RowSelector::skip(lo - start));
                            }
                            selectors.push(RowSelector::select(hi - lo));
                            if end > hi {
                                selectors.push(RowSelector::skip(end - hi));
                            }
                            RowGroupAccess::Selection(RowSelection::from(selectors))
                        };
                        start = end;
                        access
                    })
                    .collect();
                ParquetAccessPlan::new(access)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl TableProvider for RowSplit {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        use datafusion::datasource::physical_plan::{
            FileGroup, FileScanConfig, FileScanConfigBuilder,
        };
        use datafusion::datasource::source::DataSourceExec;
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        let partitions = state.config().target_partitions();
        let total: usize = self.rows.iter().sum();
        // A cluster's executors would not receive the access plans (they
        // are not serialised), and each would read the whole file.
        let local = state
            .config()
            .get_extension::<crate::nodes::GatherInOnePartition>()
            .is_some();
        if !local || partitions < 2 || total < ROWS_WORTH_SPLITTING || limit.is_some() {
            return Ok(plan);
        }
        let Some(config) = plan
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
            .cloned()
        else {
            return Ok(plan);
        };
        let mut files = config.file_groups.iter().flat_map(FileGroup::iter).cloned();
        let (Some(mut whole), None) = (files.next(), files.next()) else {
            return Ok(plan);
        };
        drop(files);
        whole.range = None;
        let groups = self
            .plans(partitions)
            .into_iter()
            .map(|access| FileGroup::new(vec![whole.clone().with_extension(access)]))
            .collect();
        let config = FileScanConfigBuilder::from(config)
            .with_file_groups(groups)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
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

#[cfg(test)]
mod tests {
    use datafusion::datasource::physical_plan::parquet::RowGroupAccess;

    use super::*;

    /// How many partitions read each row of a file of `rows` per row group.
    fn readers(rows: &[usize], partitions: usize) -> Vec<usize> {
        let split = RowSplit {
            inner: Arc::new(
                MemTable::try_new(Arc::new(arrow::datatypes::Schema::empty()), vec![vec![]])
                    .unwrap(),
            ),
            rows: rows.to_vec(),
        };
        let mut readers = vec![0; rows.iter().sum()];
        for plan in split.plans(partitions) {
            assert_eq!(plan.len(), rows.len(), "one access per row group");
            let mut start = 0;
            for (access, &count) in plan.inner().iter().zip(rows) {
                match access {
                    RowGroupAccess::Skip => {}
                    RowGroupAccess::Scan => (start..start + count).for_each(|r| readers[r] += 1),
                    RowGroupAccess::Selection(selection) => {
                        let mut row = start;
                        for selector in selection.iter() {
                            if !selector.skip {
                                (row..row + selector.row_count).for_each(|r| readers[r] += 1);
                            }
                            row += selector.row_count;
                        }
                        assert_eq!(row, start + count, "a selection covers its row group");
                    }
                }
                start += count;
            }
        }
        readers
    }

    #[test]
    fn every_row_is_read_by_exactly_one_partition() {
        for rows in [
            &[10][..],
            &[3, 4, 5],
            &[0, 7, 0],
            &[1_000_000],
            &[1],
            &[2, 2],
        ] {
            for partitions in 1..=5 {
                let readers = readers(rows, partitions);
                assert!(
                    readers.iter().all(|&n| n == 1),
                    "{rows:?} in {partitions}: {readers:?}"
                );
            }
        }
    }
}
