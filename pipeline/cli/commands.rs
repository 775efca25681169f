//! What each subcommand does: resolve its settings, call the application, print the result.
//!
//! Owns: the mapping from a parsed command to the application call and its output (human
//! text through [`super::render`], or JSON with `--json`). Must not: hold logic of its own;
//! anything a script could want lives in the library.

use std::path::PathBuf;
use std::sync::Arc;

use tagflow::app::metrics::FollowMetrics;
use tagflow::app::report::RunReport;
use tagflow::app::{backfill, cluster, demo, follow, forget, prepare, preview, run};
use tagflow::config::{CliSettings, ConfigError, Settings};
use tagflow::generate::{generate, GenerateOptions};
use tagflow::jobs::CatalogError;
use tagflow::publish::{runs, snapshots, tags, tasks};
use tagflow::sources::quarantine::Quarantine;
use tagflow::storage::{hold, progress};
use tagflow::Error;

use super::args::{ClusterCommand, Command, JobsCommand, Locations, QuarantineCommand};
use super::render;
use super::signals::StopSignals;

/// Run one parsed command. `config` is the global `--config`.
///
/// One arm per subcommand, in the order `--help` lists them; each only resolves settings,
/// calls the application and renders, so this match is the CLI's table of contents. Arms
/// with more to do call a function of their own (`follow`, `jobs`).
pub async fn execute(config: Option<PathBuf>, command: Command) -> Result<(), Error> {
    let config = &config;
    match command {
        Command::Run {
            locations,
            as_of,
            json,
            jobs,
            full,
            force,
            engine,
        } => {
            let mut settings = settings_on(config, locations, as_of, engine)?;
            settings.jobs = jobs;
            settings.full = full;
            settings.force = force;
            settings.progress = progress::wanted(json);
            let report = run::run(&settings).await?;
            render::report(&report, json, || report.render());
        }
        Command::Follow {
            locations,
            interval,
            json,
            metrics_listen,
            force,
        } => {
            // First, before any work: a signal during the first batch must stop the session
            // cleanly, not kill it.
            let stop = StopSignals::install()?;
            let mut settings = settings(config, locations, None)?;
            settings.force = force;
            follow(&settings, interval, json, metrics_listen, stop).await?;
        }
        Command::Backfill {
            locations,
            from,
            to,
            every,
            force,
            json,
            engine,
        } => {
            let mut settings = settings_on(config, locations, None, engine)?;
            settings.force = force;
            settings.progress = progress::wanted(json);
            let range = backfill::Range::new(from, to, every)?;
            let report = backfill::backfill(&settings, range, |_, _| {}).await?;
            render::report(&report, json, || report.render());
        }
        Command::Preview {
            file,
            locations,
            sample,
            json,
        } => {
            let settings = settings(config, locations, None)?;
            let preview = preview::preview(&settings, &file, sample).await?;
            render::report(&preview, json, || preview.render());
        }
        Command::Generate {
            out,
            customers,
            days,
            seed,
            end,
            bad_input,
        } => {
            let locations = Locations {
                landing: out,
                ..Default::default()
            };
            let settings = settings(config, locations, None)?;
            let landing = settings.landing()?;
            prepare::check_locations(&[landing]).await?;
            let end = end.unwrap_or_else(|| (chrono::Utc::now() - chrono::Duration::days(1)).date_naive());
            let options = GenerateOptions {
                customers,
                days,
                seed,
                end,
                bad_input,
            };
            let summary = generate(landing, &options).await?;
            render::report(&summary, true, String::new);
        }
        Command::Demo {
            dir,
            customers,
            days,
            seed,
        } => {
            let settings = settings(config, Locations::default(), None)?;
            let options = demo::DemoOptions {
                dir,
                customers,
                days,
                seed,
            };
            let result = demo::demo(&options, settings).await?;
            print!("{}", result.render());
        }
        Command::Jobs { command } => jobs(config, command).await?,
        Command::Cluster { command } => cluster(config, command).await?,
        Command::Quarantine { command } => {
            let QuarantineCommand::List { json, locations } = command;
            let settings = settings(config, locations, None)?;
            let quarantine = Quarantine::new(settings.warehouse()?);
            let entries = quarantine.list().await?;
            match json {
                true => render::report(&entries, true, String::new),
                false => print!("{}", render::quarantine(&entries, &quarantine.url())),
            }
        }
        Command::Tags {
            customer_id,
            locations,
            version,
            at,
            json,
        } => {
            let settings = settings(config, locations, None)?;
            let warehouse = settings.warehouse()?;
            let version = match at {
                Some(at) => Some(snapshots::version_at(warehouse, parse_time("--at", &at)?).await?),
                None => version,
            };
            let batches = tags::customer_rows(warehouse, &customer_id, version).await?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                eprintln!("no tags for customer '{customer_id}'");
            }
            render::rows(&batches, json);
        }
        Command::Serve {
            locations,
            listen,
            pg_listen,
        } => {
            // First, before any work: see Follow.
            let stop = StopSignals::install()?;
            let settings = Settings::resolve(&CliSettings {
                config: config.clone(),
                warehouse: locations.warehouse,
                listen,
                serve_token: std::env::var("TAGFLOW_SERVE_TOKEN").ok(),
                pg_listen,
                pg_password: std::env::var("TAGFLOW_PG_PASSWORD").ok(),
                ..Default::default()
            })?;
            let warehouse = settings.warehouse()?.clone();
            prepare::check_locations(&[&warehouse]).await?;
            hold::point("serve").await;
            let server = tagflow::serve::start(warehouse, settings.serve, stop.received()).await?;
            // Scripts and tests read the bound address (useful with port 0) from this line.
            println!("listening on http://{}", server.addr);
            if let Some(addr) = server.pg_addr {
                println!("listening on postgres://{addr}");
            }
            server.wait().await?;
        }
        Command::Compact { locations, json } => {
            let settings = settings(config, locations, None)?;
            let report = run::compact(&settings).await?;
            render::report(&report, json, || report.render());
        }
        Command::Snapshots { locations, json } => {
            let settings = settings(config, locations, None)?;
            let list = snapshots::list(settings.warehouse()?).await?;
            render::report(&list, json, || render::snapshots(&list));
        }
        Command::Segments {
            locations,
            since,
            tag,
            json,
        } => {
            let settings = settings(config, locations, None)?;
            let since = since.as_deref().map(|since| parse_time("--since", since)).transpose()?;
            let rows: Vec<snapshots::SegmentFlow> = snapshots::segments(settings.warehouse()?, since)
                .await?
                .into_iter()
                .filter(|r| tag.as_ref().is_none_or(|t| &r.tag == t))
                .collect();
            render::report(&rows, json, || render::segments(&rows));
        }
        Command::Forget {
            locations,
            customers,
            from_file,
            purge_history,
            resume,
            status,
            json,
        } => {
            let settings = settings(config, locations, None)?;
            if status {
                let requests = forget::status(&settings).await?;
                render::report(&requests, json, || render::erasures(&requests));
                return Ok(());
            }
            let mut ids = customers;
            if let Some(file) = from_file {
                ids.extend(forget::read_id_file(&file)?);
            }
            if ids.is_empty() && !resume {
                return Err(forget::ForgetError::Empty.into());
            }
            let report = forget::forget(&settings, ids, purge_history).await?;
            render::report(&report, json, || render::forget(&report));
        }
        Command::Tasks { locations, since, json } => {
            let settings = settings(config, locations, None)?;
            let since = since
                .as_deref()
                .map(|since| parse_day_or_time("--since", since))
                .transpose()?;
            let report = tasks::task_report(settings.warehouse()?, since, None).await?;
            render::report(&report, json, || render::tasks(&report));
        }
        Command::Runs { locations, limit, json } => {
            let settings = settings(config, locations, None)?;
            let batches = runs::latest(settings.warehouse()?, limit).await?;
            render::rows(&batches, json);
        }
    }
    Ok(())
}

/// `tagflow follow`: the metrics endpoint (if asked for) beside the session, each published
/// batch's report as a JSON line with `--json`.
async fn follow(
    settings: &Settings,
    interval: std::time::Duration,
    json: bool,
    metrics_listen: Option<std::net::SocketAddr>,
    stop: StopSignals,
) -> Result<(), Error> {
    let print = |report: &RunReport| {
        if json {
            println!("{}", serde_json::to_string(report).expect("report serialises"));
        }
    };
    let metrics = Arc::new(FollowMetrics::default());
    let endpoint = match metrics_listen {
        Some(listen) => {
            let (addr, task) = tagflow::app::metrics::serve(listen, metrics.clone()).await?;
            tracing::info!("metrics at http://{addr}/metrics");
            Some(task)
        }
        None => None,
    };
    let outcome = follow::follow(settings, interval, stop.received(), &metrics, print, chrono::Utc::now).await;
    if let Some(task) = endpoint {
        task.abort();
    }
    outcome.map(|_| ())
}

/// `tagflow jobs ...`: inspect the catalog.
async fn jobs(config: &Option<PathBuf>, command: JobsCommand) -> Result<(), Error> {
    let (JobsCommand::List { locations }
    | JobsCommand::Validate { locations }
    | JobsCommand::Show { locations, .. }
    | JobsCommand::Explain { locations, .. }) = &command;
    let settings = settings(config, locations.clone(), None)?;
    let project = prepare::prepare(&settings).await?;
    let catalog = &project.catalog;
    match command {
        JobsCommand::List { .. } => print!("{}", render::jobs(catalog)),
        JobsCommand::Show { job, .. } => {
            let found = catalog.jobs.iter().find(|j| j.name == job);
            let job = found.ok_or(CatalogError::UnknownJob { name: job.clone() })?;
            println!("{}", serde_json::to_string_pretty(job).expect("job serialises"));
            println!("\n{}", job.render_sql(settings.as_of).trim_start_matches('\n'));
        }
        JobsCommand::Explain { job, .. } => {
            let (logical, physical) = catalog.explain(&project.schemas, &job).await?;
            println!("logical plan:\n{logical}\n\nphysical plan:\n{physical}");
        }
        JobsCommand::Validate { .. } => println!(
            "ok: {} jobs in {} plan ({} tags)",
            catalog.jobs.len(),
            catalog.dir.display(),
            catalog.tags().count()
        ),
    }
    Ok(())
}

fn settings(config: &Option<PathBuf>, locations: Locations, as_of: Option<String>) -> Result<Settings, ConfigError> {
    settings_on(config, locations, as_of, None)
}

/// [`settings`] with `--engine`.
fn settings_on(
    config: &Option<PathBuf>,
    locations: Locations,
    as_of: Option<String>,
    engine: Option<String>,
) -> Result<Settings, ConfigError> {
    Settings::resolve(&CliSettings {
        config: config.clone(),
        landing: locations.landing,
        warehouse: locations.warehouse,
        as_of,
        sql_dir: locations.sql_dir,
        schemas_dir: locations.schemas_dir,
        engine,
        ..Default::default()
    })
}

/// `tagflow cluster ...`: a scheduler or an executor, until stopped.
async fn cluster(config: &Option<PathBuf>, command: ClusterCommand) -> Result<(), Error> {
    match command {
        ClusterCommand::Scheduler {
            locations,
            listen,
            executor_timeout,
        } => {
            let stop = StopSignals::install()?;
            let settings = settings(config, locations, None)?;
            let scheduler = cluster::Scheduler::bind(&settings, listen, executor_timeout).await?;
            // Scripts and tests read the bound address (useful with port 0) from this line.
            println!("listening on df://{}", scheduler.addr);
            scheduler.serve(stop.received()).await?;
        }
        ClusterCommand::Executor {
            locations,
            scheduler,
            listen,
            advertise,
            slots,
            work_dir,
            connect_timeout,
        } => {
            let settings = settings(config, locations, None)?;
            let slots = slots.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let options = cluster::ExecutorOptions {
                scheduler,
                listen,
                advertise,
                slots,
                work_dir,
                connect_timeout_secs: connect_timeout,
            };
            println!("executor on {listen}, {slots} slots");
            cluster::executor(&settings, options).await?;
        }
    }
    Ok(())
}

/// A UTC day (`YYYY-MM-DD`, from its midnight) or an RFC 3339 time given with `option`.
fn parse_day_or_time(option: &'static str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, ConfigError> {
    match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(day) => Ok(day.and_time(chrono::NaiveTime::MIN).and_utc()),
        Err(_) => parse_time(option, text),
    }
}

/// An RFC 3339 time given on the command line with `option`.
fn parse_time(option: &'static str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, ConfigError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| ConfigError::Time {
            option,
            value: text.to_string(),
        })
}
