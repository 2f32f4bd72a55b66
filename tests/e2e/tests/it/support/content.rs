//! The per-range content check: every staged file holds exactly the events of GONG_ENRICHED in
//! its `gong_<first>-<last>` range (the invariant "a file's content is a pure function of its
//! range"), the ranges of a table never overlap, and every call event of the stream lies in a
//! range.

use std::collections::{BTreeMap, BTreeSet};

use gong_load::schema::Table;

use super::stage::FileRows;
use super::stream::Enriched;

/// What the check found.
#[derive(Debug, Default)]
pub struct ContentReport {
    /// Files read and compared.
    pub files: usize,
    /// Distinct ranges (over every table).
    pub ranges: usize,
    /// Rows compared.
    pub rows: usize,
    /// Every violation, one line each, naming the file, its range and what differs.
    pub problems: Vec<String>,
    /// Ranges with a problem, to look up in the manifest and the logs, in the order found:
    /// ranges whose `calls` file differs from the stream first.
    pub bad_ranges: Vec<(u64, u64)>,
}

impl ContentReport {
    fn bad(&mut self, range: (u64, u64)) {
        if !self.bad_ranges.contains(&range) {
            self.bad_ranges.push(range);
        }
    }
}

/// At most 12 numbers, then how many more.
pub fn short<T: std::fmt::Debug>(items: &[T]) -> String {
    if items.len() <= 12 {
        format!("{items:?}")
    } else {
        format!("{:?} and {} more", &items[..12], items.len() - 12)
    }
}

/// The first `max` problems, one per line, then how many more.
pub fn first_problems(problems: &[String], max: usize) -> String {
    let mut out = problems
        .iter()
        .take(max)
        .map(|problem| format!("  - {problem}"))
        .collect::<Vec<_>>()
        .join("\n");
    if problems.len() > max {
        out.push_str(&format!("\n  ... and {} more", problems.len() - max));
    }
    out
}

/// Compares every staged file with the stream.
pub fn check(enriched: &Enriched, files: &[Result<FileRows, String>]) -> ContentReport {
    let mut report = ContentReport::default();
    let mut per_table: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut all_ranges: BTreeSet<(u64, u64)> = BTreeSet::new();
    // `calls` first: its sequences say most precisely where a file is short or long.
    let mut ordered: Vec<&Result<FileRows, String>> = files.iter().collect();
    ordered.sort_by_key(|file| match file {
        Ok(file) => (file.table != "calls", file.range),
        Err(_) => (false, (0, 0)),
    });
    for file in ordered {
        let file = match file {
            Ok(file) => file,
            Err(reason) => {
                report.problems.push(format!("unreadable file {reason}"));
                continue;
            }
        };
        report.files += 1;
        report.rows += file.event_rows.values().sum::<usize>();
        per_table
            .entry(file.table.clone())
            .or_default()
            .push(file.range);
        all_ranges.insert(file.range);
        let Some(table) = Table::parse(&file.table) else {
            report
                .problems
                .push(format!("{}: unknown table {}", file.relative, file.table));
            continue;
        };
        let (first, last) = file.range;
        let mut differs = Vec::new();
        if last > enriched.last_sequence {
            differs.push(format!(
                "range ends after the stream's last sequence {}",
                enriched.last_sequence
            ));
        }
        let expected = enriched.expected_rows(table, first, last);
        let missing: Vec<&String> = expected
            .keys()
            .filter(|id| !file.event_rows.contains_key(*id))
            .collect();
        let extra: Vec<&String> = file
            .event_rows
            .keys()
            .filter(|id| !expected.contains_key(*id))
            .collect();
        let miscounted: Vec<(&String, usize, usize)> = expected
            .iter()
            .filter_map(|(id, rows)| {
                let found = *file.event_rows.get(id)?;
                (found != *rows).then_some((id, *rows, found))
            })
            .collect();
        if table == Table::Calls {
            // Sequences say *where* the file is short or long.
            let expected_seqs: BTreeSet<u64> = enriched
                .events
                .range(first..=last)
                .filter(|(_, entry)| entry.rows[Table::Calls.index()] > 0)
                .map(|(seq, _)| *seq)
                .collect();
            let mut seen = BTreeMap::<u64, usize>::new();
            for (seq, event_id) in &file.seqs {
                *seen.entry(*seq).or_default() += 1;
                if let Some(entry) = enriched.events.get(seq) {
                    if &entry.event_id != event_id {
                        differs.push(format!(
                            "row of seq {seq} has event_id {event_id}, the stream has {}",
                            entry.event_id
                        ));
                    }
                }
            }
            let missing_seqs: Vec<u64> = expected_seqs
                .iter()
                .filter(|seq| !seen.contains_key(seq))
                .copied()
                .collect();
            let extra_seqs: Vec<u64> = seen
                .keys()
                .filter(|seq| !expected_seqs.contains(seq))
                .copied()
                .collect();
            let repeated: Vec<u64> = seen
                .iter()
                .filter(|(_, count)| **count > 1)
                .map(|(seq, _)| *seq)
                .collect();
            if !missing_seqs.is_empty() {
                differs.push(format!(
                    "{} of the stream's {} call events in the range are missing: seqs {}",
                    missing_seqs.len(),
                    expected_seqs.len(),
                    short(&missing_seqs)
                ));
            }
            if !extra_seqs.is_empty() {
                differs.push(format!(
                    "{} rows of seqs not in the range's events: {}",
                    extra_seqs.len(),
                    short(&extra_seqs)
                ));
            }
            if !repeated.is_empty() {
                differs.push(format!("seqs with several rows: {}", short(&repeated)));
            }
        } else {
            if !missing.is_empty() {
                differs.push(format!(
                    "{} of {} events with rows in this table are missing: event ids {}",
                    missing.len(),
                    expected.len(),
                    short(&missing)
                ));
            }
            if !extra.is_empty() {
                differs.push(format!(
                    "{} events not in the range's events: {}",
                    extra.len(),
                    short(&extra)
                ));
            }
        }
        if !miscounted.is_empty() {
            differs.push(format!(
                "{} events with the wrong number of rows (event, expected, found): {}",
                miscounted.len(),
                short(&miscounted)
            ));
        }
        if !differs.is_empty() {
            report.bad(file.range);
            report.problems.push(format!(
                "{} (range {first}-{last}): {}",
                file.relative,
                differs.join("; ")
            ));
        }
    }
    report.ranges = all_ranges.len();

    // The ranges of one table are disjoint. One line per overlapping pair, naming the tables.
    type Pair = ((u64, u64), (u64, u64));
    let mut overlaps: BTreeMap<Pair, Vec<String>> = BTreeMap::new();
    for (table, ranges) in &mut per_table {
        ranges.sort_unstable();
        // Each range against the one reaching furthest before it (a long range can overlap
        // several short ones after it).
        let mut reach: Option<(u64, u64)> = None;
        for &range in ranges.iter() {
            match reach {
                Some(before) if range.0 <= before.1 => {
                    overlaps
                        .entry((before, range))
                        .or_default()
                        .push(table.clone());
                    if range.1 > before.1 {
                        reach = Some(range);
                    }
                }
                _ => reach = Some(range),
            }
        }
    }
    for ((before, range), tables) in overlaps {
        report.bad(before);
        report.bad(range);
        let tables = if tables.len() == Table::ALL.len() {
            "every table".to_string()
        } else {
            tables.join(", ")
        };
        report.problems.push(format!(
            "files of overlapping ranges {}-{} and {}-{} ({tables}): their common events are \
             staged twice",
            before.0, before.1, range.0, range.1
        ));
    }
    // Every range has a file in each table its events have rows in.
    for &(first, last) in &all_ranges {
        for table in Table::ALL {
            let expected = !enriched.expected_rows(table, first, last).is_empty();
            let present = per_table
                .get(table.name())
                .is_some_and(|ranges| ranges.binary_search(&(first, last)).is_ok());
            if expected && !present {
                report.bad((first, last));
                report.problems.push(format!(
                    "range {first}-{last}: no {} file although its events have rows there",
                    table.name()
                ));
            }
        }
    }
    // Every loadable event of the stream lies in a range of each table it has rows in.
    let covered: BTreeMap<&String, Vec<(u64, u64)>> = per_table
        .iter()
        .map(|(table, ranges)| {
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for &(first, last) in ranges {
                match merged.last_mut() {
                    Some(range) if first <= range.1.saturating_add(1) => {
                        range.1 = range.1.max(last)
                    }
                    _ => merged.push((first, last)),
                }
            }
            (table, merged)
        })
        .collect();
    let mut uncovered: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    for (seq, entry) in &enriched.events {
        for table in Table::ALL {
            if entry.rows[table.index()] == 0 {
                continue;
            }
            let ranges = covered
                .get(&table.name().to_string())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let index = ranges.partition_point(|(first, _)| first <= seq);
            if index == 0 || ranges[index - 1].1 < *seq {
                uncovered.entry(table.name()).or_default().push(*seq);
            }
        }
    }
    for (table, seqs) in uncovered {
        report.problems.push(format!(
            "{} events of GONG_ENRICHED with rows in {table} lie in no {table} file's range: \
             seqs {}",
            seqs.len(),
            short(&seqs)
        ));
    }
    report
}
