//! Human output of the commands: tables of text for a terminal, and JSON for scripts.
//!
//! Owns: the text layout of `jobs list`, `quarantine list`, `snapshots`, `segments`, `tasks`, `forget`, and of
//! query rows. Must not: compute anything; it lays out what the library returned.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use tagflow::app::forget::ForgetReport;
use tagflow::jobs::Catalog;
use tagflow::publish::snapshots::{SegmentFlow, Snapshot};
use tagflow::publish::tasks::{TaskFigures, TaskReport};
use tagflow::sources::quarantine::Entry;
use tagflow::storage::erasure::{ErasureRequest, RequestStatus};

/// `value` as pretty JSON with `--json`, else the text `render` makes.
pub fn report<T: serde::Serialize>(value: &T, json: bool, render: impl FnOnce() -> String) {
    match json {
        true => println!("{}", serde_json::to_string_pretty(value).expect("output serialises")),
        false => print!("{}", render()),
    }
}

/// `tagflow jobs list`: jobs in run order.
pub fn jobs(catalog: &Catalog) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<10} {:<40} description\n",
        "job", "kind", "family", "reads"
    );
    for job in &catalog.jobs {
        let reads: Vec<&str> = job.reads().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<10} {:<40} {}",
            job.name,
            format!("{:?}", job.kind).to_lowercase(),
            job.family.as_deref().unwrap_or("-"),
            reads.join(","),
            job.description
        );
    }
    out
}

/// `tagflow quarantine list`: each quarantined file or rows with its reason.
pub fn quarantine(entries: &[Entry], url: &str) -> String {
    if entries.is_empty() {
        return format!("quarantine is empty ({url})\n");
    }
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "{:<7} {:<5} rows={:<6} {}\n        reason: {}\n        kept at: {}",
            e.stream,
            format!("{:?}", e.kind).to_lowercase(),
            e.rows,
            e.source,
            e.reason,
            e.data
        );
    }
    out
}

/// `tagflow snapshots`: one line per version of `customer_tags`.
pub fn snapshots(list: &[Snapshot]) -> String {
    let mut out = format!(
        "{:>7}  {:<25} {:<13} {:<25} {:>9} {:>9} {:>8} {:>8} {:>8}  rows per tag\n",
        "version", "committed", "operation", "as_of", "rows", "customers", "entered", "exited", "changed"
    );
    for s in list {
        let time = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into())
        };
        let count = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        let changes = s.changes.unwrap_or_default();
        let per_tag: Vec<String> = s
            .segments
            .iter()
            .map(|(tag, values)| format!("{tag}={}", values.values().sum::<u64>()))
            .collect();
        let _ = writeln!(
            out,
            "{:>7}  {:<25} {:<13} {:<25} {:>9} {:>9} {:>8} {:>8} {:>8}  {}",
            s.version,
            time(s.committed_at),
            s.operation,
            time(s.as_of),
            count(s.rows),
            count(s.customers),
            count(s.changes.map(|_| changes.entered as u64)),
            count(s.changes.map(|_| changes.exited as u64)),
            count(s.changes.map(|_| changes.changed as u64)),
            per_tag.join(" ")
        );
    }
    out
}

/// `tagflow segments`: size, inflow and outflow per version, tag and value.
pub fn segments(rows: &[SegmentFlow]) -> String {
    let mut out = format!(
        "{:>7}  {:<25} {:<20} {:<20} {:>9} {:>8} {:>8}\n",
        "version", "as_of", "tag", "value", "size", "inflow", "outflow"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>7}  {:<25} {:<20} {:<20} {:>9} {:>8} {:>8}",
            r.version,
            r.as_of.to_rfc3339_opts(SecondsFormat::Secs, true),
            r.tag,
            r.value,
            r.size,
            r.inflow,
            r.outflow
        );
    }
    out
}

/// The tasks report: totals per week and per day, then each task.
pub fn tasks(report: &TaskReport) -> String {
    let header = format!(
        "{:>7} {:>7} {:>7} {:>7} {:>12} {:>11} {:>12} {:>7} {:>7}",
        "sent", "replied", "ordered", "orders", "amount", "paid_orders", "paid_amount", "reply%", "order%"
    );
    let figures = |f: &TaskFigures| {
        format!(
            "{:>7} {:>7} {:>7} {:>7} {:>12.2} {:>11} {:>12.2} {:>7.1} {:>7.1}",
            f.sent,
            f.replied,
            f.ordered,
            f.orders,
            f.order_amount,
            f.paid_orders,
            f.paid_amount,
            100.0 * f.reply_rate,
            100.0 * f.order_rate
        )
    };
    let mut out = String::new();
    if report.tasks.is_empty() {
        return "no marketing tasks in task_results (no `sent` touch yet, or no run published since)\n".into();
    }
    let _ = writeln!(out, "task_results as of {}", report.as_of.as_deref().unwrap_or("?"));
    for (title, periods) in [("per week (from Monday)", &report.weeks), ("per day", &report.days)] {
        let _ = writeln!(out, "\n{title}\n{:<10} {:>5} {header}", "period", "tasks");
        for p in periods.iter() {
            let _ = writeln!(out, "{:<10} {:>5} {}", p.period, p.tasks, figures(&p.figures));
        }
    }
    let _ = writeln!(
        out,
        "\ntasks\n{:<28} {:<12} {:<20} {header}",
        "task_id", "type", "first_sent_at"
    );
    for t in &report.tasks {
        let _ = writeln!(
            out,
            "{:<28} {:<12} {:<20} {}",
            t.task_id,
            t.task_type.as_deref().unwrap_or("-"),
            t.first_sent_at.get(..19).unwrap_or(&t.first_sent_at),
            figures(&t.figures)
        );
    }
    out
}

/// Rows as tab-separated text with a header, or as a JSON array.
pub fn rows(batches: &[arrow::record_batch::RecordBatch], json: bool) {
    if json {
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        let batches: Vec<&arrow::record_batch::RecordBatch> = batches.iter().collect();
        writer.write_batches(&batches).expect("rows serialise");
        writer.finish().expect("rows serialise");
        let out = writer.into_inner();
        println!(
            "{}",
            if out.is_empty() {
                "[]"
            } else {
                std::str::from_utf8(&out).expect("utf8")
            }
        );
        return;
    }
    if let Some(first) = batches.first() {
        let names: Vec<&str> = first.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        println!("{}", names.join("\t"));
    }
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap_or_default())
                .collect();
            println!("{}", cells.join("\t"));
        }
    }
}

/// `tagflow forget`: what was removed where, what is left upstream.
pub fn forget(report: &ForgetReport) -> String {
    let mut out = format!(
        "forgot {} customer(s) ({} already forgotten) in {} ms; request(s) {}\n",
        report.customers,
        report.already_forgotten,
        report.duration_ms,
        report.requests.join(", ")
    );
    for (table, count) in &report.removed {
        let files = match report.files_rewritten.get(table) {
            Some(files) => format!(" ({files} data files rewritten)"),
            None => String::new(),
        };
        out.push_str(&format!("  {table:<24} {count} removed{files}\n"));
    }
    let stages: Vec<String> = report.stages_ms.iter().map(|(s, ms)| format!("{s} {ms} ms")).collect();
    out.push_str(&format!("  steps: {}\n", stages.join(", ")));
    for (table, version) in &report.first_readable_version {
        out.push_str(&format!("  {table:<24} versions before {version} purged\n"));
    }
    if let Some(until) = report.history_until {
        out.push_str(&format!(
            "  older table versions still hold them until a vacuum after {} (`tagflow compact`), or run with --purge-history\n",
            until.to_rfc3339()
        ));
    }
    match report.landing_files.len() {
        0 => out.push_str("  no landing file holds them\n"),
        n => {
            out.push_str(&format!(
                "  {n} landing file(s) still hold them; tagflow never modifies the landing zone: ask its owner to delete them\n"
            ));
            for file in &report.landing_files {
                out.push_str(&format!("    {file}\n"));
            }
        }
    }
    out
}

/// `tagflow forget --status`: one line per request.
pub fn erasures(requests: &[ErasureRequest]) -> String {
    if requests.is_empty() {
        return "no erasure requests\n".into();
    }
    let mut out = String::new();
    for r in requests {
        let complete = match (r.status, r.versions_gone.is_empty(), r.history_until) {
            (RequestStatus::Pending, ..) => "pending: run `tagflow forget --resume`".to_string(),
            (_, false, _) => "complete, history purged".to_string(),
            (_, true, Some(until)) => format!(
                "current versions erased; older versions until a vacuum after {}",
                until.to_rfc3339()
            ),
            (_, true, None) => "complete".to_string(),
        };
        out.push_str(&format!(
            "{}  {} customer(s)  requested {}  {}  ({} landing file(s) left upstream)\n",
            r.id,
            r.customers,
            r.requested_at.to_rfc3339(),
            complete,
            r.landing_files.len()
        ));
    }
    out
}
