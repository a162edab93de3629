//! `msp-agent <config.json>`: the agent (`gpa::run`: the real redirector and proxy) as a process of its own, for
//! the catalog tests that must kill it (E4). The same code path as `gpa run --config`, without its logging setup.

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: msp-agent <config.json>");
        return;
    };
    let config = match gpa::config::Config::load(
        Some(std::path::Path::new(&path)),
        &gpa::config::ProcessEnv,
    ) {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return;
        }
    };
    if let Err(e) = runtime.block_on(gpa::run(config)) {
        eprintln!("{e}");
    }
}
