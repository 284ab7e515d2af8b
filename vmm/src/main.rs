//! `vmm`: parse the command line, run the VM, exit with its status.

use clap::Parser;

fn main() {
    let config = match vmm::cli::Cli::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::exit(2);
        }
    };
    match vmm::run(config) {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::exit(e.exit_status());
        }
    }
}
