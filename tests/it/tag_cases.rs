//! Tag tests as data: every tag of the shipped catalog has a case file beside its SQL,
//! `sql/<family>/<tag>.cases.toml` (format: `docs/adding-a-tag.md`). A case gives landing
//! events per stream, an as-of time, optional parameter overrides and the complete set of
//! rows `(customer_id, value, score)` the tag must publish. This harness writes the events as
//! landing Parquet files, runs the real pipeline on them (support's `Fixture`) and compares
//! the published rows of the case's tag with the expected ones.
//!
//! - `cargo test --test it tag_cases` runs every case. Cases with the same input (events,
//!   as-of time, parameters) share one pipeline run; runs go in parallel.
//! - `TAGFLOW_CASES=rfm_tier,lifecycle/windows_and_days_since_last_seen` runs only those tags
//!   (or `tag/case`s).
//! - `TAGFLOW_BLESS=1` rewrites the `expected` table of every case whose published rows
//!   differ (or that has none yet) from what was published, for review with `git diff`;
//!   nothing else in the file changes.
//!
//! The list of tags comes from the catalog (`tagflow::jobs::Catalog`, the loader the pipeline
//! uses), so a new tag without a case file fails [`every_shipped_tag_has_a_case_file`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tagflow::jobs::{Catalog, ParamOverrides};
use tagflow::sources::schema::{ColumnType, Schemas, StreamSchema};

use crate::support::{write_parquet, Fixture, TagRow};

/// A tag's case file is its SQL file with this extension instead of `sql` (the catalog
/// loader reads `*.sql` only).
const CASES_EXTENSION: &str = "cases.toml";
/// The columns of an `expected` table (`score` may be left out: all null).
const EXPECTED_COLUMNS: [&str; 3] = ["customer_id", "value", "score"];

#[test]
fn every_shipped_tag_has_a_case_file() {
    let (_, catalog) = shipped_catalog();
    let mut problems = Vec::new();
    let mut tag_files = BTreeSet::new();
    for job in catalog.tags() {
        let path = cases_path(&job.file);
        tag_files.insert(path.clone());
        if !path.exists() {
            problems.push(format!(
                "tag '{}' ({}) has no case file {}",
                job.name,
                shown(&job.file),
                shown(&path)
            ));
            continue;
        }
        match load_case_file(&path, &job.name, job.family.as_deref().unwrap_or_default()) {
            Ok(file) if file.cases.is_empty() => problems.push(format!("{} has no [[case]]", shown(&path))),
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
    let mut all_files = Vec::new();
    find_case_files(&catalog.dir, &mut all_files);
    for path in all_files.iter().filter(|p| !tag_files.contains(*p)) {
        problems.push(format!(
            "{} belongs to no tag: no tag job {} in the catalog",
            shown(path),
            shown(&path_without_cases_extension(path).with_extension("sql"))
        ));
    }
    assert!(
        problems.is_empty(),
        "every tag needs a case file beside its SQL (docs/adding-a-tag.md):\n  {}",
        problems.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_tags_publish_the_rows_of_their_cases() {
    let (schemas, catalog) = shipped_catalog();
    let selected = Selection::from_env();
    let bless = std::env::var("TAGFLOW_BLESS").is_ok_and(|v| !v.is_empty() && v != "0");

    let mut failures: Vec<String> = Vec::new();
    let mut files: Vec<CaseFile> = Vec::new();
    for job in catalog.tags() {
        let path = cases_path(&job.file);
        if !path.exists() || !selected.wants_tag(&job.name) {
            continue; // a missing file fails `every_shipped_tag_has_a_case_file`
        }
        match load_case_file(&path, &job.name, job.family.as_deref().unwrap_or_default()) {
            Ok(mut file) => {
                file.cases.retain(|c| selected.wants_case(&job.name, &c.name));
                files.push(file);
            }
            Err(e) => failures.push(e),
        }
    }

    // One pipeline run per distinct input.
    let mut runs: Vec<Run> = Vec::new();
    let mut run_of_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut run_of_case: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (f, file) in files.iter().enumerate() {
        for (c, case) in file.cases.iter().enumerate() {
            match Run::of(case, &file.path, &schemas) {
                Ok(run) => {
                    let next = runs.len();
                    let index = *run_of_key.entry(run.key.clone()).or_insert(next);
                    if index == next {
                        runs.push(run);
                    }
                    run_of_case.insert((f, c), index);
                }
                Err(e) => failures.push(format!("{}, case \"{}\": {e}", shown(&file.path), case.name)),
            }
        }
    }
    if selected.is_some() && run_of_case.is_empty() && failures.is_empty() {
        panic!("TAGFLOW_CASES={}: no case matches", selected.text());
    }
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let mut results: Vec<Option<Result<Vec<TagRow>, String>>> = vec![None; runs.len()];
    let mut done = futures::stream::iter(runs.iter().enumerate())
        .map(|(i, run)| async move { (i, run.execute().await) })
        .buffer_unordered(parallel);
    while let Some((i, result)) = done.next().await {
        results[i] = Some(result);
    }

    let mut blessed: BTreeMap<usize, Vec<(Range<usize>, String)>> = BTreeMap::new();
    let mut cases = 0;
    for (f, file) in files.iter().enumerate() {
        for (c, case) in file.cases.iter().enumerate() {
            let Some(run) = run_of_case.get(&(f, c)) else { continue };
            cases += 1;
            let place = format!("{}, case \"{}\"", shown(&file.path), case.name);
            let published = match results[*run].as_ref().expect("every run ran") {
                Ok(rows) => rows,
                Err(e) => {
                    failures.push(format!("{place}: {e}"));
                    continue;
                }
            };
            let mut actual: Vec<&TagRow> = published.iter().filter(|r| r.tag == file.tag).collect();
            actual.sort_by(|a, b| (&a.customer_id, &a.value).cmp(&(&b.customer_id, &b.value)));
            let wrong_family: Vec<String> = actual
                .iter()
                .filter(|r| r.family != file.family)
                .map(|r| format!("{} has family '{}'", r.customer_id, r.family))
                .collect();
            if !wrong_family.is_empty() {
                failures.push(format!(
                    "{place}: rows of {} must have family '{}' (its header): {}",
                    file.tag,
                    file.family,
                    wrong_family.join(", ")
                ));
            }
            let differences = match &case.expected {
                Some(expected) => differences(&expected.rows, &actual, case.score_tolerance),
                None => vec!["no `expected` rows yet".to_string()],
            };
            if differences.is_empty() {
                continue;
            }
            if bless {
                blessed
                    .entry(f)
                    .or_default()
                    .push(blessed_expected(file, case, &actual));
            } else {
                failures.push(format!(
                    "{place}: the published rows of {} differ from the expected ones\n    {}",
                    file.tag,
                    differences.join("\n    ")
                ));
            }
        }
    }
    for (f, mut edits) in blessed {
        let file = &files[f];
        edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
        let mut text = file.text.clone();
        for (range, replacement) in &edits {
            text.replace_range(range.clone(), replacement);
        }
        std::fs::write(&file.path, text).unwrap_or_else(|e| panic!("write {}: {e}", shown(&file.path)));
        eprintln!(
            "TAGFLOW_BLESS: rewrote the expected rows of {} case(s) in {}",
            edits.len(),
            shown(&file.path)
        );
    }
    eprintln!(
        "tag cases: {cases} case(s) of {} tag(s) in {} pipeline run(s)",
        files.len(),
        runs.len()
    );
    assert!(
        failures.is_empty(),
        "{} problem(s) in tag cases{}:\n\n{}",
        failures.len(),
        if bless {
            ""
        } else {
            " (after a reviewed change of a tag, TAGFLOW_BLESS=1 rewrites the expected rows from the published ones)"
        },
        failures.join("\n\n")
    );
}

#[test]
fn case_tables_parse_and_bless_rewrites_only_the_expected_rows() {
    let text = r#"# a comment
[[case]]
name = "one"
description = "d"
as_of = 2026-11-20T12:00:00Z
expected = """
customer_id | value   | score
# b keeps its comment and its 1/3
b           | true    | 1/3
a           | true    |
c           | gone    | 1
"""

[case.params.some_tag]
days = 3

[[case.events]]
stream = "orders"
file = "dt=2026-11-20/a.parquet"
rows = """
event_id | customer_id | amount
# a comment row
o-1      | a           | 1.5
o-2      | "b"
"""

[[case]]
name = "two"
description = "no expected rows yet"
as_of = "2026-11-20T12:00:00Z"

[[case.events]]
stream = "clicks"
rows = """
event_id | customer_id | event_time           | page_type
k-1      | a           | 2026-11-20T10:00:00Z | product
"""
"#;
    let file = parse_case_file(Path::new("x/some_tag.cases.toml"), text, "some_tag", "risk").expect("parses");
    let [one, two] = &file.cases[..] else {
        panic!("two cases")
    };
    assert_eq!(one.as_of, "2026-11-20T12:00:00Z");
    let config: toml::Table = toml::from_str(one.config.as_deref().expect("a config")).expect("config parses");
    assert_eq!(
        config,
        toml::from_str::<toml::Table>("[params.some_tag]\ndays = 3").unwrap()
    );
    let events = &one.events[0];
    assert_eq!(
        (events.stream.as_str(), events.file.as_str()),
        ("orders", "dt=2026-11-20/a.parquet")
    );
    assert_eq!(events.table.columns, ["event_id", "customer_id", "amount"]);
    let cells: Vec<Vec<Option<&str>>> = events
        .table
        .rows
        .iter()
        .map(|r| r.cells.iter().map(|c| c.as_deref()).collect())
        .collect();
    assert_eq!(
        cells,
        [vec![Some("o-1"), Some("a"), Some("1.5")], vec![Some("o-2"), Some("b")]]
    );
    assert_eq!(events.table.rows[1].line, 24, "file line of the second event row");
    let expected = one.expected.as_ref().expect("expected rows");
    let rows: Vec<(&str, &str, Option<f64>)> = expected
        .rows
        .iter()
        .map(|r| (r.customer_id.as_str(), r.value.as_str(), r.score))
        .collect();
    assert_eq!(
        rows,
        [
            ("b", "true", Some(1.0 / 3.0)),
            ("a", "true", None),
            ("c", "gone", Some(1.0))
        ]
    );
    assert!(two.expected.is_none());
    assert_eq!(two.events[0].file, "case-1.parquet", "a file name of its own");

    // Published: a and b unchanged, c gone, d new.
    let published = |customer: &str, score: Option<f64>| TagRow {
        customer_id: customer.into(),
        family: "risk".into(),
        tag: "some_tag".into(),
        value: "true".into(),
        score,
    };
    let actual = [
        published("a", None),
        published("b", Some(1.0 / 3.0)),
        published("d", Some(0.25)),
    ];
    let actual: Vec<&TagRow> = actual.iter().collect();
    assert_eq!(
        differences(&expected.rows, &actual, None),
        [
            "c: expected gone | 1, published nothing",
            "d: expected nothing, published true | 0.25"
        ]
    );
    let mut edits = vec![
        blessed_expected(&file, one, &actual),
        blessed_expected(&file, two, &actual),
    ];
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut blessed = text.to_string();
    for (range, replacement) in &edits {
        blessed.replace_range(range.clone(), replacement);
    }
    let want = text
        .replace(
            "customer_id | value   | score\n# b keeps its comment and its 1/3\nb           | true    | 1/3\na           | true    |\nc           | gone    | 1\n",
            "customer_id | value | score\n# b keeps its comment and its 1/3\nb           | true  | 1/3\na           | true\nd           | true  | 0.25\n",
        )
        .replace(
            "as_of = \"2026-11-20T12:00:00Z\"\n",
            "as_of = \"2026-11-20T12:00:00Z\"\nexpected = \"\"\"\ncustomer_id | value | score\na           | true\nb           | true  | 0.3333333333333333\nd           | true  | 0.25\n\"\"\"\n",
        );
    assert_eq!(blessed, want);
    let reparsed = parse_case_file(Path::new("x/some_tag.cases.toml"), &blessed, "some_tag", "risk").expect("parses");
    assert!(reparsed.cases.iter().all(|c| c
        .expected
        .as_ref()
        .is_some_and(|e| differences(&e.rows, &actual, None).is_empty())));
}

// ---- the catalog and its case files ----

fn shipped_catalog() -> (Schemas, Catalog) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schemas = Schemas::load(&root.join("schemas")).expect("load the shipped schemas");
    let streams: Vec<String> = schemas.streams.keys().cloned().collect();
    let catalog = Catalog::load(&root.join("sql"), &streams).expect("load the shipped catalog");
    (schemas, catalog)
}

/// `<dir>/<tag>.cases.toml` beside `<dir>/<tag>.sql`.
fn cases_path(sql_file: &Path) -> PathBuf {
    sql_file.with_extension(CASES_EXTENSION)
}

fn path_without_cases_extension(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    path.with_file_name(name.trim_end_matches(CASES_EXTENSION).trim_end_matches('.'))
}

fn find_case_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            find_case_files(&path, out);
        } else if path.to_string_lossy().ends_with(&format!(".{CASES_EXTENSION}")) {
            out.push(path);
        }
    }
}

/// A path relative to the source tree, for messages.
fn shown(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// `TAGFLOW_CASES=tag,tag/case`: which cases to run (all when unset).
struct Selection(Option<Vec<(String, Option<String>)>>);

impl Selection {
    fn from_env() -> Self {
        let text = std::env::var("TAGFLOW_CASES").unwrap_or_default();
        let wanted: Vec<(String, Option<String>)> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('/') {
                Some((tag, case)) => (tag.to_string(), Some(case.to_string())),
                None => (s.to_string(), None),
            })
            .collect();
        Selection((!wanted.is_empty()).then_some(wanted))
    }

    fn is_some(&self) -> bool {
        self.0.is_some()
    }

    fn text(&self) -> String {
        std::env::var("TAGFLOW_CASES").unwrap_or_default()
    }

    fn wants_tag(&self, tag: &str) -> bool {
        self.0.as_ref().is_none_or(|w| w.iter().any(|(t, _)| t == tag))
    }

    fn wants_case(&self, tag: &str, case: &str) -> bool {
        self.0.as_ref().is_none_or(|w| {
            w.iter()
                .any(|(t, c)| t == tag && c.as_deref().is_none_or(|c| c == case))
        })
    }
}

// ---- the case file format ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    case: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    description: String,
    as_of: toml::Spanned<toml::Value>,
    expected: Option<toml::Spanned<String>>,
    /// Scores agree within this (absolute), for numerical tags (a model fit); else to 1e-9
    /// relative.
    score_tolerance: Option<f64>,
    #[serde(default)]
    params: ParamOverrides,
    #[serde(default)]
    events: Vec<RawEvents>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    stream: String,
    file: Option<String>,
    rows: toml::Spanned<String>,
}

/// One tag's case file.
struct CaseFile {
    path: PathBuf,
    text: String,
    tag: String,
    /// The tag's family, from its SQL header.
    family: String,
    cases: Vec<Case>,
}

struct Case {
    name: String,
    /// RFC 3339.
    as_of: String,
    /// Where the `as_of` value ends in the file (bless adds a missing `expected` after it).
    as_of_end: usize,
    /// A config file body with the case's `[params.<job>]`, if any.
    config: Option<String>,
    expected: Option<Expected>,
    score_tolerance: Option<f64>,
    events: Vec<Events>,
}

struct Events {
    stream: String,
    /// Under `landing/<stream>/`.
    file: String,
    table: Table,
}

struct Expected {
    /// The TOML string in the file, quotes included.
    span: Range<usize>,
    leading_comments: Vec<String>,
    rows: Vec<ExpectedRow>,
    trailing_comments: Vec<String>,
}

#[derive(Debug)]
struct ExpectedRow {
    customer_id: String,
    value: String,
    score: Option<f64>,
    /// The score as written (`2/3`, `0.5`), kept by bless when the score did not change.
    score_text: String,
    /// Comment lines just above the row.
    comments: Vec<String>,
}

/// A `|`-separated text table: a header of column names, then rows. Empty cells are null,
/// missing trailing cells too; `""` is the empty string. Lines starting with `#` are comments.
pub(crate) struct Table {
    /// Comment lines above the header.
    leading_comments: Vec<String>,
    /// Line of the header in the case file.
    header_line: usize,
    columns: Vec<String>,
    rows: Vec<TableRow>,
    trailing_comments: Vec<String>,
}

struct TableRow {
    /// Line in the case file.
    line: usize,
    cells: Vec<Option<String>>,
    comments: Vec<String>,
}

fn load_case_file(path: &Path, tag: &str, family: &str) -> Result<CaseFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", shown(path)))?;
    parse_case_file(path, &text, tag, family)
}

fn parse_case_file(path: &Path, text: &str, tag: &str, family: &str) -> Result<CaseFile, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| format!("{}: {e}", shown(path)))?;
    let mut cases = Vec::new();
    let mut names = BTreeSet::new();
    for raw_case in raw.case {
        let place = format!("{}, case \"{}\"", shown(path), raw_case.name);
        if raw_case.name.trim().is_empty() || !names.insert(raw_case.name.clone()) {
            return Err(format!("{place}: case names must be unique and not empty"));
        }
        if raw_case.description.trim().is_empty() {
            return Err(format!(
                "{place}: say in `description` why the expected rows are what they are"
            ));
        }
        let as_of_text = match raw_case.as_of.get_ref() {
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::String(s) => s.clone(),
            other => return Err(format!("{place}: as_of must be an RFC 3339 time, not {other}")),
        };
        let as_of = chrono::DateTime::parse_from_rfc3339(&as_of_text)
            .map_err(|e| format!("{place}: as_of {as_of_text:?} is not an RFC 3339 time with an offset: {e}"))?
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let config = (!raw_case.params.is_empty()).then(|| {
            #[derive(Serialize)]
            struct Config<'a> {
                params: &'a ParamOverrides,
            }
            toml::to_string(&Config {
                params: &raw_case.params,
            })
            .expect("params as TOML")
        });
        let expected = match &raw_case.expected {
            None => None,
            Some(spanned) => {
                let table = parse_table(spanned.get_ref(), content_first_line(text, &spanned.span()))
                    .map_err(|e| format!("{place}, expected: {e}"))?;
                Some(parse_expected(table, spanned.span()).map_err(|e| format!("{place}, expected: {e}"))?)
            }
        };
        let mut events = Vec::new();
        for raw_events in raw_case.events {
            let file = raw_events
                .file
                .unwrap_or_else(|| format!("case-{}.parquet", events.len() + 1));
            let table = parse_table(
                raw_events.rows.get_ref(),
                content_first_line(text, &raw_events.rows.span()),
            )
            .map_err(|e| format!("{place}, events of {}/{file}: {e}", raw_events.stream))?;
            events.push(Events {
                stream: raw_events.stream,
                file,
                table,
            });
        }
        if events.is_empty() {
            return Err(format!("{place}: no [[case.events]]"));
        }
        cases.push(Case {
            name: raw_case.name,
            as_of,
            as_of_end: raw_case.as_of.span().end,
            config,
            expected,
            score_tolerance: raw_case.score_tolerance,
            events,
        });
    }
    Ok(CaseFile {
        path: path.to_path_buf(),
        text: text.to_string(),
        tag: tag.to_string(),
        family: family.to_string(),
        cases,
    })
}

/// The file line of a TOML string's first line of content (a newline right after `"""`
/// is not part of the string).
fn content_first_line(text: &str, span: &Range<usize>) -> usize {
    let line = text[..span.start].matches('\n').count() + 1;
    let raw = &text[span.clone()];
    let multi_line = raw.starts_with("\"\"\"") || raw.starts_with("'''");
    let after = raw.get(3..).unwrap_or_default();
    if multi_line && (after.starts_with('\n') || after.starts_with("\r\n")) {
        line + 1
    } else {
        line
    }
}

pub(crate) fn parse_table(text: &str, first_line: usize) -> Result<Table, String> {
    let mut columns: Option<Vec<String>> = None;
    let mut leading_comments = Vec::new();
    let mut header_line = first_line;
    let mut rows = Vec::new();
    let mut comments = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = first_line + i;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') {
            comments.push(trimmed.to_string());
            continue;
        }
        let cells: Vec<&str> = trimmed.split('|').map(str::trim).collect();
        if columns.is_none() {
            if let Some(bad) = cells.iter().find(|c| c.is_empty() || c.starts_with('"')) {
                return Err(format!(
                    "line {line_no}: the header needs a column name in every cell, found {bad:?} \
                     (no `|` at the start or end of a line)"
                ));
            }
            columns = Some(cells.iter().map(|c| c.to_string()).collect());
            header_line = line_no;
            leading_comments = std::mem::take(&mut comments);
            continue;
        }
        let columns = columns.as_ref().expect("the header came first");
        if trimmed.chars().all(|c| matches!(c, '-' | '|' | ':' | '+' | ' ')) {
            continue; // a Markdown-style line under the header
        }
        if cells.len() > columns.len() {
            return Err(format!(
                "line {line_no}: {} cells for {} columns {columns:?}",
                cells.len(),
                columns.len()
            ));
        }
        rows.push(TableRow {
            line: line_no,
            cells: cells.iter().map(|c| cell(c)).collect(),
            comments: std::mem::take(&mut comments),
        });
    }
    let Some(columns) = columns else {
        return Ok(Table {
            leading_comments: comments,
            header_line,
            columns: Vec::new(),
            rows: Vec::new(),
            trailing_comments: Vec::new(),
        });
    };
    let mut seen = BTreeSet::new();
    if let Some(twice) = columns.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(format!("line {header_line}: column {twice:?} appears twice"));
    }
    Ok(Table {
        leading_comments,
        header_line,
        columns,
        rows,
        trailing_comments: comments,
    })
}

/// An empty cell is null; `"..."` is the text between the quotes (e.g. `""`, the empty string).
fn cell(text: &str) -> Option<String> {
    if text.is_empty() {
        None
    } else if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        Some(text[1..text.len() - 1].to_string())
    } else {
        Some(text.to_string())
    }
}

fn parse_expected(table: Table, span: Range<usize>) -> Result<Expected, String> {
    let columns: Vec<&str> = table.columns.iter().map(String::as_str).collect();
    if !columns.is_empty() && columns != EXPECTED_COLUMNS && columns != EXPECTED_COLUMNS[..2] {
        return Err(format!(
            "the columns must be {EXPECTED_COLUMNS:?} (score may be left out), not {columns:?}"
        ));
    }
    let mut rows = Vec::new();
    for row in table.rows {
        let at = |i: usize| row.cells.get(i).cloned().flatten();
        let (Some(customer_id), Some(value)) = (at(0), at(1)) else {
            return Err(format!("line {}: customer_id and value must not be empty", row.line));
        };
        let score_text = row.cells.get(2).cloned().flatten().unwrap_or_default();
        let score = parse_score(&score_text).map_err(|e| format!("line {}: {e}", row.line))?;
        rows.push(ExpectedRow {
            customer_id,
            value,
            score,
            score_text,
            comments: row.comments,
        });
    }
    Ok(Expected {
        span,
        leading_comments: table.leading_comments,
        rows,
        trailing_comments: table.trailing_comments,
    })
}

/// Empty: null; a number; or a fraction `a/b` (e.g. `2/3`).
fn parse_score(text: &str) -> Result<Option<f64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let number = |t: &str| {
        t.trim()
            .parse::<f64>()
            .map_err(|_| format!("score {text:?} is not a number, a fraction a/b or empty (null)"))
    };
    Ok(Some(match text.split_once('/') {
        Some((a, b)) => number(a)? / number(b)?,
        None => number(text)?,
    }))
}

// ---- running a case ----

/// One pipeline run: landing files, as-of time and config.
struct Run {
    /// Identifies the input, so that cases with the same input share the run.
    key: String,
    as_of: String,
    config: Option<String>,
    /// `(<stream>/<file>, rows)`.
    files: Vec<(String, RecordBatch)>,
}

impl Run {
    fn of(case: &Case, path: &Path, schemas: &Schemas) -> Result<Run, String> {
        let mut key = format!("{}\n{:?}\n", case.as_of, case.config);
        let mut files: Vec<(String, RecordBatch)> = Vec::new();
        for events in &case.events {
            let landing_path = format!("{}/{}", events.stream, events.file);
            let schema = schemas.streams.get(&events.stream).ok_or_else(|| {
                format!(
                    "events of unknown stream '{}' (streams: {:?})",
                    events.stream,
                    schemas.streams.keys().collect::<Vec<_>>()
                )
            })?;
            if files.iter().any(|(p, _)| *p == landing_path) {
                return Err(format!(
                    "two [[case.events]] write {landing_path}: give each its own `file`"
                ));
            }
            let batch = events_batch(schema, &events.table).map_err(|e| format!("{}:{e}", shown(path)))?;
            key.push_str(&format!("{landing_path}\n{:?}\n", events.table.columns));
            for row in &events.table.rows {
                key.push_str(&format!("{:?}\n", row.cells));
            }
            files.push((landing_path, batch));
        }
        Ok(Run {
            key,
            as_of: case.as_of.clone(),
            config: case.config.clone(),
            files,
        })
    }

    /// Write the landing files, run the pipeline and read every published row back.
    async fn execute(&self) -> Result<Vec<TagRow>, String> {
        let fx = Fixture::new();
        for (path, batch) in &self.files {
            write_parquet(&fx.landing_dir().join(path), batch);
        }
        let report = fx
            .try_run(&self.as_of, self.config.as_deref())
            .await
            .map_err(|e| format!("the pipeline run failed: {e}"))?;
        let quarantine = &report.quarantine;
        if quarantine.files + quarantine.rows > 0 {
            let reasons: Vec<String> = quarantine
                .entries
                .iter()
                .map(|e| {
                    let source = e.source.rsplit_once("/landing/").map_or(e.source.as_str(), |(_, s)| s);
                    format!("{source}: {}", e.reason)
                })
                .collect();
            return Err(format!(
                "the pipeline quarantined {} file(s) and {} row(s); the events of a case must be valid input:\n    {}",
                quarantine.files,
                quarantine.rows,
                reasons.join("\n    ")
            ));
        }
        Ok(fx.published(None).await.rows)
    }
}

/// The rows of one `[[case.events]]` as a record batch: the table's columns, typed as the
/// stream's schema declares them.
pub(crate) fn events_batch(schema: &StreamSchema, table: &Table) -> Result<RecordBatch, String> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let header_line = table.header_line;
    for (i, name) in table.columns.iter().enumerate() {
        let column = schema.columns.iter().find(|c| c.name == *name).ok_or_else(|| {
            format!(
                "{header_line}: stream '{}' has no column '{name}' (schemas/{}.toml: {:?})",
                schema.stream,
                schema.stream,
                schema.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()
            )
        })?;
        let cells: Vec<(usize, Option<&str>)> = table
            .rows
            .iter()
            .map(|r| (r.line, r.cells.get(i).and_then(|c| c.as_deref())))
            .collect();
        let bad = |line: usize, text: &str, what: &str| format!("{line}: {name} {text:?} is not {what}");
        let array: ArrayRef = match column.column_type {
            ColumnType::Utf8 => Arc::new(StringArray::from_iter(cells.iter().map(|(_, c)| *c))),
            ColumnType::Int32 => Arc::new(
                cells
                    .iter()
                    .map(|(line, c)| {
                        c.map(|t| t.parse::<i32>().map_err(|_| bad(*line, t, "an integer")))
                            .transpose()
                    })
                    .collect::<Result<Int32Array, String>>()?,
            ),
            ColumnType::Float64 => Arc::new(
                cells
                    .iter()
                    .map(|(line, c)| {
                        c.map(|t| t.parse::<f64>().map_err(|_| bad(*line, t, "a number")))
                            .transpose()
                    })
                    .collect::<Result<Float64Array, String>>()?,
            ),
            ColumnType::Timestamp => Arc::new(
                cells
                    .iter()
                    .map(|(line, c)| {
                        c.map(|t| {
                            chrono::DateTime::parse_from_rfc3339(t)
                                .map(|d| d.timestamp_micros())
                                .map_err(|_| bad(*line, t, "an RFC 3339 time with an offset"))
                        })
                        .transpose()
                    })
                    .collect::<Result<TimestampMicrosecondArray, String>>()?
                    .with_timezone("UTC"),
            ),
        };
        fields.push(Field::new(name, column.column_type.arrow_type(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| format!("{header_line}: {e}"))
}

// ---- comparing and blessing ----

/// Scores agree to 1e-9 relative, as `support::assert_close`, or within the case's
/// `score_tolerance`.
fn same_score(expected: Option<f64>, actual: Option<f64>, tolerance: Option<f64>) -> bool {
    match (expected, actual) {
        (None, None) => true,
        (Some(e), Some(a)) => (a - e).abs() <= tolerance.unwrap_or(1e-9 * e.abs().max(1.0)),
        _ => false,
    }
}

/// One line per customer whose expected and published rows differ.
fn differences(expected: &[ExpectedRow], actual: &[&TagRow], tolerance: Option<f64>) -> Vec<String> {
    let customers: BTreeSet<&str> = expected
        .iter()
        .map(|r| r.customer_id.as_str())
        .chain(actual.iter().map(|r| r.customer_id.as_str()))
        .collect();
    let mut lines = Vec::new();
    for customer in customers {
        let mut want: Vec<(&str, Option<f64>)> = expected
            .iter()
            .filter(|r| r.customer_id == customer)
            .map(|r| (r.value.as_str(), r.score))
            .collect();
        let mut got: Vec<(&str, Option<f64>)> = actual
            .iter()
            .filter(|r| r.customer_id == customer)
            .map(|r| (r.value.as_str(), r.score))
            .collect();
        want.sort_by(|a, b| a.0.cmp(b.0));
        got.sort_by(|a, b| a.0.cmp(b.0));
        let same = want.len() == got.len()
            && want
                .iter()
                .zip(&got)
                .all(|((wv, ws), (gv, gs))| wv == gv && same_score(*ws, *gs, tolerance));
        if !same {
            lines.push(format!(
                "{customer}: expected {}, published {}",
                shown_rows(&want),
                shown_rows(&got)
            ));
        }
    }
    lines
}

fn shown_rows(rows: &[(&str, Option<f64>)]) -> String {
    if rows.is_empty() {
        return "nothing".into();
    }
    let shown: Vec<String> = rows
        .iter()
        .map(|(value, score)| match score {
            Some(s) => format!("{value} | {s}"),
            None => format!("{value} | (null)"),
        })
        .collect();
    shown.join("; ")
}

/// The edit that makes `case`'s expected rows the published ones: the rows that stay keep
/// their place, comments and score as written; new rows follow in customer order.
fn blessed_expected(file: &CaseFile, case: &Case, actual: &[&TagRow]) -> (Range<usize>, String) {
    let mut used = vec![false; actual.len()];
    let mut rows: Vec<(Vec<String>, &[String])> = Vec::new();
    let (mut leading, mut trailing): (&[String], &[String]) = (&[], &[]);
    if let Some(expected) = &case.expected {
        for old in &expected.rows {
            let same_customer: Vec<usize> = (0..actual.len())
                .filter(|&i| !used[i] && actual[i].customer_id == old.customer_id)
                .collect();
            let found = same_customer
                .iter()
                .copied()
                .find(|&i| actual[i].value == old.value)
                .or_else(|| same_customer.first().copied());
            let Some(i) = found else { continue };
            used[i] = true;
            let row = actual[i];
            let score = if row.value == old.value && same_score(old.score, row.score, case.score_tolerance) {
                old.score_text.clone()
            } else {
                score_text(row.score)
            };
            rows.push((
                vec![row.customer_id.clone(), row.value.clone(), score],
                old.comments.as_slice(),
            ));
        }
        leading = expected.leading_comments.as_slice();
        trailing = expected.trailing_comments.as_slice();
    }
    for (_, row) in actual.iter().enumerate().filter(|(i, _)| !used[*i]) {
        rows.push((
            vec![row.customer_id.clone(), row.value.clone(), score_text(row.score)],
            &[][..],
        ));
    }
    let mut body: String = leading.iter().map(|c| format!("{c}\n")).collect();
    body.push_str(&render_table(&EXPECTED_COLUMNS, &rows, trailing));
    let literal = format!("\"\"\"\n{body}\"\"\"");
    match &case.expected {
        Some(expected) => (expected.span.clone(), literal),
        None => {
            let end = file.text[case.as_of_end..]
                .find('\n')
                .map_or(file.text.len(), |n| case.as_of_end + n + 1);
            (end..end, format!("expected = {literal}\n"))
        }
    }
}

fn score_text(score: Option<f64>) -> String {
    score.map_or(String::new(), |s| s.to_string())
}

/// Rows under a header, cells padded to their column's width; empty trailing cells (nulls)
/// are left out.
fn render_table(columns: &[&str], rows: &[(Vec<String>, &[String])], trailing_comments: &[String]) -> String {
    let quoted = |c: &String| {
        if c.is_empty() {
            String::new()
        } else if c.trim() != c || c.contains('|') {
            format!("\"{c}\"")
        } else {
            c.clone()
        }
    };
    let rows: Vec<(Vec<String>, &[String])> = rows
        .iter()
        .map(|(cells, comments)| (cells.iter().map(&quoted).collect(), *comments))
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for (cells, _) in &rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let kept = cells.iter().rposition(|c| !c.is_empty()).map_or(0, |i| i + 1);
        let padded: Vec<String> = cells[..kept]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == kept {
                    c.clone()
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect();
        format!("{}\n", padded.join(" | "))
    };
    let mut out = line(&columns.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    for (cells, comments) in &rows {
        for comment in comments.iter() {
            out.push_str(&format!("{comment}\n"));
        }
        out.push_str(&line(cells));
    }
    for comment in trailing_comments {
        out.push_str(&format!("{comment}\n"));
    }
    out
}
