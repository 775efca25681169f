//! The state's tables in memory: a table's rows in segments, the unit the state stores.
//!
//! Owns: the in-memory shape of state tables. Must not: fold or evaluate anything; the
//! jobs layer folds batches into these tables, [`super`] stores and loads them.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

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

/// A state table: its rows in segments, the unit the state stores. A fold rewrites only
/// the segments its batch touches and keeps the others as they are (no copy, no write):
/// - a table with a `day_column` has one segment per day: a fold rewrites the days its
///   new rows fall in and drops the days past the retention;
/// - any other table has a few segments, each key in one of them: a fold rewrites the
///   segments holding a key the batch touches, with the batch's new keys, as one new
///   segment, into which the smallest segments are merged when there are more than
///   `jobs::MAX_KEYED_SEGMENTS`.
///
/// A table has at least one segment (maybe empty), so its schema is always stored.
#[derive(Debug, Clone)]
pub struct StateTable {
    pub schema: SchemaRef,
    pub segments: Vec<Segment>,
}

impl StateTable {
    /// Every row, in one table.
    pub fn table(&self) -> Table {
        Table {
            schema: self.schema.clone(),
            batches: self.segments.iter().flat_map(|s| s.batches.iter().cloned()).collect(),
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
    pub batches: Vec<RecordBatch>,
    /// Where the state stores the segment; `None` until it is committed.
    pub stored: Option<String>,
}

impl Segment {
    pub fn new(day: Option<i64>, batches: Vec<RecordBatch>) -> Self {
        Segment {
            day,
            batches,
            stored: None,
        }
    }

    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}
