//! Parquet benchmark: enriched events to Parquet files through gong-load's own row building and
//! writer ([`gong_load::parquet_writer::Spool`], what the loader runs for every range), beside the
//! ceiling measured in the same run: arrow-rs alone writing the very same Arrow batches with the
//! same writer properties (zstd level, row group size, statistics) to files. Then peak RSS of a
//! child process writing ranges of ~64, ~256 and ~512 MiB: memory must be bounded by the row group,
//! not by the file.
//!
//! `cargo build --release -p gong-benches && target/release/parquet-bench`
//! (`--quick` for the test suite: tiny counts, no assertion on time).

use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::RecordBatch;
use clap::Parser;
use gong_benches::{enriched_event, machine};
use gong_common::event::{content_id, EnrichedEvent};
use gong_load::parquet_writer::{Spool, WriterSettings, CHUNK_ROWS};
use gong_load::range_writer::ENCODE_CHUNK;
use gong_load::rows::{append_event, TableSet};
use gong_load::schema::Table;
use parquet::arrow::ArrowWriter;

#[derive(Parser)]
#[command(name = "parquet-bench")]
struct Args {
    /// Distinct enriched events encoded per throughput run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Repetitions of each throughput run (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Range sizes (MiB of Parquet) written by a child process for the peak-RSS table.
    #[arg(long, value_delimiter = ',', default_value = "64,256,512")]
    rss_mib: Vec<u64>,
    /// Rows per row group (`LOAD_ROW_GROUP_ROWS`).
    #[arg(long, default_value_t = 100_000)]
    row_group_rows: usize,
    /// A smaller row group also written at the largest range size, to show what bounds memory.
    #[arg(long, default_value_t = 10_000)]
    small_row_group_rows: usize,
    /// Zstandard level (`LOAD_ZSTD_LEVEL`).
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Tiny run for the test suite: 200 events, 1 and 4 MiB ranges.
    #[arg(long)]
    quick: bool,
    /// Internal: write a range of about this many MiB in this process and print its memory.
    #[arg(long, hide = true)]
    child_write_mib: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.events = 200;
        args.repeat = 1;
        args.rss_mib = vec![1, 4];
        args.small_row_group_rows = 2_000;
    }
    let settings = WriterSettings {
        row_group_rows: args.row_group_rows,
        zstd_level: args.zstd_level,
        spool_dir: None,
    };
    if let Some(mib) = args.child_write_mib {
        return child_write(&settings, mib);
    }

    println!("machine: {}", machine());
    println!(
        "parquet-bench: {} events, best of {}, row group {} rows, zstd {}, date {}",
        args.events,
        args.repeat,
        args.row_group_rows,
        args.zstd_level,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();
    throughput(&args, &settings)?;
    println!();
    peak_rss(&args)?;
    Ok(())
}

/// What one encoding run produced.
struct Run {
    elapsed: Duration,
    rows: usize,
    parquet_bytes: u64,
}

fn throughput(args: &Args, settings: &WriterSettings) -> anyhow::Result<()> {
    eprintln!("generating {} enriched events", args.events);
    let selector = gong_enrich::config::default_content_selector();
    let events: Vec<EnrichedEvent> = (0..args.events)
        .map(|index| {
            enriched_event(
                &(7_000_000_000_000_000_000u64 + index as u64).to_string(),
                index as u64 + 1,
                &selector,
            )
        })
        .collect();
    let payloads: Vec<Vec<u8>> = events.iter().map(EnrichedEvent::to_json).collect();
    let json_bytes: usize = payloads.iter().map(Vec::len).sum();

    // The batches the Spool hands to its writers, built once, outside any timing.
    let batches = batches_as_spool_builds_them(&events)?;

    let mut loader_runs = Vec::new();
    let mut cold_runs = Vec::new();
    let mut ceiling_runs = Vec::new();
    for _ in 0..args.repeat.max(1) {
        loader_runs.push(gong_load_run(settings, &payloads)?);
        cold_runs.push(gong_load_cold_run(settings, &events)?);
        ceiling_runs.push(arrow_alone_run(settings, &batches)?);
    }
    let loader = best(loader_runs);
    let cold = best(cold_runs);
    let ceiling = best(ceiling_runs);
    anyhow::ensure!(
        loader.rows == ceiling.rows && cold.rows == ceiling.rows,
        "the paths wrote different rows"
    );

    // Decoding JSON from GONG_ENRICHED comes before both; measured alone for context.
    let started = Instant::now();
    let mut decoded = 0usize;
    for payload in &payloads {
        decoded += EnrichedEvent::from_json(payload).map(|_| 1)?;
    }
    let decode_elapsed = started.elapsed();

    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    println!("| path | rows | Parquet MiB | time ms | rows/s | events/s | event JSON MiB/s | Parquet MiB/s | ratio to ceiling |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, run) in [
        (
            "gong-load: rows.rs + Spool, as the loader feeds it (chunks of 256 just decoded)",
            &loader,
        ),
        (
            "gong-load: rows.rs + Spool, all events decoded up front (cold in memory)",
            &cold,
        ),
        (
            "ceiling: arrow-rs ArrowWriter on the same batches",
            &ceiling,
        ),
    ] {
        let secs = run.elapsed.as_secs_f64();
        println!(
            "| {name} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} |",
            run.rows,
            mib(run.parquet_bytes as f64),
            secs * 1000.0,
            run.rows as f64 / secs,
            events.len() as f64 / secs,
            mib(json_bytes as f64) / secs,
            mib(run.parquet_bytes as f64) / secs,
            ceiling.elapsed.as_secs_f64() / secs,
        );
    }
    let decode_secs = decode_elapsed.as_secs_f64();
    println!(
        "| context: decode enriched JSON (EnrichedEvent::from_json) | — | — | {:.0} | — | {:.0} | {:.1} | — | — |",
        decode_secs * 1000.0,
        decoded as f64 / decode_secs,
        mib(json_bytes as f64) / decode_secs,
    );
    println!();
    println!(
        "{} rows per event over 6 tables; enriched JSON {:.0} bytes per event, Parquet {:.0} bytes per event",
        loader.rows as f64 / events.len() as f64,
        json_bytes as f64 / events.len() as f64,
        loader.parquet_bytes as f64 / events.len() as f64,
    );
    Ok(())
}

fn best(runs: Vec<Run>) -> Run {
    runs.into_iter()
        .min_by_key(|run| run.elapsed)
        .expect("at least one run")
}

/// gong-load's path as the loader drives it: events decoded from GONG_ENRICHED in chunks of
/// `ENCODE_CHUNK`, each chunk appended to the `Spool` (rows built per event, chunks handed to
/// one `ArrowWriter` per table), then the footers. Only the `Spool` calls are timed: decoding is
/// reported on its own.
fn gong_load_run(settings: &WriterSettings, payloads: &[Vec<u8>]) -> anyhow::Result<Run> {
    let mut elapsed = Duration::ZERO;
    let started = Instant::now();
    let mut spool = Spool::new(settings)?;
    elapsed += started.elapsed();
    let mut seq = 0u64;
    for chunk in payloads.chunks(ENCODE_CHUNK) {
        let decoded = chunk
            .iter()
            .map(|payload| EnrichedEvent::from_json(payload))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        for event in &decoded {
            seq += 1;
            spool.append(event, seq)?;
        }
        elapsed += started.elapsed();
    }
    let started = Instant::now();
    let spooled = spool.finish(1, seq)?;
    elapsed += started.elapsed();
    Ok(Run {
        elapsed,
        rows: spooled.files.iter().map(|file| file.rows).sum(),
        parquet_bytes: spooled.files.iter().map(|file| file.bytes).sum(),
    })
}

/// The same, with every event decoded before the clock starts (20,000 events are far larger
/// than the caches: reading them back costs memory latency the loader does not pay).
fn gong_load_cold_run(settings: &WriterSettings, events: &[EnrichedEvent]) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut spool = Spool::new(settings)?;
    for (index, event) in events.iter().enumerate() {
        spool.append(event, index as u64 + 1)?;
    }
    let spooled = spool.finish(1, events.len() as u64)?;
    let elapsed = started.elapsed();
    Ok(Run {
        elapsed,
        rows: spooled.files.iter().map(|file| file.rows).sum(),
        parquet_bytes: spooled.files.iter().map(|file| file.bytes).sum(),
    })
}

/// The exact batches `Spool` writes: every table drained whenever one holds `CHUNK_ROWS` rows.
fn batches_as_spool_builds_them(
    events: &[EnrichedEvent],
) -> anyhow::Result<Vec<(Table, RecordBatch)>> {
    let mut tables = TableSet::default();
    let mut batches = Vec::new();
    let drain = |tables: &mut TableSet, batches: &mut Vec<(Table, RecordBatch)>| {
        for table in Table::ALL {
            let rows = tables.get_mut(table);
            if !rows.is_empty() {
                batches.push((table, rows.take_batch()?));
            }
        }
        Ok::<(), arrow::error::ArrowError>(())
    };
    for (index, event) in events.iter().enumerate() {
        append_event(&mut tables, event, index as u64 + 1);
        if tables.tables.iter().any(|rows| rows.len() >= CHUNK_ROWS) {
            drain(&mut tables, &mut batches)?;
        }
    }
    drain(&mut tables, &mut batches)?;
    Ok(batches)
}

/// The ceiling: arrow-rs alone, same batches, same properties, one file per table.
fn arrow_alone_run(
    settings: &WriterSettings,
    batches: &[(Table, RecordBatch)],
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut writers: Vec<Option<ArrowWriter<File>>> = Table::ALL.iter().map(|_| None).collect();
    let mut rows = 0;
    for (table, batch) in batches {
        let writer = match &mut writers[table.index()] {
            Some(writer) => writer,
            slot => {
                let file = File::create(dir.path().join(format!("{}.parquet", table.name())))?;
                slot.insert(ArrowWriter::try_new(
                    file,
                    table.schema(),
                    Some(settings.properties()),
                )?)
            }
        };
        writer.write(batch)?;
        rows += batch.num_rows();
    }
    for writer in writers.into_iter().flatten() {
        writer.close()?;
    }
    let elapsed = started.elapsed();
    let mut parquet_bytes = 0;
    for entry in std::fs::read_dir(dir.path())? {
        parquet_bytes += entry?.metadata()?.len();
    }
    Ok(Run {
        elapsed,
        rows,
        parquet_bytes,
    })
}

/// Runs this binary as a child per range size and reports its memory.
fn peak_rss(args: &Args) -> anyhow::Result<()> {
    println!("| range written | row group rows | events | largest file MiB | files MiB | RSS before writing MiB | peak RSS MiB | peak − before MiB | time s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut runs: Vec<(u64, usize)> = args
        .rss_mib
        .iter()
        .map(|&mib| (mib, args.row_group_rows))
        .collect();
    if let Some(&largest) = args.rss_mib.iter().max() {
        runs.push((largest, args.small_row_group_rows));
    }
    for (mib, row_group_rows) in runs {
        let output = std::process::Command::new(std::env::current_exe()?)
            .arg("--child-write-mib")
            .arg(mib.to_string())
            .arg("--row-group-rows")
            .arg(row_group_rows.to_string())
            .arg("--zstd-level")
            .arg(args.zstd_level.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("run the child writer")?;
        anyhow::ensure!(output.status.success(), "child writer failed");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let f = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| ~{mib} MiB | {row_group_rows} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            report["events"],
            f("largest_file_mib"),
            f("files_mib"),
            f("before_mib"),
            f("peak_mib"),
            f("peak_mib") - f("before_mib"),
            f("seconds"),
        );
    }
    println!();
    println!("RSS = VmHWM of a child process that cycles a pool of 1000 generated events (fresh ids) into one Spool until Spool::bytes() reaches the target; the pool is in \"before\"");
    Ok(())
}

/// In the child: cycles a pool of realistic events (fresh ids each time) through one `Spool`
/// until the range holds `mib` MiB, then prints its memory as JSON.
fn child_write(settings: &WriterSettings, mib: u64) -> anyhow::Result<()> {
    const POOL: usize = 1000;
    let selector = gong_enrich::config::default_content_selector();
    let pool: Vec<EnrichedEvent> = (0..POOL)
        .map(|index| {
            enriched_event(
                &(8_000_000_000_000_000_000u64 + index as u64).to_string(),
                index as u64 + 1,
                &selector,
            )
        })
        .collect();
    let before = vm_hwm_mib();
    let target = (mib * 1024 * 1024) as usize;
    let started = Instant::now();
    let mut spool = Spool::new(settings)?;
    let mut event = pool[0].clone();
    let mut count: u64 = 0;
    while spool.bytes() < target {
        let template = &pool[count as usize % POOL];
        // Fresh ids per event, as in a real stream: ids are what compresses worst.
        event.clone_from(template);
        let call_id = (8_100_000_000_000_000_000u64 + count).to_string();
        event.event_id = content_id(call_id.as_bytes());
        event.raw_event_id.clone_from(&event.event_id);
        event.raw_stream_seq = count + 1;
        if let Some(meta) = event.call.meta_data.as_mut() {
            meta.id = Some(call_id);
        }
        count += 1;
        spool.append(&event, count)?;
    }
    let spooled = spool.finish(1, count)?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = vm_hwm_mib();
    let to_mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let report = serde_json::json!({
        "events": count,
        "largest_file_mib": to_mib(spooled.files.iter().map(|file| file.bytes).max().unwrap_or(0)),
        "files_mib": to_mib(spooled.files.iter().map(|file| file.bytes).sum()),
        "before_mib": before,
        "peak_mib": peak,
        "seconds": seconds,
    });
    println!("{report}");
    Ok(())
}

fn vm_hwm_mib() -> f64 {
    gong_benches::peak_rss_mib(std::process::id()).unwrap_or(f64::NAN)
}
