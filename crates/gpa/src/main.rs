use clap::Parser;

/// Guest Proxy Agent: intercepts metadata calls, authorizes, signs and forwards them.
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("gpa: not implemented yet");
}
