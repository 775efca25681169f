//! The demo on the embedded default: generate a sample landing zone in a local folder, run
//! the pipeline on it and summarise the published table.
//!
//! Owns: the demo's defaults and its printed summary. Must not: do any stage's work; it
//! calls `generate`, `run` and `publish` like any user would.

use std::fmt::Write;
use std::path::PathBuf;

use arrow::array::{Array, Int64Array, StringArray};
use chrono::{Duration, Utc};

use crate::app::error::Error;
use crate::app::report::RunReport;
use crate::config::Settings;
use crate::generate::{self, GenerateOptions, GenerateSummary};
use crate::publish::tasks::{task_report, TaskReport};
use crate::publish::{query_published, TAGS_TABLE};
use crate::storage::Location;

pub struct DemoOptions {
    pub dir: PathBuf,
    pub customers: usize,
    pub days: u32,
    pub seed: u64,
}

pub struct DemoResult {
    pub generated: GenerateSummary,
    pub report: RunReport,
    /// (tag, value, customers), read back from the published Delta table.
    pub segments: Vec<(String, String, i64)>,
    /// The marketing tasks of the generated data (`task_results`).
    pub tasks: TaskReport,
    pub table_path: PathBuf,
}

/// Generate data ending yesterday, run as of now, read the segment sizes back.
pub async fn demo(options: &DemoOptions, mut settings: Settings) -> Result<DemoResult, Error> {
    let no_options = Default::default();
    let landing = Location::parse(&options.dir.join("landing").to_string_lossy(), &no_options)?;
    let warehouse = Location::parse(&options.dir.join("warehouse").to_string_lossy(), &no_options)?;
    let generated = generate::generate(
        &landing,
        &GenerateOptions {
            customers: options.customers,
            days: options.days,
            seed: options.seed,
            end: (Utc::now() - Duration::days(1)).date_naive(),
            bad_input: true,
        },
    )
    .await?;
    settings.landing = Some(landing);
    settings.warehouse = Some(warehouse.clone());
    settings.as_of = Utc::now();
    let report = crate::app::run::run(&settings).await?;
    let batches = query_published(
        &warehouse,
        TAGS_TABLE,
        None,
        "SELECT tag, value, COUNT(*) AS customers FROM customer_tags GROUP BY tag, value ORDER BY tag, value",
    )
    .await?;
    let mut segments = Vec::new();
    for batch in &batches {
        let tags = batch.column(0).as_any().downcast_ref::<StringArray>().expect("tag");
        let values = batch.column(1).as_any().downcast_ref::<StringArray>().expect("value");
        let counts = batch.column(2).as_any().downcast_ref::<Int64Array>().expect("count");
        for i in 0..batch.num_rows() {
            segments.push((tags.value(i).to_string(), values.value(i).to_string(), counts.value(i)));
        }
    }
    let tasks = task_report(&warehouse, None, None).await?;
    let table_path = warehouse.url.to_file_path().unwrap_or_default().join(TAGS_TABLE);
    Ok(DemoResult {
        generated,
        report,
        segments,
        tasks,
        table_path,
    })
}

impl DemoResult {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let events: usize = self.generated.events.values().sum();
        let files: usize = self.generated.files.values().sum();
        let _ = writeln!(w, "Generated {events} events in {files} landing files.\n");
        out.push_str(&self.report.render());
        let w = &mut out;
        let _ = writeln!(
            w,
            "\nSegment sizes in the published table (customers per tag and value):\n"
        );
        let _ = writeln!(w, "  {:<20} {:<28} {:>9}", "tag", "value", "customers");
        let mut last_tag = "";
        for (tag, value, count) in &self.segments {
            let shown = if tag == last_tag { "" } else { tag.as_str() };
            let _ = writeln!(w, "  {:<20} {:<28} {:>9}", shown, value, count);
            last_tag = tag;
        }
        let _ = writeln!(
            w,
            "\nDid the marketing tasks work? task_results per week of the first send (`tagflow tasks`):\n"
        );
        let _ = writeln!(
            w,
            "  {:<10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>12}",
            "week", "tasks", "sent", "replied", "ordered", "order%", "paid_amount"
        );
        for week in self.tasks.weeks.iter().take(6) {
            let f = &week.figures;
            let _ = writeln!(
                w,
                "  {:<10} {:>6} {:>8} {:>8} {:>8} {:>7.1}% {:>12.2}",
                week.period,
                week.tasks,
                f.sent,
                f.replied,
                f.ordered,
                100.0 * f.order_rate,
                f.paid_amount
            );
        }
        let path = self.table_path.display();
        let _ = writeln!(
            w,
            r#"
Open the table from other tools:

  Python (pip install deltalake pandas):
    from deltalake import DeltaTable
    DeltaTable("{path}").to_pandas()

  polars (pip install polars deltalake):
    import polars as pl
    pl.read_delta("{path}")

  DuckDB:
    INSTALL delta; LOAD delta;
    SELECT tag, value, count(*) FROM delta_scan('{path}') GROUP BY ALL ORDER BY ALL;

Run `tagflow run` again on the same warehouse (incremental: only the tags that changed are
rewritten) and see the versions and the change feed with `tagflow snapshots` and `tagflow segments`, both with
--warehouse {warehouse}.
"#,
            warehouse = self
                .table_path
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        out
    }
}
