//! One module per subcommand; each resolves its settings and calls one operation.

mod certs;
mod config;
mod deploy;
mod plugins;
mod target;

use anyhow::Result;

use crate::cli::{CertsCommand, Cli, Command, ConfigCommand, LockCommand, PluginsCommand};
use crate::output::Printer;

/// Runs the parsed command.
pub fn run(cli: &Cli, printer: &Printer) -> Result<()> {
    let config = cli.global.config.as_deref();
    match &cli.command {
        Command::Plugins(PluginsCommand::List(args)) => {
            let settings = crate::settings::load(config, &crate::settings::Overrides::from_target(&args.target)).ok();
            plugins::list(printer, args, settings.as_ref())
        }
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "cultivate", &mut std::io::stdout());
            Ok(())
        }
        Command::Config(ConfigCommand::Check(args)) => config::check(printer, config, args),
        Command::Config(ConfigCommand::Init(args)) | Command::Init(args) => config::init(printer, args),
        Command::Deploy(args) => deploy::deploy(printer, config, args),
        Command::Rollback(args) => deploy::rollback(printer, config, args),
        Command::Releases(args) => target::releases(printer, config, args),
        Command::Status(args) => target::status(printer, config, args),
        Command::Logs(args) => target::logs(printer, config, args),
        Command::Lock(LockCommand::Status(args)) => target::lock(printer, config, args, false),
        Command::Lock(LockCommand::Release(args)) => target::lock(printer, config, args, true),
        Command::Certs(CertsCommand::Check(args)) => certs::check(printer, config, args),
        Command::Certs(CertsCommand::Renew(args)) => certs::renew(printer, config, args),
    }
}
