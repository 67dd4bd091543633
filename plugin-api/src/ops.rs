//! The operations a runtime plugin may implement, each with typed request and
//! response. They cross the boundary as JSON through the one generic `call`
//! entry point, so a new operation needs no change to the ABI's layout.
//!
//! A plugin lists the names it implements in its manifest; the host calls
//! only those. Commands that must stream a large payload (an image archive)
//! are not run by the plugin: it returns a [`CommandSpec`] and the host runs
//! it through the transport with the payload on stdin.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{ExecRequest, TargetInfo};

/// An operation: its wire name and typed payloads.
pub trait Operation {
    /// The wire name, `area.verb`.
    const NAME: &'static str;
    /// The request payload.
    type Request: Serialize + DeserializeOwned;
    /// The response payload.
    type Response: Serialize + DeserializeOwned;
}

macro_rules! operation {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $req:ty => $resp:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $ty;
        impl Operation for $ty {
            const NAME: &'static str = $name;
            type Request = $req;
            type Response = $resp;
        }
    };
}

/// A command the host runs itself (for streaming).
pub type CommandSpec = ExecRequest;

/// No payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

// ---------------------------------------------------------------- images

/// Images to look up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRefs {
    /// References (`name:tag`) or IDs.
    pub refs: Vec<String>,
}

/// One image as the target's store has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The reference asked for.
    pub reference: String,
    /// Content ID (`sha256:…`), `None` when the image is absent.
    pub id: Option<String>,
    /// Uncompressed layer digests (`RootFS.Layers`), bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Tags that point at it.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Images matching a repository prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageListRequest {
    /// Repository prefix (`cultivate-`).
    pub prefix: String,
    /// Image IDs to look up as well, in the same round trip: each gets one
    /// more entry whose `reference` is the ID asked, with `id: None` when the
    /// target lacks it. A plugin that predates the field leaves them out (the
    /// host then asks with `image.inspect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// Tag `source` as `target`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageTagRequest {
    /// Existing reference or ID.
    pub source: String,
    /// New reference.
    pub target: String,
}

/// Build an image on the target from a context directory already uploaded there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuildRequest {
    /// Context directory on the target.
    pub context_dir: String,
    /// Dockerfile path, relative to the context.
    pub dockerfile: String,
    /// Tag for the result.
    pub tag: String,
    /// `--build-arg` values.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Removal result: references removed and failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReport {
    /// Removed references.
    pub removed: Vec<String>,
    /// `(reference, reason)` pairs that could not be removed.
    #[serde(default)]
    pub failed: Vec<(String, String)>,
}

operation!(
    /// Inspect images on the target.
    ImageInspect, "image.inspect", ImageRefs => Vec<ImageInfo>
);
operation!(
    /// List images whose repository starts with a prefix.
    ImageList, "image.list", ImageListRequest => Vec<ImageInfo>
);
/// What the archive on the load command's stdin is compressed with. A host
/// that predates this sends `{}`, a plugin that predates it ignores the field
/// (it then only gets streams its engine reads itself: see
/// [`LOAD_COMPRESSION_DETAIL`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLoadRequest {
    /// `zstd` or `gzip`; `None`: as exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// A reference the command looks up once the load succeeded, printing
    /// [`LOADED_ID_LINE`], a space and its image ID on a line of its own (the
    /// check that the target has what was sent, without another round trip).
    /// The command's status stays the load's. A plugin that predates the
    /// field prints no such line; the host then asks with `image.inspect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
}

/// The start of the line with the loaded image's ID (see [`ImageLoadRequest::verify`]).
pub const LOADED_ID_LINE: &str = "cultivate-loaded-id";

/// The image ID a load command's output reports for [`ImageLoadRequest::verify`]:
/// `None` when no line says (a plugin that predates the field, or the lookup
/// found nothing).
pub fn loaded_id(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|l| {
        let id = l.trim().strip_prefix(LOADED_ID_LINE)?.strip_prefix(' ')?.trim();
        (!id.is_empty()).then(|| id.to_string())
    })
}

operation!(
    /// The command that loads an image archive from stdin: `docker save`
    /// format, or the formats the probe lists under [`LOAD_FORMATS_DETAIL`],
    /// compressed as the request says.
    ImageLoadCommand, "image.load_command", ImageLoadRequest => CommandSpec
);

/// Probe detail: the compressions (`zstd`, `gzip`, separated by commas) of
/// an archive that `image.load_command`'s command loads when the request
/// names them, whether the engine decompresses them itself or the command
/// pipes them through a decompressor found on the target. Without the detail
/// the host decides from the engine's version alone.
pub const LOAD_COMPRESSION_DETAIL: &str = "load_compression";

/// What a probe's details say about loading a `codec`-compressed archive:
/// `None` when the plugin does not report [`LOAD_COMPRESSION_DETAIL`].
pub fn loads_compression(details: &BTreeMap<String, String>, codec: &str) -> Option<bool> {
    details.get(LOAD_COMPRESSION_DETAIL).map(|v| v.split(',').any(|c| c.trim() == codec))
}

/// Probe detail: the archive formats `image.load_command`'s command accepts
/// besides `docker save`'s, separated by commas. A plugin that leaves it out
/// gets `docker save` archives, as before.
pub const LOAD_FORMATS_DETAIL: &str = "load_formats";

/// A [`LOAD_FORMATS_DETAIL`] value: an OCI image layout archive (`oci-layout`,
/// `index.json` naming the image's reference in the
/// `org.opencontainers.image.ref.name` annotation, one manifest, blobs under
/// `blobs/sha256/`, layers uncompressed) from which the blobs of layers the
/// target's store already holds are left out. The loader must look a layer
/// up in its store by digest before reading it from the archive, as
/// containers/image (Podman, Buildah, Skopeo) does. A load that fails gets
/// the whole `docker save` archive once.
pub const LOAD_FORMAT_OCI_PARTIAL: &str = "oci-archive-partial";

/// True when a probe's details say the load command takes `format`.
pub fn loads_format(details: &BTreeMap<String, String>, format: &str) -> bool {
    details.get(LOAD_FORMATS_DETAIL).is_some_and(|v| v.split(',').any(|f| f.trim() == format))
}
operation!(
    /// Tag an image.
    ImageTag, "image.tag", ImageTagRequest => Empty
);
operation!(
    /// Remove images (never ones in use by a container).
    ImageRemove, "image.remove", ImageRefs => RemoveReport
);
operation!(
    /// The command that builds an image on the target, streaming its output.
    ImageBuildCommand, "image.build_command", ImageBuildRequest => CommandSpec
);

// ---------------------------------------------------------------- stack

/// Which stack: a compose project in a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRef {
    /// Compose project name.
    pub project: String,
    /// Directory holding the compose file and `.env` on the target.
    pub dir: String,
    /// Compose files, relative to `dir`.
    pub files: Vec<String>,
    /// The env file, relative to `dir` (default `.env`).
    #[serde(default)]
    pub env_file: Option<String>,
}

/// Bring the stack up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackUpRequest {
    /// The stack.
    pub stack: StackRef,
    /// Recreate containers even when their configuration is unchanged.
    #[serde(default)]
    pub force_recreate: bool,
    /// Seconds to wait for a container to stop.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Take the stack down. Volumes are never removed by the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDownRequest {
    /// The stack.
    pub stack: StackRef,
    /// Remove named volumes too (only for explicit user requests, never in deploy or rollback).
    #[serde(default)]
    pub remove_volumes: bool,
}

/// One service's container as the runtime reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Compose service name.
    pub service: String,
    /// Container name or ID.
    pub container: String,
    /// `running`, `exited`, `restarting`, `created` …
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or `None` without a health check.
    #[serde(default)]
    pub health: Option<String>,
    /// Exit code when exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Image reference or ID the container runs.
    #[serde(default)]
    pub image: String,
    /// Last health-check output, when failing.
    #[serde(default)]
    pub health_log: Option<String>,
    /// Full container ID, when the runtime reports it.
    #[serde(default)]
    pub id: Option<String>,
    /// Content ID (`sha256:…`) of the image the container runs, when reported.
    #[serde(default)]
    pub image_id: Option<String>,
    /// The compose configuration hash the container was created with
    /// (`com.docker.compose.config-hash`), when reported.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// When the container last started (RFC 3339), when reported.
    #[serde(default)]
    pub started_at: Option<String>,
    /// The container's health check command as the engine keeps it
    /// (`Config.Healthcheck.Test`: `["CMD", argv…]` or `["CMD-SHELL", script]`),
    /// when reported. The host may run it in the container itself while the
    /// engine still says `starting` (the engine's first check comes one
    /// interval after the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_test: Option<Vec<String>>,
}

/// The argv that runs a health check `test` (`Config.Healthcheck.Test`) in
/// its container: `CMD`'s own, `CMD-SHELL`'s through `/bin/sh -c`; `None`
/// for `NONE`, an empty test or one not understood.
pub fn health_test_argv(test: &[String]) -> Option<Vec<String>> {
    match test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        Some((kind, [script])) if kind == "CMD-SHELL" && !script.trim().is_empty() => {
            Some(vec!["/bin/sh".into(), "-c".into(), script.clone()])
        }
        _ => None,
    }
}

/// Logs of a stack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackLogsRequest {
    /// The stack.
    pub stack: StackRef,
    /// Only these services (all when empty).
    #[serde(default)]
    pub services: Vec<String>,
    /// Last N lines per service.
    #[serde(default)]
    pub tail: Option<u32>,
}

/// Text output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The text.
    pub text: String,
}

/// Run a command inside a service's container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackExecRequest {
    /// The stack.
    pub stack: StackRef,
    /// Service name.
    pub service: String,
    /// Command inside the container.
    pub argv: Vec<String>,
}

/// Start one more container of a service beside the ones running, from the
/// stack's configuration, without touching the running ones or other services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartBesideRequest {
    /// The stack whose configuration the new container gets.
    pub stack: StackRef,
    /// The service.
    pub service: String,
    /// How many containers of the service there are to be afterwards (running + 1).
    pub replicas: u32,
}

/// Create or recreate some services only, leaving the others and their dependencies alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpServicesRequest {
    /// The stack.
    pub stack: StackRef,
    /// The services to bring to the stack's configuration.
    pub services: Vec<String>,
    /// Recreate even when the configuration is unchanged.
    #[serde(default)]
    pub force_recreate: bool,
    /// Seconds to wait for an old container to stop.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Stop (gracefully, then by force after the timeout) and remove containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRemoveRequest {
    /// Container IDs or names.
    pub containers: Vec<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Run a command in one container (by ID or name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerExecRequest {
    /// Container ID or name.
    pub container: String,
    /// The command.
    pub argv: Vec<String>,
}

/// Copy a directory out of an image into a directory on the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFromImageRequest {
    /// Image reference or ID.
    pub image: String,
    /// Absolute directory inside the image.
    pub path: String,
    /// Directory on the target to create with the contents (must not exist yet;
    /// made whole or not at all).
    pub dest: String,
}

operation!(
    /// `compose up -d` for the stack.
    StackUp, "stack.up", StackUpRequest => Empty
);
operation!(
    /// Compose's configuration hash of each service (`config --hash '*'`):
    /// the value a container created from this configuration carries in
    /// `com.docker.compose.config-hash`.
    StackServiceHashes, "stack.service_hashes", StackRef => BTreeMap<String, String>
);
operation!(
    /// Start one more container of a service beside the running ones (zero-downtime switch).
    StackStartBeside, "stack.start_beside", StartBesideRequest => Empty
);
operation!(
    /// Create or recreate only the named services (`up -d --no-deps SERVICE…`).
    StackUpServices, "stack.up_services", UpServicesRequest => Empty
);
operation!(
    /// Stop and remove containers (never volumes).
    ContainerRemove, "container.remove", ContainerRemoveRequest => Empty
);
operation!(
    /// Run a command in one container; its output and status come back as they are.
    ContainerExec, "container.exec", ContainerExecRequest => crate::ExecOutput
);
operation!(
    /// Copy a directory of an image to the target's filesystem (a site's static files).
    CopyFromImage, "image.copy_out", CopyFromImageRequest => Empty
);

/// The operations a stack plugin implements for zero-downtime switching; a
/// plugin lacking any of them gets today's whole-stack `stack.up`.
pub const SWITCH_OPERATIONS: &[&str] = &[
    StackServiceHashes::NAME,
    StackStartBeside::NAME,
    StackUpServices::NAME,
    ContainerRemove::NAME,
    ContainerExec::NAME,
    CopyFromImage::NAME,
];
// ---------------------------------------------------------------- everyday operations

/// Logs of one container, as a command the host streams (`logs -f`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLogsRequest {
    /// Container ID or name.
    pub container: String,
    /// Keep following new output until the container stops or the host closes the channel.
    #[serde(default)]
    pub follow: bool,
    /// Only output since this time: a duration (`10m`, `1h30m`) or an RFC 3339
    /// time, as the host validated it.
    #[serde(default)]
    pub since: Option<String>,
    /// Only the last N lines.
    #[serde(default)]
    pub tail: Option<u32>,
}

/// A command in one container, as a command the host runs with the user's
/// stdin, stdout and (when `tty`) terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerExecCommandRequest {
    /// Container ID or name.
    pub container: String,
    /// The command.
    pub argv: Vec<String>,
    /// The user (name or UID[:GID]) inside the container; the image's when `None`.
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a terminal in the container (the host then asks the transport for one too).
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open (the host streams its own stdin).
    #[serde(default)]
    pub interactive: bool,
}

/// Stop the stack's containers without removing them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStopRequest {
    /// The stack.
    pub stack: StackRef,
    /// Seconds between the stop signal and SIGKILL.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

operation!(
    /// The command that prints (and with `follow` keeps printing) one container's logs.
    ContainerLogsCommand, "container.logs_command", ContainerLogsRequest => CommandSpec
);
operation!(
    /// The command that runs a command in one container with the host's stdin (and terminal).
    ContainerExecCommand, "container.exec_command", ContainerExecCommandRequest => CommandSpec
);
operation!(
    /// Stop the stack's containers (kept, with their volumes).
    StackStop, "stack.stop", StackStopRequest => Empty
);
operation!(
    /// Start the stack's stopped containers again.
    StackStart, "stack.start", StackRef => Empty
);

/// The operations behind `cultivate logs -f/--since`, `exec`, `stop` and
/// `start`. Each is optional: a plugin lacking one still loads and deploys;
/// only the command that needs it says the plugin does not offer it
/// (`cultivate logs` without `-f`/`--since` keeps using `stack.logs`, and
/// `cultivate remove` needs only `stack.down`, `image.list` and `image.remove`).
pub const EVERYDAY_OPERATIONS: &[&str] =
    &[ContainerLogsCommand::NAME, ContainerExecCommand::NAME, StackStop::NAME, StackStart::NAME];

operation!(
    /// `compose down` for the stack (volumes kept unless asked).
    StackDown, "stack.down", StackDownRequest => Empty
);
operation!(
    /// Containers of the stack with state and health.
    StackPs, "stack.ps", StackRef => Vec<ServiceState>
);
operation!(
    /// Logs of the stack's services.
    StackLogs, "stack.logs", StackLogsRequest => Text
);
operation!(
    /// The resolved compose configuration (validates the file and `.env`).
    StackConfig, "stack.config", StackRef => Text
);
operation!(
    /// Run a command in a service's container.
    StackExec, "stack.exec", StackExecRequest => crate::ExecOutput
);

// ---------------------------------------------------------------- dependencies

/// Install what the plugin drives on the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    /// What the host probed.
    pub target: TargetInfo,
}

/// What an installation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    /// Steps taken, in order, for the user.
    pub steps: Vec<String>,
    /// Version now present.
    pub version: Option<String>,
}

/// Instructions for installing by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallInstructions {
    /// Commands or prose, one item per line.
    pub lines: Vec<String>,
}

operation!(
    /// Install the tool (Docker engine, Compose) on the target and verify it.
    Install, "deps.install", InstallRequest => InstallReport
);
operation!(
    /// How to install the tool by hand on this target.
    InstallHelp, "deps.install_help", InstallRequest => InstallInstructions
);

/// Run an operation's handler on a JSON payload: decode, call, encode.
pub fn handle<O: Operation>(
    payload: &str,
    f: impl FnOnce(O::Request) -> Result<O::Response, crate::PluginError>,
) -> Result<String, crate::PluginError> {
    let req: O::Request = serde_json::from_str(payload)
        .map_err(|e| crate::PluginError::invalid(format!("bad payload for {}: {e}", O::NAME)))?;
    let resp = f(req)?;
    serde_json::to_string(&resp)
        .map_err(|e| crate::PluginError::other(format!("cannot encode response of {}: {e}", O::NAME)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_formats_are_read_from_the_probe_detail() {
        let mut details = BTreeMap::new();
        assert!(!loads_format(&details, LOAD_FORMAT_OCI_PARTIAL), "no detail: docker archives only");
        details.insert(LOAD_FORMATS_DETAIL.to_string(), "docker-archive, oci-archive-partial".to_string());
        assert!(loads_format(&details, LOAD_FORMAT_OCI_PARTIAL));
        details.insert(LOAD_FORMATS_DETAIL.to_string(), "oci-archive-partial-v2".to_string());
        assert!(!loads_format(&details, LOAD_FORMAT_OCI_PARTIAL), "a prefix is not the format");
    }

    #[test]
    fn load_compression_is_read_from_the_probe_detail() {
        let mut details = BTreeMap::new();
        assert_eq!(loads_compression(&details, "zstd"), None, "no detail: the host decides");
        details.insert(LOAD_COMPRESSION_DETAIL.to_string(), "gzip".to_string());
        assert_eq!(loads_compression(&details, "zstd"), Some(false));
        assert_eq!(loads_compression(&details, "gzip"), Some(true));
        details.insert(LOAD_COMPRESSION_DETAIL.to_string(), "gzip, zstd".to_string());
        assert_eq!(loads_compression(&details, "zstd"), Some(true));
    }

    #[test]
    fn load_requests_stay_compatible_both_ways() {
        // An old host's `{}` is a request for an uncompressed archive.
        let old: ImageLoadRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(old, ImageLoadRequest::default());
        // An old plugin reads a new request as its `Empty`.
        let new = serde_json::to_string(&ImageLoadRequest {
            compression: Some("zstd".into()),
            verify: Some("app-backend:v2".into()),
        })
        .unwrap();
        let _: Empty = serde_json::from_str(&new).unwrap();
        assert_eq!(serde_json::to_string(&ImageLoadRequest::default()).unwrap(), "{}");
    }

    #[test]
    fn list_requests_stay_compatible_both_ways() {
        // An old host's request has no IDs; an old plugin reads the prefix and ignores them.
        let old: ImageListRequest = serde_json::from_str(r#"{"prefix":"app-"}"#).unwrap();
        assert_eq!(old, ImageListRequest { prefix: "app-".into(), ids: vec![] });
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"prefix":"app-"}"#);
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldListRequest {
            prefix: String,
        }
        let new = ImageListRequest { prefix: "app-".into(), ids: vec!["sha256:ab".into()] };
        let _: OldListRequest = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
    }

    #[test]
    fn health_tests_become_the_argv_docker_would_run() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(health_test_argv(&v(&["CMD", "curl", "-f", "x"])), Some(v(&["curl", "-f", "x"])));
        assert_eq!(
            health_test_argv(&v(&["CMD-SHELL", "pg_isready || exit 1"])),
            Some(v(&["/bin/sh", "-c", "pg_isready || exit 1"]))
        );
        assert_eq!(health_test_argv(&v(&["NONE"])), None);
        assert_eq!(health_test_argv(&v(&["CMD"])), None);
        assert_eq!(health_test_argv(&v(&["CMD-SHELL", " "])), None);
        assert_eq!(health_test_argv(&v(&["CMD-SHELL", "a", "b"])), None);
        assert_eq!(health_test_argv(&[]), None);
    }

    #[test]
    fn the_loaded_id_is_the_last_line_that_names_one() {
        let out = "Loaded image: app-backend:v2\ncultivate-loaded-id sha256:aa\n";
        assert_eq!(loaded_id(out).as_deref(), Some("sha256:aa"));
        assert_eq!(loaded_id("Loaded image ID: sha256:bb\n"), None, "docker's own line is not ours");
        assert_eq!(loaded_id("cultivate-loaded-id \n"), None, "an empty answer is no ID");
        assert_eq!(loaded_id("cultivate-loaded-idsha256:cc"), None);
        assert_eq!(loaded_id(""), None);
    }

    proptest::proptest! {
        #[test]
        fn loaded_id_never_panics_and_finds_what_was_printed(noise in "\\PC{0,200}", id in "sha256:[0-9a-f]{1,64}") {
            let _ = loaded_id(&noise);
            let out = format!("{noise}\n{LOADED_ID_LINE} {id}\n");
            proptest::prop_assert_eq!(loaded_id(&out), Some(id));
        }
    }
}
