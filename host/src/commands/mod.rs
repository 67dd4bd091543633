//! One module per subcommand; each resolves its settings and calls one operation.

mod certs;
mod config;
mod deploy;
mod everyday;
mod plugins;
mod target;

use anyhow::Result;

use crate::cli::{CertsCommand, Cli, Command, ConfigCommand, LockCommand, PluginsCommand, StackCommand};
use crate::output::Printer;

/// True for `cultivate logs --purge-local`, which needs no leak warning.
pub fn purges_local_logs(cli: &Cli) -> bool {
    matches!(&cli.command, Command::Logs(args) if args.purge_local)
}

/// Warns once if a local log file holds a line the redaction would now hide
/// (written by an earlier cultivate, or before the secret was known).
pub fn warn_of_leaked_logs(cli: &Cli, printer: &Printer) {
    if purges_local_logs(cli) {
        return;
    }
    let dir = crate::logging::log_dir();
    let files = crate::logging::leaking_files(&dir);
    if files.is_empty() {
        return;
    }
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    printer.warn(&format!(
        "{} log file(s) in {} hold secret values in clear, written by an earlier cultivate: {}\n    \
         `cultivate logs --purge-local` deletes cultivate's local log files",
        files.len(),
        dir.display(),
        names.join(", ")
    ));
}

/// Runs the parsed command.
pub fn run(cli: &Cli, printer: &Printer) -> Result<()> {
    let config = cli.global.config.as_deref();
    // Whatever the command, the configured secrets are hidden from everything
    // it prints or logs; commands that connect add the target's own.
    if let Some(path) =
        crate::settings::load(config, &crate::settings::Overrides::default()).ok().and_then(|s| s.secrets_file)
    {
        let _ = crate::secrets::register_file(&path);
    }
    match &cli.command {
        Command::Plugins(PluginsCommand::List(args)) => {
            let settings = crate::settings::load(config, &crate::settings::Overrides::from_target(&args.target)).ok();
            plugins::list(printer, args, settings.as_ref())
        }
        Command::Plugins(PluginsCommand::Install(args)) => plugins::install(printer, args),
        Command::Plugins(PluginsCommand::Remove(args)) => plugins::remove(printer, args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "cultivate", &mut std::io::stdout());
            Ok(())
        }
        Command::Config(ConfigCommand::Check(args)) => config::check(printer, config, args),
        Command::Config(ConfigCommand::Init(args)) | Command::Init(args) => config::init(printer, args),
        Command::Stack(StackCommand::Eject(args)) => config::eject(printer, config, args),
        Command::Deploy(args) => deploy::deploy(printer, config, args),
        Command::Rollback(args) => deploy::rollback(printer, config, args),
        Command::Releases(args) => target::releases(printer, config, args),
        Command::Status(args) => target::status(printer, config, args),
        Command::Logs(args) if args.follow || args.since.is_some() => everyday::stream_logs(printer, config, args),
        Command::Logs(args) => target::logs(printer, config, args),
        Command::Exec(args) => everyday::exec(printer, config, args),
        Command::Stop(args) => everyday::stop(printer, config, args),
        Command::Start(args) => everyday::start(printer, config, args),
        Command::Remove(args) => everyday::remove(printer, config, args),
        Command::Lock(LockCommand::Status(args)) => target::lock(printer, config, args, false),
        Command::Lock(LockCommand::Release(args)) => target::lock(printer, config, args, true),
        Command::Certs(CertsCommand::Check(args)) => certs::check(printer, config, args),
        Command::Certs(CertsCommand::Renew(args)) => certs::renew(printer, config, args),
    }
}
