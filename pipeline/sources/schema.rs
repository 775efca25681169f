//! Event stream schemas, declared in `schemas/<stream>.toml` and read at run time.
//!
//! Owns: the declared columns of each landing stream, their target Arrow types and the
//! row rules (nullability, allowed values, bounds, event_time sanity).
//! Must not: read landing files (that is `sources`) or know any tag logic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Name of the column every stream gets after reading: the UTC day of `event_time`,
/// as days since 1970-01-01. Tag SQL compares it with `{{as_of_day}}` for day windows.
pub const EVENT_DAY: &str = "event_day";

/// The three columns every stream must declare.
pub const KEY_COLUMNS: [&str; 3] = ["event_id", "customer_id", "event_time"];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema folder {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("no stream schemas (*.toml) found in {0}")]
    Empty(PathBuf),
}

/// Column types a schema may declare; the Arrow type each is normalised to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Utf8,
    Int32,
    Float64,
    Timestamp,
}

impl ColumnType {
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    /// Whether a writer's Arrow type can be normalised to this type
    /// (the accepted writer variants of the input contract).
    pub fn accepts(self, source: &DataType) -> bool {
        use DataType::*;
        match (self, source) {
            // Binary without a UTF8 annotation: older Hive/Impala writers. Invalid UTF-8 makes the row bad.
            (ColumnType::Utf8, Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView) => true,
            (ColumnType::Utf8, Dictionary(_, value)) => {
                matches!(**value, Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView)
            }
            (ColumnType::Int32, t) => t.is_integer(),
            (ColumnType::Float64, t) => {
                t.is_floating() || t.is_integer() || matches!(t, Decimal128(..) | Decimal256(..))
            }
            (ColumnType::Timestamp, Timestamp(..)) => true,
            _ => false,
        }
    }
}

/// One declared column and its row rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// If set, a non-null value outside this list makes the row bad.
    pub allowed: Option<Vec<String>>,
    /// If set, a value `<=` this bound makes the row bad.
    pub greater_than: Option<f64>,
    /// If set, a value `<` this bound makes the row bad.
    pub at_least: Option<f64>,
}

fn default_true() -> bool {
    true
}

/// One stream's schema file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSchema {
    pub stream: String,
    /// Rows with an earlier event_time are bad.
    pub event_time_not_before: DateTime<Utc>,
    /// Rows whose event_time is more than this many hours after the file landed are bad.
    pub event_time_max_ahead_of_ingest_hours: i64,
    pub columns: Vec<ColumnSpec>,
}

impl StreamSchema {
    /// The normalised Arrow schema of the stream as the tag jobs see it:
    /// declared columns in declared order, then [`EVENT_DAY`].
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.column_type.arrow_type(), c.nullable))
            .collect();
        fields.push(Field::new(EVENT_DAY, DataType::Int32, false));
        Arc::new(Schema::new(fields))
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for column in &self.columns {
            if !seen.insert(column.name.as_str()) {
                return Err(format!("column '{}' declared twice", column.name));
            }
            if column.name == EVENT_DAY {
                return Err(format!("column name '{EVENT_DAY}' is reserved (added by the reader)"));
            }
            let numeric = matches!(column.column_type, ColumnType::Int32 | ColumnType::Float64);
            if (column.greater_than.is_some() || column.at_least.is_some()) && !numeric {
                return Err(format!(
                    "column '{}': bounds apply to numeric columns only",
                    column.name
                ));
            }
            if column.allowed.is_some() && column.column_type != ColumnType::Utf8 {
                return Err(format!(
                    "column '{}': `allowed` applies to utf8 columns only",
                    column.name
                ));
            }
        }
        for (key, ty) in KEY_COLUMNS
            .iter()
            .zip([ColumnType::Utf8, ColumnType::Utf8, ColumnType::Timestamp])
        {
            match self.columns.iter().find(|c| c.name == *key) {
                Some(c) if c.column_type == ty && !c.nullable => {}
                Some(_) => return Err(format!("column '{key}' must be declared as non-nullable {ty:?}")),
                None => return Err(format!("required column '{key}' is not declared")),
            }
        }
        if self.event_time_max_ahead_of_ingest_hours < 0 {
            return Err("event_time_max_ahead_of_ingest_hours must be >= 0".into());
        }
        Ok(())
    }
}

/// All stream schemas, by stream name.
#[derive(Debug, Clone)]
pub struct Schemas {
    pub streams: BTreeMap<String, StreamSchema>,
}

impl Schemas {
    /// Read every `*.toml` in `dir`; the stream name must match the file name.
    pub fn load(dir: &Path) -> Result<Self, SchemaError> {
        let io = |source| SchemaError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        let mut streams = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(io)?;
            let invalid = |message: String| SchemaError::Invalid {
                file: file.clone(),
                message,
            };
            let schema: StreamSchema = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            if schema.stream != stem {
                return Err(invalid(format!(
                    "stream '{}' must be declared in {}.toml",
                    schema.stream, schema.stream
                )));
            }
            schema.validate().map_err(invalid)?;
            streams.insert(schema.stream.clone(), schema);
        }
        if streams.is_empty() {
            return Err(SchemaError::Empty(dir.to_path_buf()));
        }
        Ok(Schemas { streams })
    }
}
