//! Command-line types (clap derive). Logic lives in `commands`; these only parse.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  cultivate deploy                          deploy to the target in ./cultivate.toml
  cultivate deploy --target local           deploy to this machine's engine
  cultivate deploy --target ssh://deploy@example.org --identity ~/.ssh/id_ed25519
  cultivate rollback                        go back to the previous release
  cultivate logs -f backend                 follow the backend's logs (Ctrl-C ends)
  cultivate exec database --user apiuser -- psql -d cultivate
                                            a database console as the application's role
  cultivate exec backend -- node -e 'console.log(process.version)'
  cultivate stop / cultivate start          stop the stack, start it again (data kept)
  cultivate remove                          take the deployment off the target (data kept)
  cultivate plugins list --target local     which runtimes would be used here

Exit codes:
  0   success
  1   failed (nothing was changed on the target, or an internal error)
  2   usage or configuration error
  3   the target's runtime is missing or too old (see --install-deps)
  4   deploy failed and was rolled back to a healthy release
  5   deploy failed and the rollback failed too: the target needs attention
  6   another deploy holds the target's lock
  10  connection timed out
  11  connection refused
  12  host unreachable or unknown host name
  13  SSH authentication failed
  14  SSH host key unknown (see --accept-new-host-key)
  15  SSH host key changed (possible attack: check the host, then fix known_hosts)
  16  connection lost during a command
  129 stopped by SIGHUP, 130 by SIGINT (Ctrl-C), 143 by SIGTERM, at a safe point";

/// Deploy a three-tier web application to your own server and keep it healthy
///
/// cultivate builds the images, sends only what the target lacks over SSH (or
/// runs locally), starts the stack, waits until every container is healthy,
/// and rolls back to the previous release by itself when anything fails.
#[derive(Debug, Parser)]
#[command(name = "cultivate", version, about, long_about, after_long_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Show more: -v shows every command run on the target and its output, -vv everything
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Show only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print a machine-readable result on stdout
    #[arg(long, global = true)]
    pub json: bool,

    /// When to use colour (NO_COLOR is honoured with `auto`)
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,

    /// Configuration file [default: ./cultivate.toml]
    #[arg(long, short = 'c', global = true, env = "CULTIVATE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Colour policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ColorChoice {
    /// Colour on a terminal unless NO_COLOR is set
    #[default]
    Auto,
    /// Always colour
    Always,
    /// Never colour
    Never,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, ship and start a new release; roll back by itself on failure
    Deploy(DeployArgs),
    /// Go back to the previous release (or --to VERSION)
    Rollback(RollbackArgs),
    /// List the releases kept on the target
    Releases(TargetArgs),
    /// Show the running release and each container's health
    Status(TargetArgs),
    /// Show (or follow, with -f) the logs of the stack's services
    Logs(LogsArgs),
    /// Run a command in a service's running container (a shell, a database console, a script)
    Exec(ExecArgs),
    /// Stop the current release's containers (kept, with their data)
    Stop(StopArgs),
    /// Start the current release's stopped containers again and wait until they are healthy
    Start(TargetArgs),
    /// Take the deployment off the target: stack, releases and images (the database volume is kept)
    Remove(RemoveArgs),
    /// Check or renew the TLS certificate
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Check the configuration or write a commented one
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a commented cultivate.toml (same as `config init`)
    Init(InitArgs),
    /// The stack (Dockerfiles, compose file, nginx, database scripts) built into cultivate
    #[command(subcommand)]
    Stack(StackCommand),
    /// List plugins and what they find on a target
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Inspect or release the target's deploy lock
    #[command(subcommand)]
    Lock(LockCommand),
    /// Print shell completions
    Completions(CompletionsArgs),
}

/// How to reach the target.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// `local`, `ssh://[user@]host[:port]`, or a host alias from ~/.ssh/config
    #[arg(long, short = 't', env = "CULTIVATE_TARGET")]
    pub target: Option<String>,

    /// Runtime plugin to use instead of the one probing picks
    #[arg(long)]
    pub runtime: Option<String>,

    /// Transport plugin to use instead of the one the target implies
    #[arg(long)]
    pub transport: Option<String>,

    /// SSH private key
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,

    /// known_hosts file [default: ~/.ssh/known_hosts]
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,

    /// Record an unknown host key instead of refusing to connect
    #[arg(long)]
    pub accept_new_host_key: bool,

    /// Seconds to wait for the connection and the SSH handshake
    #[arg(long)]
    pub connect_timeout: Option<u64>,
}

/// `deploy` options.
#[derive(Debug, Args, Clone, Default)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Where images are built
    #[arg(long, value_enum)]
    pub build: Option<BuildMode>,

    /// Version tag for this release [default: git short hash and timestamp]
    #[arg(long)]
    pub release_version: Option<String>,

    /// Install Docker and Compose on the target when they are missing (Debian, Ubuntu)
    #[arg(long)]
    pub install_deps: bool,

    /// Print the plan without changing anything
    #[arg(long)]
    pub dry_run: bool,

    /// Seconds to wait for every container to be healthy
    #[arg(long)]
    pub health_timeout: Option<u64>,
}

/// Where images are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    /// On this machine (Docker engine API), then shipped to the target
    Local,
    /// On the target, from a build context sent over the transport
    Remote,
}

/// `rollback` options.
#[derive(Debug, Args, Clone, Default)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Release to go back to [default: the one before the current]
    #[arg(long)]
    pub to: Option<String>,
}

/// `logs` options.
#[derive(Debug, Args, Clone, Default)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Only this service
    pub service: Option<String>,

    /// Last N lines (per container) [default: 200; 20 with --follow; all with --since]
    #[arg(long)]
    pub tail: Option<u32>,

    /// Keep printing new lines until Ctrl-C (or until the containers stop)
    #[arg(long, short = 'f', conflicts_with = "purge_local")]
    pub follow: bool,

    /// Only lines since a duration ago (`30s`, `10m`, `1h30m`, `2d`) or a time
    /// (`2024-05-01`, `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00+02:00`)
    #[arg(long, conflicts_with = "purge_local")]
    pub since: Option<String>,

    /// Delete cultivate's own log files on this machine instead, and exit
    ///
    /// Removes every file in the local log directory ($CULTIVATE_LOG_DIR, or
    /// ~/.local/state/cultivate/logs), not only those holding a value the
    /// redaction knows today: a secret that was rotated out of the secrets file
    /// would not be recognised any more. The target's deploy logs are kept.
    #[arg(long, conflicts_with = "service")]
    pub purge_local: bool,
}

/// `exec` options.
#[derive(Debug, Args, Clone, Default)]
pub struct ExecArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// The service (`frontend`, `backend`, `database`)
    pub service: String,

    /// User inside the container (name or UID[:GID]) [default: the image's]
    #[arg(long, short = 'u')]
    pub user: Option<String>,

    /// Never allocate a terminal, even when this side has one
    #[arg(long, short = 'T')]
    pub no_tty: bool,

    /// The command and its arguments (after `--`)
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `stop` options.
#[derive(Debug, Args, Clone, Default)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Seconds each container gets to stop before it is killed [default: the runtime's]
    #[arg(long)]
    pub timeout: Option<u64>,
}

/// `remove` options.
#[derive(Debug, Args, Clone, Default)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Delete the database volume too (asks for the project's name to be typed back)
    #[arg(long)]
    pub purge_data: bool,

    /// Do not ask (for scripts): with --purge-data, delete the data without the name typed back
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Validate the certificate and key (PEM, dates, key match)
    Check(CertFiles),
    /// Upload a new certificate and reload nginx without a rebuild
    Renew(RenewArgs),
}

/// Certificate files.
#[derive(Debug, Args, Clone, Default)]
pub struct CertFiles {
    /// Certificate (PEM) [default: from the configuration]
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) [default: from the configuration]
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// `certs renew` options.
#[derive(Debug, Args, Clone, Default)]
pub struct RenewArgs {
    #[command(flatten)]
    pub files: CertFiles,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved settings (secrets redacted) after checking them
    Check(TargetArgs),
    /// Write a commented cultivate.toml
    Init(InitArgs),
}

/// `stack` subcommands.
#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Write the built-in stack into the project (docker/ and compose/) to customise it;
    /// cultivate then uses the project's copy
    Eject(EjectArgs),
}

/// `stack eject` options.
#[derive(Debug, Args, Clone, Default)]
pub struct EjectArgs {
    /// Directory to write docker/ and compose/ into (default: the configuration file's directory)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Overwrite stack files already there
    #[arg(long)]
    pub force: bool,
}

/// `init` options.
#[derive(Debug, Args, Clone, Default)]
pub struct InitArgs {
    /// Where to write it
    #[arg(default_value = "cultivate.toml")]
    pub path: PathBuf,
    /// Overwrite an existing file
    #[arg(long)]
    pub force: bool,
    /// The `target` to write (default `local`)
    #[arg(long)]
    pub target: Option<String>,
}

/// `plugins` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List loaded plugins and where each came from; with --target, what each finds there
    List(PluginsListArgs),
    /// Check a plugin library (ABI, layout, API version) and install it into the user's plugin directory
    Install(PluginsInstallArgs),
    /// Remove a plugin installed with `plugins install`
    Remove(PluginsRemoveArgs),
}

/// `plugins install` options.
#[derive(Debug, Args, Clone)]
pub struct PluginsInstallArgs {
    /// The plugin library (`libcultivate_plugin_NAME.so`)
    pub path: std::path::PathBuf,
    /// Replace a plugin of the same name
    #[arg(long)]
    pub force: bool,
}

/// `plugins remove` options.
#[derive(Debug, Args, Clone)]
pub struct PluginsRemoveArgs {
    /// The plugin's name, as `plugins list` shows it
    pub name: String,
}

/// `plugins list` options.
#[derive(Debug, Args, Clone, Default)]
pub struct PluginsListArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `lock` subcommands.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the target's deploy lock
    Status(TargetArgs),
    /// Remove a stale lock (only when no deploy is running)
    Release(TargetArgs),
}

/// `completions` options.
#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// Shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
