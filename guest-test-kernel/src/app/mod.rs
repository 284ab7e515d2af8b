//! The test application, run in ring 3: find the virtio-blk disk, run the self-tests, run
//! the benchmark.

mod check;
mod driver;
mod suites;

use guest_test_kernel::pattern::mix64;
use guest_test_kernel::{Completion, Options};

use check::Env;
use driver::blk::{self, Blk};
use driver::limits::MAX_QUEUES;
use driver::pci::{Bdf, PortCam, Show};
use driver::virtio_pci::{VirtioPci, VIRTIO_BLK_MODERN, VIRTIO_BLK_TRANSITIONAL, VIRTIO_VENDOR};
use driver::{dma, trace};
use suites::{bench, durability, failing, hostile, soak, tests};

/// Runs the tests and the benchmark the command line asks for; returns the exit code: 0 if
/// every test passed and the benchmark (if asked for) ran, 1 otherwise.
pub fn run(info: &crate::BootInfo) -> u32 {
    let opts = Options::parse(info.cmdline);
    for problem in Options::problems(info.cmdline).filter(|p| !trace::owns(p)) {
        crate::println!("warning: {problem}");
    }
    dma::init(info.free_mem_start, info.free_mem_end);
    trace::init(info.cmdline);
    let seed = opts
        .seed
        .unwrap_or_else(|| mix64(crate::arch::tsc::rdtsc()));
    crate::println!(
        "# seed={seed:#x} completion={} features={} kick={}",
        opts.completion.name(),
        opts.features.name(),
        opts.kick.name()
    );

    let cam = PortCam;
    let Some(bdf) = find_disk(cam) else {
        crate::println!(
            "no virtio-blk device (1af4:1042, or 1af4:1001 with modern capabilities) found"
        );
        return 1;
    };
    if let Err(e) = cam.place_bars_below_4g(bdf) {
        crate::println!("virtio-blk {}: {e}", Show(bdf));
        return 1;
    }
    if opts.completion == Completion::Irq {
        crate::arch::irq::enable();
    }
    let mut blk = match Blk::init(
        cam,
        bdf,
        info.free_mem_end,
        opts.driver(),
        MAX_QUEUES,
        false,
    ) {
        Ok(b) => b,
        Err(e) => {
            crate::println!("virtio-blk {}: init failed: {e}", Show(bdf));
            return 1;
        }
    };

    let env = Env {
        cam,
        bdf,
        ram_end: info.free_mem_end,
        opts: &opts,
        seed,
    };
    let mut tally = tests::run_all(&mut blk, &env);
    if opts.test_listed("durability") {
        return durability::run_mode(&mut blk, seed);
    }
    if opts.test_listed("failing") {
        tally.record("failing", failing::run(&mut blk, &opts, seed));
    }
    if opts.test_listed("hostile") {
        hostile::run_mode(&mut blk, &env, &mut tally);
    }
    if let Some(secs) = opts.soak {
        let mark = dma::mark();
        tally.record("soak", soak::run(&mut blk, secs, seed));
        dma::release(mark);
    }
    crate::println!(
        "TESTS passed={} failed={} skipped={}",
        tally.passed,
        tally.failed,
        tally.skipped
    );
    print_interrupts(&blk);
    let mut ok = tally.failed == 0;

    if let Some(workload) = opts.bench {
        let mark = dma::mark();
        let result = if opts.disks > 1 {
            match second_disk(cam, bdf, &env) {
                Ok(other) => {
                    let mut pair = [blk, other];
                    let r = bench::run(&mut pair, &opts, workload, seed, info.tsc_hz);
                    let [first, other] = pair;
                    if let Err(e) = other.reset() {
                        crate::println!("second virtio-blk: final reset: {e}");
                    }
                    blk = first;
                    r
                }
                Err(why) => Err(why),
            }
        } else {
            bench::run(
                core::slice::from_mut(&mut blk),
                &opts,
                workload,
                seed,
                info.tsc_hz,
            )
        };
        if let Err(why) = result {
            crate::println!("BENCH FAIL {}", why.as_str());
            ok = false;
        }
        dma::release(mark);
        trace::publish();
    }
    print_interrupts(&blk);
    crate::arch::irq::disable();
    if let Err(e) = blk.reset() {
        crate::println!("virtio-blk {}: final reset: {e}", Show(bdf));
    }
    trace::publish();
    u32::from(!ok)
}

/// The virtio-blk disk after `first` (`disks=2`), initialized quietly like the first.
fn second_disk(cam: PortCam, first: Bdf, env: &Env<'_>) -> Result<Blk, check::report::Why> {
    let Some(bdf) = find_disk_after(cam, Some(first)) else {
        return Err(check::report::Why::new(format_args!(
            "disks=2 but only one virtio-blk device"
        )));
    };
    cam.place_bars_below_4g(bdf)
        .map_err(|e| check::report::Why::new(format_args!("virtio-blk {}: {e}", Show(bdf))))?;
    Blk::init(cam, bdf, env.ram_end, env.opts.driver(), MAX_QUEUES, true).map_err(|e| {
        check::report::Why::new(format_args!("virtio-blk {}: init failed: {e}", Show(bdf)))
    })
}

/// The first virtio-blk function: modern, or transitional with the modern capabilities.
fn find_disk(cam: PortCam) -> Option<Bdf> {
    find_disk_after(cam, None)
}

/// The first virtio-blk function after `after` (in bus order), or the first of all.
fn find_disk_after(cam: PortCam, after: Option<Bdf>) -> Option<Bdf> {
    let mut found = None;
    let mut skipping = after.is_some();
    cam.for_each_function(0, &mut |bdf, vendor, device| {
        if found.is_some() || vendor != VIRTIO_VENDOR {
            return;
        }
        if skipping {
            skipping = Some(bdf) != after;
            return;
        }
        let modern = device == VIRTIO_BLK_MODERN
            || (device == VIRTIO_BLK_TRANSITIONAL
                && cam.place_bars_below_4g(bdf).is_ok()
                && VirtioPci::probe(cam, bdf).is_ok());
        if modern {
            crate::println!("pci {}: virtio-blk {vendor:04x}:{device:04x}", Show(bdf));
            found = Some(bdf);
        }
    });
    found
}

/// Shows how many interrupts each queue raised: about one per wait in irq mode, none when
/// polling (suppressed through `used_event` / `VIRTQ_AVAIL_F_NO_INTERRUPT`).
fn print_interrupts(blk: &Blk) {
    for q in 0..blk.num_queues() {
        let vector = blk::VECTOR_BASE + q as u8;
        let n = crate::arch::irq::count(vector);
        crate::println!("# queue {q}: {n} interrupts on vector {vector:#x} so far");
    }
}
