//! Parsing of a job file: its TOML header and its SQL template, with the header defaults
//! of its folder (`defaults.toml`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::catalog::{CatalogError, JobKind, MergeRule, Scope};
use super::checks::Checks;

/// The header as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Header {
    pub name: String,
    #[serde(default)]
    pub kind: JobKind,
    pub family: Option<String>,
    pub description: String,
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// State jobs: the columns that identify a row of the state table.
    #[serde(default)]
    pub key: Vec<String>,
    /// State jobs: how each non-key column of two rows with the same key combines.
    #[serde(default)]
    pub merge: BTreeMap<String, MergeRule>,
    /// State jobs: a key column holding the event day (days since 1970-01-01); rows older
    /// than the `retain_days` parameter are dropped.
    pub day_column: Option<String>,
    /// Tag jobs: quality gates on the output.
    #[serde(default)]
    pub checks: Checks,
    /// Tag and measure jobs: what a customer's rows depend on.
    #[serde(default)]
    pub scope: Scope,
    /// Measure jobs: publish the rows as the Delta table of this name under the warehouse,
    /// replaced by each run that publishes (an `as_of` column added).
    pub publish: Option<String>,
    /// Tag and measure jobs of scope "customer": a column of the inputs that links
    /// customers (a device): a customer's rows depend on the input rows of the values of it
    /// that the customer has rows with.
    pub linked_by: Option<String>,
}

/// A parsed job file.
pub(super) struct ParsedFile {
    pub header: Header,
    /// Number of header lines; the SQL body starts on line `header_lines + 1`.
    pub header_lines: usize,
    /// The header text (comment markers removed), to locate keys for error messages.
    pub header_text: String,
    /// The SQL body, with `{{placeholders}}`.
    pub body: String,
}

/// Header keys that a folder gives every job under it, per job kind: a `defaults.toml` holds
/// tables `[tag]`, `[measure]` and `[state]`, each part of a header. A job's own header wins
/// key by key (tables merge). The catalog's folder and each folder down to the job's may
/// have one; a deeper one wins.
#[derive(Debug, Clone, Default)]
pub(super) struct Defaults(toml::Table);

/// The file name of a folder's header defaults.
pub(super) const DEFAULTS_FILE: &str = "defaults.toml";

impl Defaults {
    /// The defaults for jobs in `folder`, a folder under (or equal to) the catalog's `root`.
    pub(super) fn for_folder(root: &Path, folder: &Path) -> Result<Self, CatalogError> {
        let mut chain: Vec<&Path> = folder.ancestors().take_while(|p| p.starts_with(root)).collect();
        chain.reverse();
        let mut merged = toml::Table::new();
        for dir in chain {
            let file = dir.join(DEFAULTS_FILE);
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let invalid = |line: usize, message: String| CatalogError::Header {
                file: file.clone(),
                line,
                message,
            };
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                invalid(
                    e.span().map(|s| line_of(&text, s.start)).unwrap_or(1),
                    e.message().into(),
                )
            })?;
            for (kind, value) in table {
                if !matches!(kind.as_str(), "tag" | "measure" | "state") || !value.is_table() {
                    let message =
                        format!("unknown table `{kind}`: defaults are given per job kind, [tag], [measure] or [state]");
                    return Err(invalid(header_line_mentioning(&text, &kind), message));
                }
                let mut value = value;
                if let Some(deeper) = merged.remove(&kind) {
                    // The deeper file wins: fill it with what the outer ones say.
                    fill_missing(&mut value, &deeper);
                }
                merged.insert(kind, value);
            }
        }
        Ok(Defaults(merged))
    }

    /// The defaults for a job of `kind` (its header's `kind`, `tag` when absent).
    fn of_kind(&self, kind: &str) -> Option<&toml::Value> {
        self.0.get(kind)
    }
}

/// Copy into `target` every key of `defaults` it lacks; tables present in both merge.
fn fill_missing(target: &mut toml::Value, defaults: &toml::Value) {
    let (Some(target), Some(defaults)) = (target.as_table_mut(), defaults.as_table()) else {
        return;
    };
    for (key, value) in defaults {
        match target.get_mut(key) {
            Some(existing) => fill_missing(existing, value),
            None => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

pub(super) fn parse(file: &Path, text: &str, defaults: &Defaults) -> Result<ParsedFile, CatalogError> {
    let mut header_text = String::new();
    let mut header_lines = 0;
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("--") else {
            break;
        };
        header_text.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        header_text.push('\n');
        header_lines += 1;
    }
    if header_lines == 0 {
        return Err(CatalogError::Header {
            file: file.to_path_buf(),
            line: 1,
            message: "missing header: a job file starts with `-- name = \"...\"` comment lines".into(),
        });
    }
    let header_error = |e: toml::de::Error| CatalogError::Header {
        file: file.to_path_buf(),
        line: e.span().map(|s| line_of(&header_text, s.start)).unwrap_or(1),
        message: e.message().to_string(),
    };
    // The header alone must be valid (errors point at its lines); then the folder's
    // defaults fill what it leaves out.
    let header: Header = toml::from_str(&header_text).map_err(header_error)?;
    let kind = toml::Value::try_from(header.kind).map_err(|e| CatalogError::Header {
        file: file.to_path_buf(),
        line: 1,
        message: e.to_string(),
    })?;
    let header = match kind.as_str().and_then(|kind| defaults.of_kind(kind)) {
        None => header,
        Some(kind_defaults) => {
            let mut value: toml::Value = toml::from_str(&header_text).map_err(header_error)?;
            fill_missing(&mut value, kind_defaults);
            value.try_into().map_err(|e: toml::de::Error| CatalogError::Header {
                file: file.to_path_buf(),
                line: 1,
                message: format!("with the defaults of {DEFAULTS_FILE}: {}", e.message()),
            })?
        }
    };
    let body = text.lines().skip(header_lines).collect::<Vec<_>>().join("\n");
    Ok(ParsedFile {
        header,
        header_lines,
        header_text,
        body,
    })
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// 1-based line of the header that mentions `needle` (falls back to line 1).
pub(super) fn header_line_mentioning(header_text: &str, needle: &str) -> usize {
    header_text
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// Every `{{name}}` in `body` with its 0-based line within the body.
pub(super) fn placeholders(body: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (line_no, line) in body.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else { break };
            found.push((after[..end].trim().to_string(), line_no));
            rest = &after[end + 2..];
        }
    }
    found
}

/// Replace each `{{name}}` by `render(name)` (names already validated).
pub(super) fn substitute(body: &str, render: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                out.push_str(&render(after[..end].trim()));
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_substitutes_placeholders() {
        let body = "SELECT {{a}} + {{ b }}\nFROM t WHERE x > {{a}}";
        assert_eq!(
            placeholders(body),
            vec![("a".into(), 0), ("b".into(), 0), ("a".into(), 1)]
        );
        assert_eq!(
            substitute(body, |n| n.to_uppercase()),
            "SELECT A + B\nFROM t WHERE x > A"
        );
    }

    #[test]
    fn header_error_points_at_the_line() {
        let text = "-- name = \"x\"\n-- description = \"d\"\n-- inputs = [\"a\",\nSELECT 1";
        let err = parse(Path::new("x.sql"), text, &Defaults::default())
            .err()
            .expect("bad header");
        match err {
            CatalogError::Header { line, .. } => assert_eq!(line, 3),
            other => panic!("unexpected {other}"),
        }
    }
}
