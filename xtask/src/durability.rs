//! The guest's durability log (`tests=durability`) and the check of an image against it.
//!
//! The guest writes random 4 KiB blocks with unique patterns and, after each FLUSH completes,
//! prints `FLUSHED <n> g=<first gen> k=<count> b=<hex blocks>` naming the writes that completed
//! before the FLUSH was submitted (VIRTIO 1.x, 5.2.6.1). [`check`] reads an image and reports
//! every flushed sector that does not hold its flushed generation or a newer one. Shared by
//! `cargo xtask crash` and the VMM's SIGKILL test (included there with `#[path]`).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::pattern::{self, mix64, SECTOR_SIZE};

/// Sectors per block the guest writes.
pub const BLOCK_SECTORS: u64 = 8;
/// How far past the newest listed generation an unlisted write can be (writes in flight and
/// completed-but-unflushed writes: the guest keeps at most 1024 + 32).
pub const GEN_SLACK: u64 = 2048;
/// The guest's `gen_seed` (guest-test-kernel/src/app/suites/durability.rs): the pattern seed
/// of generation `gen`.
pub fn gen_seed(seed: u64, gen: u64) -> u64 {
    mix64(seed ^ gen)
}

/// One parsed `FLUSHED` line: generation `first + i` went to `blocks[i]`.
#[derive(Debug, PartialEq)]
pub struct Flushed {
    /// The flush's number.
    pub n: u64,
    /// Generation of the first listed write.
    pub first: u64,
    /// The block of each listed write, in generation order.
    pub blocks: Vec<u64>,
}

pub fn parse_flushed(line: &str) -> Option<Flushed> {
    let mut words = line.strip_prefix("FLUSHED ")?.split(' ');
    let n = words.next()?.parse().ok()?;
    let first = words.next()?.strip_prefix("g=")?.parse().ok()?;
    let k: usize = words.next()?.strip_prefix("k=")?.parse().ok()?;
    let list = words.next()?.strip_prefix("b=")?;
    let blocks: Vec<u64> = if list.is_empty() {
        Vec::new()
    } else {
        list.split(',')
            .map(|b| u64::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .ok()?
    };
    // A line cut short by the kill does not count.
    (blocks.len() == k && words.next().is_none()).then_some(Flushed { n, first, blocks })
}

pub fn parse_seed(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("DURABILITY seed=0x")?;
    u64::from_str_radix(rest.split(' ').next()?, 16).ok()
}

/// Checks every block listed in `listed` against `img`; returns (blocks checked, sectors
/// holding a newer generation, losses).
pub fn check(seed: u64, listed: &[Flushed], img: &[u8]) -> (usize, usize, Vec<String>) {
    // Newest flushed generation of every block.
    let mut flushed: HashMap<u64, u64> = HashMap::new();
    let mut newest = 0;
    for f in listed {
        for (i, b) in f.blocks.iter().enumerate() {
            let gen = f.first + i as u64;
            newest = newest.max(gen);
            let e = flushed.entry(*b).or_insert(gen);
            *e = (*e).max(gen);
        }
    }
    let mut losses = Vec::new();
    let mut newer = 0;
    for (&block, &gen) in &flushed {
        for s in 0..BLOCK_SECTORS {
            let sector = block * BLOCK_SECTORS + s;
            let at = sector as usize * SECTOR_SIZE;
            let Some(data) = img.get(at..at + SECTOR_SIZE) else {
                losses.push(format!(
                    "block {block:#x}: sector {sector} is past the image end"
                ));
                continue;
            };
            if pattern::verify(data, sector, gen_seed(seed, gen)).is_ok() {
                continue;
            }
            let later = (gen + 1..=newest + GEN_SLACK)
                .find(|g| pattern::verify(data, sector, gen_seed(seed, *g)).is_ok());
            match later {
                Some(_) => newer += 1,
                None => {
                    let older = (1..gen)
                        .rev()
                        .find(|g| pattern::verify(data, sector, gen_seed(seed, *g)).is_ok());
                    losses.push(format!(
                        "sector {sector} (block {block:#x}) lost flushed generation {gen}: holds {}",
                        match older {
                            Some(g) => format!("older generation {g}"),
                            None => "no generation of this run".to_string(),
                        }
                    ));
                }
            }
        }
    }
    (flushed.len(), newer, losses)
}

/// Starts `vmm` (a VMM command line booting the durability workload), waits until the guest has
/// printed `kill_after` distinct `FLUSHED` lines (at most a minute) and then `delay`, kills it
/// with SIGKILL (no shutdown hook, no final fdatasync: the crash point), and returns every line
/// the guest printed until then.
pub fn run_until_killed(
    mut vmm: Command,
    kill_after: usize,
    delay: Duration,
) -> Result<Vec<String>, String> {
    let mut child = vmm
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the VMM: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut flushes = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while flushes.len() < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(f) = parse_flushed(&line) {
                    flushes.insert(f.n);
                }
                let failed = line.starts_with("TEST durability FAIL");
                lines.push(line);
                if failed {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    lines.extend(rx.try_iter());
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_lines_parse_and_reject_truncation() {
        assert_eq!(
            parse_flushed("FLUSHED 3 g=17 k=3 b=a,1f,0"),
            Some(Flushed {
                n: 3,
                first: 17,
                blocks: vec![10, 31, 0]
            })
        );
        assert_eq!(
            parse_flushed("FLUSHED 3 g=17 k=3 b=a,1f"),
            None,
            "cut short"
        );
        assert_eq!(
            parse_flushed("FLUSHED 4 g=1 k=0 b="),
            Some(Flushed {
                n: 4,
                first: 1,
                blocks: vec![]
            })
        );
        assert_eq!(parse_seed("DURABILITY seed=0x1f block_sectors=8"), Some(31));
    }

    #[test]
    fn checker_reports_lost_and_accepts_newer_blocks() {
        let seed = 7;
        let mut img = vec![0u8; 64 * SECTOR_SIZE];
        let put = |img: &mut Vec<u8>, block: u64, gen: u64| {
            let at = (block * BLOCK_SECTORS) as usize * SECTOR_SIZE;
            let len = BLOCK_SECTORS as usize * SECTOR_SIZE;
            pattern::fill(
                &mut img[at..at + len],
                block * BLOCK_SECTORS,
                gen_seed(seed, gen),
            );
        };
        // Block 1: flushed at gen 10, holds 10. Block 2: flushed at 11, holds the newer 30.
        // Block 3: flushed at 12 and 20, holds 12 (lost 20). Block 4: flushed at 13, holds zeros.
        put(&mut img, 1, 10);
        put(&mut img, 2, 30);
        put(&mut img, 3, 12);
        let listed = [
            Flushed {
                n: 1,
                first: 10,
                blocks: vec![1, 2, 3, 4],
            },
            Flushed {
                n: 2,
                first: 20,
                blocks: vec![3],
            },
        ];
        let (checked, newer, losses) = check(seed, &listed, &img);
        assert_eq!((checked, newer), (4, 8));
        assert_eq!(losses.len(), 16, "{losses:#?}");
        assert!(
            losses[..].iter().any(|l| l.contains("older generation 12")),
            "{losses:#?}"
        );
    }

    #[test]
    fn checker_finds_a_lost_block() {
        // The verification the test relies on: an older generation does not pass for a newer one.
        let seed = 99;
        let mut buf = vec![0u8; SECTOR_SIZE];
        pattern::fill(&mut buf, 40, gen_seed(seed, 5));
        assert!(pattern::verify(&buf, 40, gen_seed(seed, 5)).is_ok());
        assert!(pattern::verify(&buf, 40, gen_seed(seed, 6)).is_err());
        assert!(pattern::verify(&buf, 41, gen_seed(seed, 5)).is_err());
    }
}
