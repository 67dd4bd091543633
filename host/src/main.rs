//! `cultivate`: the host binary.
//!
//! 1. Parse the command line ([`cli`]), set up output and logging.
//! 2. Resolve settings ([`settings`]) and run one operation ([`commands`]).
//! 3. Map the error, if any, to an exit code in one place ([`error::exit_code`]).

mod batch;
mod certs;
mod certs_check;
mod checks;
mod cli;
mod commands;
mod error;
mod interrupt;
mod logging;
mod output;
mod pipeline;
mod plugins;
mod redact;
mod secrets;
mod session;
mod settings;
mod stack;
mod target;

use clap::Parser;

fn main() {
    interrupt::install();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { error::Code::Usage as i32 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let printer = output::Printer::new(&cli.global);
    let guard = logging::init(cli.global.verbose, cli.global.quiet);
    let result = commands::run(&cli, &printer);
    commands::warn_of_leaked_logs(&cli, &printer);
    let code = match result {
        Ok(()) => 0,
        Err(err) if err.downcast_ref::<error::PassThrough>().is_some() => error::exit_code(&err),
        Err(err) => {
            tracing::debug!("error: {err:#}");
            printer.error(&err);
            error::exit_code(&err)
        }
    };
    drop(guard);
    std::process::exit(code);
}
