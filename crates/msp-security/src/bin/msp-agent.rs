//! `msp-agent <config.json>`: the agent (`gpa::run`: the real redirector and proxy) as a process of its own, for
//! the catalog tests that must kill it (E4). The same code path as `gpa run --config`, without its logging setup.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: msp-agent <config.json>");
        return ExitCode::from(2);
    };
    let config = match gpa::config::Config::load(
        Some(std::path::Path::new(&path)),
        &gpa::config::ProcessEnv,
    ) {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gpa::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
