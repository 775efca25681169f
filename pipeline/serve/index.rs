//! The in-memory index of one published `customer_tags` version: what the lookup API answers
//! single-customer lookups, batch lookups and segment pages from, without a query per request.
//!
//! Owns: loading one version's rows and laying them out for lookups.
//! Must not: write anything; an index is immutable once built and shared by `Arc`, so a
//! request that holds one answers wholly from that version.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, StringArray, StringBuilder, TimestampMicrosecondArray};
use chrono::{DateTime, SecondsFormat, Utc};
use deltalake::DeltaTable;

use crate::publish::snapshots;
use crate::publish::{collect, open_published, register, PublishError, TAGS_TABLE};
use crate::storage::Location;

/// One tag row of a customer, with its strings interned in the index's symbol table.
#[derive(Clone, Copy)]
struct Row {
    score: f64,
    value: u32,
    as_of: u32,
    tag: u16,
    has_score: bool,
}

/// One tag of a customer, as the API returns it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TagView<'a> {
    pub family: &'a str,
    pub tag: &'a str,
    pub value: &'a str,
    pub score: Option<f64>,
    /// As-of time of the publish that gave the row its current value and score.
    pub as_of: &'a str,
}

/// One version of `customer_tags`, indexed.
pub struct TagIndex {
    pub version: u64,
    /// As-of time of the publish this version holds (the latest publish at or before it).
    pub as_of: Option<DateTime<Utc>>,
    as_of_text: Option<String>,
    /// When that version was committed.
    pub committed_at: Option<DateTime<Utc>>,
    /// Customer ids, sorted and unique.
    customers: StringArray,
    /// Customer `i`'s rows are `rows[starts[i]..starts[i + 1]]`, ordered by family and tag.
    starts: Vec<u32>,
    rows: Vec<Row>,
    /// Interned values and as-of strings.
    symbols: Vec<Box<str>>,
    symbol_ids: HashMap<Box<str>, u32>,
    /// Tag names and, per tag, its family.
    tags: Vec<(Box<str>, Box<str>)>,
    /// Per tag: positions of the customers carrying it, in id order.
    by_tag: Vec<Vec<u32>>,
    /// Per tag and value: positions of the customers in that segment, in id order.
    by_value: HashMap<(u16, u32), Vec<u32>>,
}

impl std::fmt::Debug for TagIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagIndex")
            .field("version", &self.version)
            .field("customers", &self.customers.len())
            .field("rows", &self.rows.len())
            .finish()
    }
}

/// Customers of a segment (a tag, or a tag and value), in id order.
pub struct Segment<'a> {
    index: &'a TagIndex,
    tag: u16,
    members: &'a [u32],
}

impl<'a> Segment<'a> {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members `from..from + limit`: (customer id, their row of the segment's tag).
    pub fn page(&self, from: usize, limit: usize) -> impl Iterator<Item = (&'a str, TagView<'a>)> + '_ {
        let index = self.index;
        let tag = self.tag;
        self.members.iter().skip(from).take(limit).map(move |&position| {
            let position = position as usize;
            let row = index
                .rows_of(position)
                .iter()
                .find(|r| r.tag == tag)
                .expect("members carry the tag");
            (index.customers.value(position), index.view(row))
        })
    }
}

impl TagIndex {
    /// Load and index a version of `customer_tags` (latest if `version` is `None`).
    pub async fn load(warehouse: &Location, version: Option<u64>) -> Result<Self, PublishError> {
        let delta = open_published(warehouse, TAGS_TABLE, version).await?;
        Self::from_table(&delta).await
    }

    /// Index an opened table at its loaded version.
    pub async fn from_table(delta: &DeltaTable) -> Result<Self, PublishError> {
        let version = delta.version().unwrap_or_default();
        // The as-of of this version: its own publish, or the latest one before a compaction.
        let newest = snapshots::history(delta, Some(1)).await?;
        let committed_at = newest.first().and_then(|s| s.committed_at);
        let publish = match newest.into_iter().next() {
            Some(own) if own.is_publish() => Some(own),
            _ => snapshots::history(delta, Some(64))
                .await?
                .into_iter()
                .find(|s| s.is_publish()),
        };
        let ctx = datafusion::prelude::SessionContext::new();
        register(&ctx, delta, TAGS_TABLE).await?;
        let batches = collect(
            &ctx,
            delta,
            "SELECT customer_id, family, tag, value, score, as_of FROM customer_tags",
        )
        .await?;
        let mut index = build(&batches);
        index.version = version;
        index.as_of = publish.and_then(|s| s.as_of);
        index.as_of_text = index.as_of.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        index.committed_at = committed_at;
        Ok(index)
    }

    pub fn customer_count(&self) -> usize {
        self.customers.len()
    }

    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The index's as-of time as RFC 3339 text.
    pub fn as_of_text(&self) -> Option<&str> {
        self.as_of_text.as_deref()
    }

    /// A customer's tags, ordered by family and tag; `None` for a customer with no tags.
    pub fn customer(&self, id: &str) -> Option<Vec<TagView<'_>>> {
        let position = self.position(id)?;
        Some(self.rows_of(position).iter().map(|r| self.view(r)).collect())
    }

    /// The shipped tag names with their families, in name order.
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags.iter().map(|(t, f)| (t.as_ref(), f.as_ref()))
    }

    /// The customers carrying `tag` (with `value`, if given); `None` for a tag this version
    /// does not hold.
    pub fn segment(&self, tag: &str, value: Option<&str>) -> Option<Segment<'_>> {
        let tag_id = self.tag_id(tag)?;
        let members: &[u32] = match value {
            None => &self.by_tag[tag_id as usize],
            Some(value) => self
                .symbol_id(value)
                .and_then(|v| self.by_value.get(&(tag_id, v)))
                .map(Vec::as_slice)
                .unwrap_or_default(),
        };
        Some(Segment {
            index: self,
            tag: tag_id,
            members,
        })
    }

    /// Segment sizes of `tag` per value, in value order; `None` for an unknown tag.
    pub fn summary(&self, tag: &str) -> Option<Vec<(&str, usize)>> {
        let tag_id = self.tag_id(tag)?;
        let mut sizes: Vec<(&str, usize)> = self
            .by_value
            .iter()
            .filter(|((t, _), _)| *t == tag_id)
            .map(|((_, v), members)| (self.symbols[*v as usize].as_ref(), members.len()))
            .collect();
        sizes.sort_unstable();
        Some(sizes)
    }

    /// The family of a tag this version holds.
    pub fn family_of(&self, tag: &str) -> Option<&str> {
        self.tag_id(tag).map(|t| self.tags[t as usize].1.as_ref())
    }

    fn position(&self, id: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.customers.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.customers.value(mid).cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    fn rows_of(&self, position: usize) -> &[Row] {
        &self.rows[self.starts[position] as usize..self.starts[position + 1] as usize]
    }

    fn view(&self, row: &Row) -> TagView<'_> {
        let (tag, family) = &self.tags[row.tag as usize];
        TagView {
            family,
            tag,
            value: &self.symbols[row.value as usize],
            score: row.has_score.then_some(row.score),
            as_of: &self.symbols[row.as_of as usize],
        }
    }

    fn tag_id(&self, tag: &str) -> Option<u16> {
        self.tags
            .binary_search_by(|(t, _)| t.as_ref().cmp(tag))
            .ok()
            .map(|i| i as u16)
    }

    fn symbol_id(&self, text: &str) -> Option<u32> {
        self.symbol_ids.get(text).copied()
    }
}

/// Lay rows out by customer: ids sorted once, rows placed by a counting sort.
///
/// Long on purpose: one pass per phase (tag names, symbols, customer order, placement) over
/// columns held as locals; split into functions, each would take or return most of them.
pub(super) fn build(batches: &[arrow::record_batch::RecordBatch]) -> TagIndex {
    let text = |b: &arrow::record_batch::RecordBatch, i: usize| -> StringArray {
        b.column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8 column")
            .clone()
    };
    // Tag names (with families) first, so tag ids follow name order.
    let mut families: HashMap<String, String> = HashMap::new();
    for b in batches {
        let (family, tag) = (text(b, 1), text(b, 2));
        for i in 0..b.num_rows() {
            if !families.contains_key(tag.value(i)) {
                families.insert(tag.value(i).into(), family.value(i).into());
            }
        }
    }
    let mut tag_names: Vec<(Box<str>, Box<str>)> = families.into_iter().map(|(t, f)| (t.into(), f.into())).collect();
    tag_names.sort();
    let mut symbols: Vec<Box<str>> = Vec::new();
    let mut symbol_ids: HashMap<Box<str>, u32> = HashMap::new();
    let mut intern = |text: &str| -> u32 {
        if let Some(&id) = symbol_ids.get(text) {
            return id;
        }
        let id = symbols.len() as u32;
        symbols.push(text.into());
        symbol_ids.insert(text.into(), id);
        id
    };
    // Dense customer numbers in order of first appearance, and every row with its number.
    let mut dense: HashMap<&str, u32> = HashMap::new();
    let mut first_seen: Vec<&str> = Vec::new();
    let mut tagged: Vec<(u32, Row)> = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    let columns: Vec<_> = batches
        .iter()
        .map(|b| {
            let score = b
                .column(4)
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("f64 score")
                .clone();
            let as_of = b
                .column(5)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .expect("as_of timestamp")
                .clone();
            (text(b, 0), text(b, 2), text(b, 3), score, as_of)
        })
        .collect();
    let mut as_of_ids: HashMap<i64, u32> = HashMap::new();
    for (customers, tags, values, scores, as_ofs) in &columns {
        for i in 0..customers.len() {
            let id = customers.value(i);
            let number = *dense.entry(id).or_insert_with(|| {
                first_seen.push(id);
                (first_seen.len() - 1) as u32
            });
            let micros = as_ofs.value(i);
            let as_of = *as_of_ids.entry(micros).or_insert_with(|| {
                let time = DateTime::from_timestamp_micros(micros).unwrap_or_default();
                intern(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            });
            let tag = tag_names
                .binary_search_by(|(t, _)| t.as_ref().cmp(tags.value(i)))
                .expect("tag collected above") as u16;
            tagged.push((
                number,
                Row {
                    score: if scores.is_valid(i) { scores.value(i) } else { 0.0 },
                    value: intern(values.value(i)),
                    as_of,
                    tag,
                    has_score: scores.is_valid(i),
                },
            ));
        }
    }
    // Position of each customer in id order.
    let mut order: Vec<u32> = (0..first_seen.len() as u32).collect();
    order.sort_unstable_by(|a, b| first_seen[*a as usize].cmp(first_seen[*b as usize]));
    let mut position = vec![0u32; first_seen.len()];
    let mut ids = StringBuilder::with_capacity(order.len(), order.len() * 12);
    for (p, &number) in order.iter().enumerate() {
        position[number as usize] = p as u32;
        ids.append_value(first_seen[number as usize]);
    }
    let mut starts = vec![0u32; order.len() + 1];
    for (number, _) in &tagged {
        starts[position[*number as usize] as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let placeholder = Row {
        score: 0.0,
        value: 0,
        as_of: 0,
        tag: 0,
        has_score: false,
    };
    let mut rows = vec![placeholder; tagged.len()];
    for (number, row) in tagged {
        let p = position[number as usize] as usize;
        rows[next[p] as usize] = row;
        next[p] += 1;
    }
    let mut by_tag = vec![Vec::new(); tag_names.len()];
    let mut by_value: HashMap<(u16, u32), Vec<u32>> = HashMap::new();
    for p in 0..order.len() {
        let slice = &mut rows[starts[p] as usize..starts[p + 1] as usize];
        // Tag ids follow name order; families group by their own name first.
        slice
            .sort_unstable_by(|a, b| (&tag_names[a.tag as usize].1, a.tag).cmp(&(&tag_names[b.tag as usize].1, b.tag)));
        for row in slice.iter() {
            by_tag[row.tag as usize].push(p as u32);
            by_value.entry((row.tag, row.value)).or_default().push(p as u32);
        }
    }
    TagIndex {
        version: 0,
        as_of: None,
        as_of_text: None,
        committed_at: None,
        customers: ids.finish(),
        starts,
        rows,
        symbols,
        symbol_ids,
        tags: tag_names,
        by_tag,
        by_value,
    }
}

/// An index shared by the requests answering from it.
pub type SharedIndex = Arc<TagIndex>;
