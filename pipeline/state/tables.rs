//! The state's tables in memory: a table's rows in segments, the unit the state stores.
//!
//! Owns: the in-memory shape of state tables. Must not: fold or evaluate anything; the
//! jobs layer folds batches into these tables, [`super`] stores and loads them.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::storage::masked::MaskedRows;

/// Why `batches` cannot be a state table keyed by `keys`: the first key column with nulls
/// and how many (`None` when every key is set). A local fold and a cluster's state sink
/// both refuse such rows with this message.
pub fn null_keys(batches: &[RecordBatch], keys: &[String]) -> Option<String> {
    keys.iter().find_map(|key| {
        let nulls: usize = batches
            .iter()
            .filter_map(|b| b.column_by_name(key))
            .map(|c| c.null_count())
            .sum();
        (nulls > 0).then(|| format!("key column '{key}' is null in {nulls} rows (filter them out in the query)"))
    })
}

/// The rows of one table: a state table, or a stream's events.
#[derive(Debug, Clone)]
pub struct Table {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Table {
    pub fn empty(schema: SchemaRef) -> Self {
        Table {
            schema,
            batches: Vec::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// A state table: its rows in segments, the unit the state stores. A fold writes the rows
/// of the keys its batch touches as new segments after the others, and masks those keys'
/// old rows out of the older segments in memory only ([`MaskedRows`]: neither the files
/// nor the kept rows are copied), so a fold and a commit cost what the batch touched
/// however large the table. In storage a key's row is
/// the one of its newest segment (the jobs layer keeps only that one when it meets a
/// loaded table). A table with a `day_column` has segments of one day each (retention
/// drops whole days); the jobs layer joins segments when a day or a table has too many.
///
/// A table has at least one segment (maybe empty), so its schema is always stored.
#[derive(Debug, Clone)]
pub struct StateTable {
    pub schema: SchemaRef,
    pub segments: Vec<Segment>,
    /// Every key is in one segment only (true once a fold has made it so; a table loaded
    /// from storage may hold older rows of a key in older segments).
    pub exclusive: bool,
}

impl StateTable {
    /// Every row, in one table (masked segments copied).
    pub fn table(&self) -> Table {
        Table {
            schema: self.schema.clone(),
            batches: self.segments.iter().flat_map(|s| s.rows.to_batches()).collect(),
        }
    }

    pub fn rows(&self) -> usize {
        self.segments.iter().map(Segment::rows).sum()
    }
}

/// Rows of a state table stored together.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The day of every row of a day-segmented table; `None`: rows of any day (a table
    /// without a `day_column`, or one stored whole by an older build).
    pub day: Option<i64>,
    /// Its rows; those a later fold replaced are masked out (they stay in the stored file,
    /// where the newer segment's row wins).
    pub rows: MaskedRows,
    /// Where the state stores the segment; `None` until it is committed.
    pub stored: Option<String>,
}

impl Segment {
    pub fn new(day: Option<i64>, batches: Vec<RecordBatch>) -> Self {
        Segment {
            day,
            rows: MaskedRows::from_batches(batches),
            stored: None,
        }
    }

    /// Rows kept.
    pub fn rows(&self) -> usize {
        self.rows.row_count()
    }
}
