//! Landing layout and delivery

use super::*;

pub(super) struct Output<'a> {
    pub(super) landing: &'a Location,
    pub(super) world: &'a World,
    pub(super) summary: GenerateSummary,
    pub(super) objects_written: usize,
}

impl<'a> Output<'a> {
    pub(super) fn new(landing: &'a Location, world: &'a World) -> Self {
        let mut summary = GenerateSummary::default();
        for stream in Stream::ALL {
            summary.files.insert(stream.name().to_string(), 0);
            summary.events.insert(stream.name().to_string(), 0);
        }
        Output {
            landing,
            world,
            summary,
            objects_written: 0,
        }
    }

    pub(super) async fn store(&mut self, relative: &str, payload: PutPayload) -> Result<(), GenerateError> {
        let path = self.landing.path(relative);
        self.landing
            .store
            .put_opts(&path, payload, PutOptions::default())
            .await
            .map_err(|source| GenerateError::Storage {
                path: self.landing.display(&path),
                source,
            })?;
        self.objects_written += 1;
        if self.objects_written.is_multiple_of(PROGRESS_EVERY_FILES) {
            info!(
                files = self.objects_written,
                last = relative,
                "generate: writing landing files"
            );
        }
        Ok(())
    }

    /// Encode and store one event file; re-send it under a second name if asked.
    pub(super) async fn write_file<R: EventRow>(
        &mut self,
        relative: &str,
        rows: &[R],
        bad: &BadRows,
        variant: WriterVariant,
        resend: bool,
    ) -> Result<(), GenerateError> {
        let payload = PutPayload::from(encode_file(rows, bad, variant, self.world)?);
        let copies = if resend { 2 } else { 1 };
        self.store(relative, payload.clone()).await?;
        if resend {
            let resent = relative.replace(".parquet", "-resend.parquet");
            self.store(&resent, payload).await?;
            self.summary.duplicate_files += 1;
        }
        let stream = R::STREAM.name();
        *self.summary.files.entry(stream.to_string()).or_default() += copies;
        *self.summary.events.entry(stream.to_string()).or_default() += copies * rows.len();
        self.summary.bad_rows += bad.len();
        Ok(())
    }

    pub(super) async fn write_corrupt_file(&mut self) -> Result<(), GenerateError> {
        let relative = format!(
            "clicks/dt={}/corrupt-0000.parquet",
            self.world.dates[self.world.last as usize]
        );
        self.store(&relative, PutPayload::from_static(CORRUPT_FILE_BYTES))
            .await?;
        self.summary.bad_files += 1;
        Ok(())
    }
}

/// Write one stream, day by day: on-time files, occasional re-sends and repeated events, and
/// the late events that other days handed over to this day's folder.
pub(super) async fn write_stream<R: EventRow>(
    out: &mut Output<'_>,
    buckets: Vec<Vec<R>>,
    bad_plan: &BadPlan,
) -> Result<(), GenerateError> {
    let world = out.world;
    let stream = R::STREAM;
    let mut rng = world.rng(stream.salt());
    let mut late: Vec<Vec<R>> = (0..buckets.len()).map(|_| Vec::new()).collect();
    let mut previous_tail: Vec<R> = Vec::new();

    for (day, mut rows) in buckets.into_iter().enumerate() {
        let dt = &world.dates[day];
        let day = day as u32;
        sort_rows(&mut rows);
        let rows = hold_back_late(&mut rng, world, day, rows, &mut late);
        let planned_bad = bad_plan.get(&(stream, day)).map_or(&[][..], Vec::as_slice);

        for (part, chunk) in split_into_files(&mut rng, &rows).into_iter().enumerate() {
            let mut file_rows: Vec<R> = Vec::with_capacity(chunk.len() + REPEAT_TAIL_MAX);
            // At-least-once delivery: a writer restarts and repeats the end of its last file.
            if !previous_tail.is_empty() && rng.random_bool(REPEAT_TAIL_SHARE) {
                let repeat = between(&mut rng, 1, previous_tail.len() as u32) as usize;
                file_rows.extend_from_slice(&previous_tail[previous_tail.len() - repeat..]);
            }
            let repeated = file_rows.len();
            file_rows.extend_from_slice(chunk);

            let bad = if part == 0 {
                BadRows::place(planned_bad, repeated, file_rows.len())
            } else {
                BadRows::default()
            };
            // Files with bad rows are never re-sent, so every bad row is written exactly once.
            let resend = bad.is_empty() && rng.random_bool(RESEND_SHARE);
            let variant = WriterVariant::pick(&mut rng);
            let relative = format!("{}/dt={dt}/part-{part:04}.parquet", stream.name());
            out.write_file(&relative, &file_rows, &bad, variant, resend).await?;
            previous_tail = tail(&file_rows, &bad);
        }

        let mut arrivals = std::mem::take(&mut late[day as usize]);
        if !arrivals.is_empty() {
            sort_rows(&mut arrivals);
            let variant = WriterVariant::pick(&mut rng);
            let relative = format!("{}/dt={dt}/late-0000.parquet", stream.name());
            out.write_file(&relative, &arrivals, &BadRows::default(), variant, false)
                .await?;
            out.summary.late_files += 1;
            previous_tail = tail(&arrivals, &BadRows::default());
        }
    }
    Ok(())
}

pub(super) fn sort_rows<R: EventRow>(rows: &mut [R]) {
    rows.sort_unstable_by_key(|r| (r.time(), r.id()));
}

/// Move about LATE_SHARE of a day's events to the late file of a later day (1-10 days later,
/// never after `end`); return the rest.
pub(super) fn hold_back_late<R: EventRow>(
    rng: &mut ChaCha8Rng,
    world: &World,
    day: u32,
    rows: Vec<R>,
    late: &mut [Vec<R>],
) -> Vec<R> {
    let max_delay = (world.last - day).min(LATE_MAX_DAYS);
    if max_delay == 0 {
        return rows;
    }
    let mut on_time = Vec::with_capacity(rows.len());
    for row in rows {
        if rng.random_bool(LATE_SHARE) {
            let delay = between(rng, 1, max_delay);
            late[(day + delay) as usize].push(row);
        } else {
            on_time.push(row);
        }
    }
    on_time
}

/// 1-3 consecutive time slices per day; one file for small days; none for empty ones.
pub(super) fn split_into_files<'r, R>(rng: &mut ChaCha8Rng, rows: &'r [R]) -> Vec<&'r [R]> {
    if rows.is_empty() {
        return Vec::new();
    }
    let files = if rows.len() < SMALL_DAY_ROWS {
        1
    } else {
        let most = (rows.len() / MIN_FILE_ROWS).max(1) as u32;
        between(rng, 1, MAX_FILES_PER_DAY).min(most) as usize
    };
    rows.chunks(rows.len().div_ceil(files)).collect()
}

/// The last rows of a file, which the next file may repeat. Bad rows are left out: a bad row
/// must not come back clean under the same event_id.
pub(super) fn tail<R: Copy>(rows: &[R], bad: &BadRows) -> Vec<R> {
    let from = rows.len().saturating_sub(REPEAT_TAIL_MAX);
    (from..rows.len())
        .filter(|&i| bad.kind_at(i).is_none())
        .map(|i| rows[i])
        .collect()
}
