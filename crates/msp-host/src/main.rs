use clap::Parser;

/// MSP host: WireServer, HostGAPlugin and IMDS with latched per-VM keys.
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("msp-host: not implemented yet");
}
