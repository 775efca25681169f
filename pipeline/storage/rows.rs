//! Small Arrow helpers every stage that holds rows in memory shares.
//!
//! Owns: reading a column as text or as its known type, and splitting a batch by a mask. Must not: know any
//! table; callers name their columns.

use arrow::array::{make_array, Array, BooleanArray, StringArray};
use arrow::compute::{cast, filter_record_batch, not};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

/// The column `name` of `batch` as text (`None`: no such column, or not castable).
pub fn text_column(batch: &RecordBatch, name: &str) -> Option<StringArray> {
    text(batch.column_by_name(name)?)
}

/// The column `name` of `batch` as the array type `T` the caller's table gives it. Panics
/// when there is no such column of that type: the table's schema is broken, not the input.
pub fn typed_column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    try_typed_column(batch, name).unwrap_or_else(|| {
        panic!(
            "rows with the schema {} have no column {name} of type {}",
            batch.schema(),
            std::any::type_name::<T>()
        )
    })
}

/// The column `name` of `batch` as the array type `T`, if it has one: for rows read from a
/// table a caller does not vouch for (it answers with an error, not a panic).
pub fn try_typed_column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Option<&'a T> {
    batch.column_by_name(name)?.as_any().downcast_ref::<T>()
}

/// An array as text (`None`: not castable): any string type, dictionaries included.
pub fn text(array: &dyn Array) -> Option<StringArray> {
    if let Some(strings) = array.as_any().downcast_ref::<StringArray>() {
        return Some(strings.clone());
    }
    let text = cast(&make_array(array.to_data()), &DataType::Utf8).ok()?;
    text.as_any().downcast_ref::<StringArray>().cloned()
}

/// The rows of `batch` that `mask` selects, and the others (`None`: no such row; a side
/// holding every row is `batch` itself, not a copy).
pub fn split_batch(batch: &RecordBatch, mask: &BooleanArray) -> (Option<RecordBatch>, Option<RecordBatch>) {
    let take = |mask: &BooleanArray| filter_record_batch(batch, mask).expect("a mask of the batch's length");
    match mask.true_count() {
        0 => (None, (batch.num_rows() > 0).then(|| batch.clone())),
        n if n == batch.num_rows() => (Some(batch.clone()), None),
        _ => (Some(take(mask)), Some(take(&not(mask).expect("a mask")))),
    }
}
