//! The difference between two sets of `customer_tags` rows: what entered, exited or changed
//! per customer and tag, and the rows of the next version.
//!
//! A row is identified by `(tag, customer_id)`; it changed when its value, score or family
//! did. Each tag is diffed on its own, with a hash index of its old rows by customer, and
//! the tags are spread over the cores: a publish diffs hundreds of thousands of rows with no
//! query to plan.
//!
//! Owns: the rule of what changed and the as-of a row keeps. Must not: do I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Float64Builder, StringArray, StringBuilder, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use foldhash::fast::RandomState;

use super::customer_tags_schema;
use super::tags::ChangeCounts;
use crate::jobs::Numbering;
use crate::storage::masked::on_all_cores;
use crate::storage::rows::{split_batch, typed_column};

/// The columns of a diff's changes: the feed's columns without versions and as-of.
/// `change` is `entered`, `exited` or `changed`.
pub fn tag_diff_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("customer_id", false),
        text("family", false),
        text("tag", false),
        text("change", false),
        text("old_value", true),
        text("new_value", true),
        Field::new("old_score", DataType::Float64, true),
        Field::new("new_score", DataType::Float64, true),
    ]))
}

/// What changed between two sets of `customer_tags` rows.
pub struct Diff {
    /// One row per customer and tag that entered, exited or changed, with
    /// [`tag_diff_schema`]'s columns.
    pub changes: Vec<RecordBatch>,
    pub counts: ChangeCounts,
    /// The tags with at least one change, sorted.
    pub changed_tags: Vec<String>,
    /// Every new row of a changed tag. A row whose value, score and family did not change
    /// keeps its old `as_of`; the others have the new rows' own.
    pub next_rows: Vec<RecordBatch>,
}

/// The columns of `customer_tags` rows (schema [`customer_tags_schema`]) one side of a
/// diff reads.
struct Side<'a> {
    ids: Vec<&'a StringArray>,
    families: Vec<&'a StringArray>,
    tags: Vec<&'a StringArray>,
    values: Vec<&'a StringArray>,
    scores: Vec<&'a Float64Array>,
    as_ofs: Vec<&'a TimestampMicrosecondArray>,
    /// The rows' customer numbers, when the batches are numbered (a micro-batch's).
    numbers: Option<Vec<UInt32Array>>,
}

impl<'a> Side<'a> {
    fn of(batches: &'a [RecordBatch], numbering: Option<&Numbering>) -> Self {
        Side {
            numbers: numbering.map(|numbering| batches.iter().map(|b| numbering.numbers(b)).collect()),
            ids: batches.iter().map(|b| typed_column(b, "customer_id")).collect(),
            families: batches.iter().map(|b| typed_column(b, "family")).collect(),
            tags: batches.iter().map(|b| typed_column(b, "tag")).collect(),
            values: batches.iter().map(|b| typed_column(b, "value")).collect(),
            scores: batches.iter().map(|b| typed_column(b, "score")).collect(),
            as_ofs: batches.iter().map(|b| typed_column(b, "as_of")).collect(),
        }
    }

    fn id(&self, (b, i): Row) -> &'a str {
        self.ids[b].value(i)
    }

    /// The rows of each tag, of the tags `keep` accepts.
    fn rows_by_tag(&self, keep: impl Fn(&str) -> bool) -> BTreeMap<&'a str, Vec<Row>> {
        let mut by_tag: BTreeMap<&'a str, Vec<Row>> = BTreeMap::new();
        for (b, tags) in self.tags.iter().enumerate() {
            // Rows come in runs of one tag (a job's batch, a partition's file): each run is
            // looked up once.
            let mut i = 0;
            while i < tags.len() {
                let tag = tags.value(i);
                let end = (i + 1..tags.len())
                    .find(|&j| tags.value(j) != tag)
                    .unwrap_or(tags.len());
                if keep(tag) {
                    by_tag.entry(tag).or_default().extend((i..end).map(|k| (b, k)));
                }
                i = end;
            }
        }
        by_tag
    }

    fn score(&self, (b, i): Row) -> Option<f64> {
        let scores = self.scores[b];
        scores.is_valid(i).then(|| scores.value(i))
    }

    /// Whether the row `o` of this side and the row `n` of `new` differ in value, score
    /// or family (scores compare as `IS DISTINCT FROM`: null equals null).
    fn differs(&self, o: Row, new: &Side, n: Row) -> bool {
        let same_score = match (self.score(o), new.score(n)) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b || (a.is_nan() && b.is_nan()),
            _ => false,
        };
        self.values[o.0].value(o.1) != new.values[n.0].value(n.1)
            || self.families[o.0].value(o.1) != new.families[n.0].value(n.1)
            || !same_score
    }
}

/// A row: (batch, index in the batch).
type Row = (usize, usize);

/// Diff `old` (restricted to the tags of `scope`; `None`: all) against `new`. Both hold
/// `customer_tags` rows, at most one per customer and tag. Tags are diffed one by one (each
/// one's index is small), on all cores. With a `numbering` (a micro-batch's rows are
/// numbered), rows are matched by customer number instead of hashing ids.
pub fn diff(old: &[RecordBatch], new: &[RecordBatch], scope: Option<&[String]>, numbering: Option<&Numbering>) -> Diff {
    let (o, n) = (Side::of(old, numbering), Side::of(new, numbering));
    let in_scope = |tag: &str| scope.is_none_or(|tags| tags.iter().any(|t| t == tag));
    let old_by_tag = o.rows_by_tag(in_scope);
    let new_by_tag = n.rows_by_tag(|_| true);
    let tags: BTreeSet<&str> = old_by_tag.keys().chain(new_by_tag.keys()).copied().collect();
    let no_rows = Vec::new();
    let (o, n) = (&o, &n);
    let diffs = on_all_cores(tags.into_iter().collect(), |tag| {
        let old_rows = old_by_tag.get(tag).unwrap_or(&no_rows);
        let new_rows = new_by_tag.get(tag).unwrap_or(&no_rows);
        (old_rows.len() + new_rows.len(), move || {
            diff_tag(o, old_rows, n, new_rows)
        })
    });

    let mut changes = Vec::new();
    let mut counts = ChangeCounts::default();
    let mut changed_tags = Vec::new();
    // The as-of of each new row of a changed tag: the old row's if it did not change.
    let mut as_ofs: Vec<Option<Vec<i64>>> = vec![None; new.len()];
    let mut next_mask: Vec<Vec<bool>> = new.iter().map(|b| vec![false; b.num_rows()]).collect();
    for (tag, tag_diff) in diffs {
        let tag_counts = tag_diff.changes.counts;
        let Some(batch) = tag_diff.changes.finish() else {
            continue;
        };
        changes.push(batch);
        counts.entered += tag_counts.entered;
        counts.exited += tag_counts.exited;
        counts.changed += tag_counts.changed;
        changed_tags.push(tag.to_string());
        for &(b, i) in new_by_tag.get(tag).unwrap_or(&no_rows) {
            next_mask[b][i] = true;
        }
        for ((b, i), (ob, oi)) in tag_diff.unchanged {
            let as_of = as_ofs[b].get_or_insert_with(|| n.as_ofs[b].values().to_vec());
            as_of[i] = o.as_ofs[ob].value(oi);
        }
    }
    let mut next_rows = Vec::new();
    for (b, batch) in new.iter().enumerate() {
        let mask = BooleanArray::from(std::mem::take(&mut next_mask[b]));
        if mask.true_count() == 0 {
            continue;
        }
        let mut columns = batch.columns().to_vec();
        if let Some(as_of) = as_ofs[b].take() {
            let index = batch.schema().index_of("as_of").expect("customer_tags rows");
            columns[index] = Arc::new(TimestampMicrosecondArray::from(as_of).with_timezone("UTC"));
        }
        let batch = RecordBatch::try_new(customer_tags_schema(), columns).expect("customer_tags rows");
        next_rows.push(match mask.true_count() == batch.num_rows() {
            true => batch,
            false => filter_record_batch(&batch, &mask).expect("a mask of the batch's length"),
        });
    }
    Diff {
        changes,
        counts,
        changed_tags,
        next_rows,
    }
}

/// The figures of a table version: its rows, its distinct customers, and its rows per tag
/// and value (the segments).
pub struct Figures {
    pub rows: usize,
    pub customers: usize,
    pub segments: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The figures of the version that `new` makes of `old`: `new`'s rows and, when `scope`
/// names the tags `new` replaces, the rows of `old`'s other tags.
pub fn figures(old: &[RecordBatch], new: &[RecordBatch], scope: Option<&[String]>) -> Figures {
    let (o, n) = (Side::of(old, None), Side::of(new, None));
    let kept = match scope {
        Some(tags) => o.rows_by_tag(|tag| !tags.iter().any(|t| t == tag)),
        None => BTreeMap::new(),
    };
    let rows = new.iter().map(|b| b.num_rows()).sum::<usize>() + kept.values().map(Vec::len).sum::<usize>();
    let mut customers: HashSet<&str, RandomState> = HashSet::with_capacity_and_hasher(rows, RandomState::default());
    let mut segments: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (side, by_tag) in [(&n, n.rows_by_tag(|_| true)), (&o, kept)] {
        for (tag, tag_rows) in by_tag {
            let mut values: HashMap<&str, u64, RandomState> = HashMap::default();
            for &(b, i) in &tag_rows {
                customers.insert(side.ids[b].value(i));
                *values.entry(side.values[b].value(i)).or_default() += 1;
            }
            let segment = segments.entry(tag.to_string()).or_default();
            for (value, count) in values {
                *segment.entry(value.to_string()).or_default() += count;
            }
        }
    }
    Figures {
        rows,
        customers: customers.len(),
        segments,
    }
}

/// What changed in one tag.
struct TagDiff {
    changes: Changes,
    /// (new row, old row) of each customer whose row did not change.
    unchanged: Vec<(Row, Row)>,
}

/// Diff one tag's rows: by customer number where both sides are numbered, else (or when
/// two ids share a number) by customer id.
fn diff_tag(o: &Side, old_rows: &[Row], n: &Side, new_rows: &[Row]) -> TagDiff {
    if let (Some(old_numbers), Some(new_numbers)) = (&o.numbers, &n.numbers) {
        let by_number = diff_by_key(
            (o, old_rows, |(b, i): Row| old_numbers[b].value(i)),
            (n, new_rows, |(b, i): Row| new_numbers[b].value(i)),
            true,
        );
        if let Ok(diff) = by_number {
            return diff;
        }
    }
    match diff_by_key((o, old_rows, |row| o.id(row)), (n, new_rows, |row| n.id(row)), false) {
        Ok(diff) => diff,
        Err(SharedKey) => unreachable!("matching by id is not strict"),
    }
}

/// Two customers of one tag with one number (the numbering hashes ids).
struct SharedKey;

/// Diff one tag's old and new rows (each side with the key of a row), matched by key.
/// `strict`: the key may be shared by two customers (a number), so a key met twice among
/// the old rows, or a matched pair of two customers, is an error; else (an id) an old
/// row's key is its customer's and a later row of one key replaces an earlier one.
fn diff_by_key<K: std::hash::Hash + Eq>(
    (o, old_rows, old_key): (&Side, &[Row], impl Fn(Row) -> K),
    (n, new_rows, new_key): (&Side, &[Row], impl Fn(Row) -> K),
    strict: bool,
) -> Result<TagDiff, SharedKey> {
    let mut by_customer: HashMap<K, Row, RandomState> =
        HashMap::with_capacity_and_hasher(old_rows.len(), RandomState::default());
    for &row in old_rows {
        if by_customer.insert(old_key(row), row).is_some() && strict {
            return Err(SharedKey);
        }
    }
    let mut changes = Changes::default();
    let mut unchanged = Vec::with_capacity(new_rows.len());
    for &row in new_rows {
        match by_customer.remove(&new_key(row)) {
            None => changes.push(Change::Entered, None, Some((n, row))),
            Some(old) if strict && o.id(old) != n.id(row) => return Err(SharedKey),
            Some(old) if o.differs(old, n, row) => changes.push(Change::Changed, Some((o, old)), Some((n, row))),
            Some(old) => unchanged.push((row, old)),
        }
    }
    let mut exited: Vec<Row> = by_customer.into_values().collect();
    exited.sort_unstable();
    for row in exited {
        changes.push(Change::Exited, Some((o, row)), None);
    }
    Ok(TagDiff { changes, unchanged })
}

/// The rows of `rows` whose tag is not one of `tags`.
pub fn without_tags(rows: &[RecordBatch], tags: &[String]) -> Vec<RecordBatch> {
    rows.iter()
        .filter_map(|batch| split_by_tags(batch, |tag| tags.iter().any(|t| t == tag)).1)
        .collect()
}

/// The rows of `batch` whose tag `of` accepts, and the others (`None`: no such row).
pub fn split_by_tags(batch: &RecordBatch, of: impl Fn(&str) -> bool) -> (Option<RecordBatch>, Option<RecordBatch>) {
    split_batch(batch, &tag_mask(batch, of))
}

/// Which rows of `batch` have a tag that `of` accepts.
pub fn tag_mask(batch: &RecordBatch, of: impl Fn(&str) -> bool) -> BooleanArray {
    let tags = typed_column::<StringArray>(batch, "tag");
    // Rows come in runs of one tag: each run is judged once.
    let mut mask = Vec::with_capacity(batch.num_rows());
    let mut last: Option<(&str, bool)> = None;
    for tag in tags.iter() {
        let tag = tag.unwrap_or_default();
        let accepted = match last {
            Some((previous, accepted)) if previous == tag => accepted,
            _ => of(tag),
        };
        last = Some((tag, accepted));
        mask.push(accepted);
    }
    BooleanArray::from(mask)
}

#[derive(Clone, Copy)]
enum Change {
    Entered,
    Exited,
    Changed,
}

/// The changed rows, built column by column.
#[derive(Default)]
struct Changes {
    customer_id: StringBuilder,
    family: StringBuilder,
    tag: StringBuilder,
    change: StringBuilder,
    old_value: StringBuilder,
    new_value: StringBuilder,
    old_score: Float64Builder,
    new_score: Float64Builder,
    counts: ChangeCounts,
}

impl Changes {
    /// One change; the key and family come from the new row when there is one.
    fn push(&mut self, change: Change, old: Option<(&Side, Row)>, new: Option<(&Side, Row)>) {
        let (side, (b, i)) = new.or(old).expect("a change has a row on one side at least");
        self.customer_id.append_value(side.ids[b].value(i));
        self.family.append_value(side.families[b].value(i));
        self.tag.append_value(side.tags[b].value(i));
        let (name, count) = match change {
            Change::Entered => ("entered", &mut self.counts.entered),
            Change::Exited => ("exited", &mut self.counts.exited),
            Change::Changed => ("changed", &mut self.counts.changed),
        };
        self.change.append_value(name);
        *count += 1;
        for (row, value, score) in [
            (old, &mut self.old_value, &mut self.old_score),
            (new, &mut self.new_value, &mut self.new_score),
        ] {
            match row {
                Some((side, (b, i))) => {
                    value.append_value(side.values[b].value(i));
                    score.append_option(side.score((b, i)));
                }
                None => {
                    value.append_null();
                    score.append_null();
                }
            }
        }
    }

    /// The changes as one batch, if there are any.
    fn finish(mut self) -> Option<RecordBatch> {
        if self.counts.total() == 0 {
            return None;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.customer_id.finish()),
            Arc::new(self.family.finish()),
            Arc::new(self.tag.finish()),
            Arc::new(self.change.finish()),
            Arc::new(self.old_value.finish()),
            Arc::new(self.new_value.finish()),
            Arc::new(self.old_score.finish()),
            Arc::new(self.new_score.finish()),
        ];
        Some(RecordBatch::try_new(tag_diff_schema(), columns).expect("diff columns"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `customer_tags` row: (customer, family, tag, value, score, as_of).
    type Given<'a> = (&'a str, &'a str, &'a str, &'a str, Option<f64>, i64);

    /// `rows` in one batch.
    fn rows(rows: &[Given]) -> Vec<RecordBatch> {
        let text = |f: for<'a> fn(&'a Given<'a>) -> &'a str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let columns: Vec<ArrayRef> = vec![
            text(|r| r.0),
            text(|r| r.1),
            text(|r| r.2),
            text(|r| r.3),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.4))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.5)).with_timezone("UTC")),
        ];
        vec![RecordBatch::try_new(customer_tags_schema(), columns).unwrap()]
    }

    /// (customer, tag, change, old value, new value) of a change.
    type Seen = (String, String, String, Option<String>, Option<String>);

    /// Every change, sorted.
    fn changes(diff: &Diff) -> Vec<Seen> {
        let mut out = Vec::new();
        for batch in &diff.changes {
            let text = |name| typed_column::<StringArray>(batch, name);
            for i in 0..batch.num_rows() {
                let at = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_string());
                out.push((
                    text("customer_id").value(i).to_string(),
                    text("tag").value(i).to_string(),
                    text("change").value(i).to_string(),
                    at(text("old_value")),
                    at(text("new_value")),
                ));
            }
        }
        out.sort();
        out
    }

    /// (customer, tag, as_of) of the next rows, sorted.
    fn next(diff: &Diff) -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        for batch in &diff.next_rows {
            for i in 0..batch.num_rows() {
                out.push((
                    typed_column::<StringArray>(batch, "customer_id").value(i).to_string(),
                    typed_column::<StringArray>(batch, "tag").value(i).to_string(),
                    typed_column::<TimestampMicrosecondArray>(batch, "as_of").value(i),
                ));
            }
        }
        out.sort();
        out
    }

    fn change(
        c: &str,
        t: &str,
        kind: &str,
        old: Option<&str>,
        new: Option<&str>,
    ) -> (String, String, String, Option<String>, Option<String>) {
        (
            c.into(),
            t.into(),
            kind.into(),
            old.map(Into::into),
            new.map(Into::into),
        )
    }

    #[test]
    fn entered_exited_and_changed_rows_and_the_as_of_an_unchanged_row_keeps() {
        let old = rows(&[
            ("a", "risk", "t1", "true", None, 1),
            ("b", "risk", "t1", "true", Some(2.0), 1),
            ("c", "risk", "t1", "true", Some(3.0), 1),
            ("d", "risk", "t1", "true", None, 1),
            ("e", "risk", "t1", "x", None, 1),
            ("a", "intent", "t2", "shoes", Some(1.0), 1),
        ]);
        let new = rows(&[
            ("a", "risk", "t1", "true", None, 9),         // same: keeps as_of 1
            ("b", "risk", "t1", "true", Some(2.5), 9),    // score changed
            ("c", "risk", "t1", "true", None, 9),         // score to null: changed
            ("e", "behaviour", "t1", "x", None, 9),       // family changed
            ("f", "risk", "t1", "true", None, 9),         // entered
            ("a", "intent", "t2", "shoes", Some(1.0), 9), // t2 has no change at all
        ]);
        // Matched by customer id, and by customer number (a micro-batch's rows): the same.
        let numbered = Numbering::default();
        for numbering in [None, Some(&numbered)] {
            let diff = diff(&old, &new, None, numbering);
            assert_eq!(
                changes(&diff),
                vec![
                    change("b", "t1", "changed", Some("true"), Some("true")),
                    change("c", "t1", "changed", Some("true"), Some("true")),
                    change("d", "t1", "exited", Some("true"), None),
                    change("e", "t1", "changed", Some("x"), Some("x")),
                    change("f", "t1", "entered", None, Some("true")),
                ]
            );
            assert_eq!(
                (diff.counts.entered, diff.counts.exited, diff.counts.changed),
                (1, 1, 3)
            );
            assert_eq!(diff.changed_tags, vec!["t1".to_string()]);
            // Only the changed tag's rows are rewritten; the unchanged row keeps its as-of.
            let expected: Vec<(String, String, i64)> = [("a", 1), ("b", 9), ("c", 9), ("e", 9), ("f", 9)]
                .iter()
                .map(|(c, t)| (c.to_string(), "t1".to_string(), *t))
                .collect();
            assert_eq!(next(&diff), expected);
            let kept = without_tags(&old, &diff.changed_tags);
            assert_eq!(kept.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "t2's row");
        }
    }

    #[test]
    fn a_scope_leaves_other_tags_out_and_nothing_changed_is_no_change() {
        let old = rows(&[("a", "f", "t1", "v", None, 1), ("a", "f", "t2", "v", None, 1)]);
        let new = rows(&[("a", "f", "t1", "v", None, 5)]);
        let scoped = diff(&old, &new, Some(&["t1".to_string()]), None);
        assert_eq!(scoped.counts.total(), 0, "t2 is out of scope: not exited");
        assert!(scoped.changes.is_empty() && scoped.changed_tags.is_empty() && scoped.next_rows.is_empty());
        let whole = diff(&old, &new, None, None);
        assert_eq!(changes(&whole), vec![change("a", "t2", "exited", Some("v"), None)]);
        assert_eq!(next(&whole), Vec::new(), "t2 has no new rows");
        assert_eq!(diff(&[], &[], None, None).counts.total(), 0);
    }

    #[test]
    fn figures_count_the_next_version_with_the_tags_a_scope_keeps() {
        let old = rows(&[
            ("a", "f", "t1", "v", None, 1),
            ("b", "f", "t1", "v", None, 1),
            ("c", "f", "t2", "x", None, 1),
        ]);
        let new = rows(&[
            ("a", "f", "t1", "v", None, 5),
            ("a", "f", "t3", "y", None, 5),
            ("d", "f", "t3", "y", None, 5),
        ]);
        let segment = |pairs: &[(&str, &str, u64)]| -> BTreeMap<String, BTreeMap<String, u64>> {
            let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for (tag, value, n) in pairs {
                out.entry(tag.to_string()).or_default().insert(value.to_string(), *n);
            }
            out
        };
        // The whole table replaced: only the new rows count.
        let whole = figures(&old, &new, None);
        assert_eq!((whole.rows, whole.customers), (3, 2));
        assert_eq!(whole.segments, segment(&[("t1", "v", 1), ("t3", "y", 2)]));
        // t1 and t3 replaced: t2's row stays and counts.
        let scoped = figures(&old, &new, Some(&["t1".to_string(), "t3".to_string()]));
        assert_eq!((scoped.rows, scoped.customers), (4, 3));
        assert_eq!(
            scoped.segments,
            segment(&[("t1", "v", 1), ("t2", "x", 1), ("t3", "y", 2)])
        );
    }
}
