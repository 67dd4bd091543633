use cultivate_plugin_api::fake::FakeHost;
use cultivate_plugin_api::ops::{ImageBuildRequest, ImageInfo, InstallReport, RemoveReport};
use cultivate_plugin_api::{ExecOutput, PluginError};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};

use super::*;

const VERSION_20: &str = include_str!("../tests/fixtures/docker-version-20.10.24.json");
const VERSION_CLIENT_ONLY: &str = include_str!("../tests/fixtures/docker-version-client-only.json");
const VERSION_CLIENT_ONLY_ERR: &str = include_str!("../tests/fixtures/docker-version-client-only.stderr");
const INFO_20: &str = include_str!("../tests/fixtures/docker-info-20.10.24.json");
/// The display line of the probe's `docker info` command (a fake host rule's prefix).
const INFO_CMD: &str = "sh -c 'docker info";
const INSPECT_20: &str = include_str!("../tests/fixtures/docker-image-inspect-20.10.24.json");
/// `docker info` of Docker 26+ with the containerd image store (trimmed to the fields read).
const INFO_CONTAINERD: &str = r#"{"Driver":"overlayfs","DriverStatus":[["driver-type","io.containerd.snapshotter.v1"]],"ServerVersion":"26.1.5"}"#;

fn version_json(server: &str) -> String {
    format!(
        r#"{{"Client":{{"Version":"28.2.2","ApiVersion":"1.41"}},"Server":{{"Version":"{server}","ApiVersion":"1.41"}}}}"#
    )
}

fn call<O: Operation>(fake: &FakeHost, req: &O::Request) -> Result<O::Response, PluginError> {
    let out = DockerPlugin.call(&fake.host(), O::NAME, &serde_json::to_string(req).unwrap())?;
    Ok(serde_json::from_str(&out).unwrap())
}

fn debian() -> TargetInfo {
    TargetInfo {
        os: "Linux".into(),
        arch: "x86_64".into(),
        os_release: [("ID".to_string(), "debian".to_string()), ("VERSION_ID".to_string(), "12".to_string())]
            .into_iter()
            .collect(),
        ..TargetInfo::default()
    }
}

fn fedora() -> TargetInfo {
    TargetInfo {
        os: "Linux".into(),
        os_release: [
            ("ID".to_string(), "fedora".to_string()),
            ("PRETTY_NAME".to_string(), "Fedora Linux 40".to_string()),
        ]
        .into_iter()
        .collect(),
        ..TargetInfo::default()
    }
}

#[test]
fn manifest_lists_what_it_implements() {
    let m = DockerPlugin.manifest();
    assert_eq!(m.name, "docker");
    assert_eq!(m.kinds, vec![PluginKind::Runtime]);
    assert_eq!(m.capabilities, vec![Capability::Images]);
    assert_eq!(m.target_os, vec!["linux"]);
    assert_eq!(m.priority, 50);
    for op in OPERATIONS {
        assert!(m.implements(op), "{op}");
    }
    assert!(cultivate_plugin_api::api_compatible(&m.api_version));
}

#[test]
fn unknown_operation_is_unsupported() {
    let err = DockerPlugin.call(&FakeHost::new().host(), "stack.up", "{}").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
}

// ---------------------------------------------------------------- probe

#[test]
fn parses_real_docker_version_of_this_machine() {
    let v = parse_version_json(VERSION_20).unwrap();
    assert_eq!(v.server.as_deref(), Some("20.10.24+dfsg1"));
    assert_eq!(v.server_api.as_deref(), Some("1.41"));
    assert_eq!(v.client.as_deref(), Some("28.2.2"));
}

#[test]
fn parses_real_client_only_version() {
    let v = parse_version_json(VERSION_CLIENT_ONLY).unwrap();
    assert_eq!(v.server, None);
    assert_eq!(v.client.as_deref(), Some("28.2.2"));
}

#[test]
fn parses_real_docker_info() {
    let s = parse_info(INFO_20).unwrap();
    assert_eq!(s.driver, "fuse-overlayfs");
    assert_eq!(s.image_store, "classic");
    let s = parse_info(INFO_CONTAINERD).unwrap();
    assert_eq!(s.image_store, "containerd");
    assert_eq!(s.driver, "overlayfs");
}

#[test]
fn probe_finds_server_version_and_details() {
    let fake = FakeHost::new().ok("docker version", VERSION_20).ok(INFO_CMD, INFO_20);
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(p.available, "{p:?}");
    assert_eq!(p.version.as_deref(), Some("20.10.24+dfsg1"));
    assert_eq!(p.score, PRIORITY);
    assert_eq!(p.details["api_version"], "1.41");
    assert_eq!(p.details["client_version"], "28.2.2");
    assert_eq!(p.details["storage_driver"], "fuse-overlayfs");
    assert_eq!(p.details["image_store"], "classic");
    assert_eq!(
        fake.commands(),
        vec![
            "docker version --format '{{json .}}'".to_string(),
            images::info_command(&["docker".to_string()]).display()
        ]
    );
}

#[test]
fn probe_reports_containerd_image_store() {
    let fake = FakeHost::new().ok("docker version", &version_json("26.1.5+dfsg1")).ok(INFO_CMD, INFO_CONTAINERD);
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(p.available);
    assert_eq!(p.details["image_store"], "containerd");
}

#[test]
fn probe_without_docker_is_unavailable() {
    let fake = FakeHost::new().fail("docker", 127, "sh: 1: docker: not found");
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    assert!(p.reason.unwrap().contains("docker not found"));
}

#[test]
fn probe_with_spawn_error_is_unavailable() {
    let fake = FakeHost::new()
        .answer("docker", Err(PluginError::new(ErrorKind::Io, "No such file or directory (os error 2)")));
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    assert!(p.reason.unwrap().contains("docker not found"));
}

#[test]
fn probe_with_client_only_is_unavailable_and_says_why() {
    let fake = FakeHost::new().answer(
        "docker version",
        Ok(ExecOutput {
            status: 1,
            stdout: VERSION_CLIENT_ONLY.to_string(),
            stderr: VERSION_CLIENT_ONLY_ERR.to_string(),
        }),
    );
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    let reason = p.reason.unwrap();
    assert!(reason.starts_with("docker client found but the daemon is not reachable: "), "{reason}");
    assert!(reason.contains("Cannot connect to the Docker daemon"), "{reason}");
    assert_eq!(p.details["client_version"], "28.2.2");
    // no `docker info` when the daemon is down
    assert_eq!(fake.commands().len(), 1);
}

#[test]
fn probe_with_permission_error_names_it() {
    let fake = FakeHost::new().answer(
        "docker version",
        Ok(ExecOutput {
            status: 1,
            stdout: r#"{"Client":{"Version":"20.10.24"},"Server":null}"#.to_string(),
            stderr:
                "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock"
                    .to_string(),
        }),
    );
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    assert!(p.reason.unwrap().contains("permission denied"));
}

#[test]
fn probe_refuses_old_docker_naming_both_versions() {
    let fake = FakeHost::new().ok("docker version", &version_json("19.03.15")).ok(INFO_CMD, INFO_20);
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    assert_eq!(p.version.as_deref(), Some("19.03.15"));
    let reason = p.reason.unwrap();
    assert!(reason.contains("19.03.15") && reason.contains(MIN_DOCKER), "{reason}");
}

#[test]
fn probe_with_garbage_output_is_unavailable() {
    let fake = FakeHost::new().fail("docker version", 1, "unknown flag: --format");
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(!p.available);
    assert!(p.reason.unwrap().contains("unknown flag"));
}

#[test]
fn probe_survives_failing_info() {
    let fake = FakeHost::new().ok("docker version", VERSION_20).fail(INFO_CMD, 1, "boom");
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert!(p.available);
    assert_eq!(p.details["image_store"], "unknown");
}

#[test]
fn lenient_versions() {
    use semver::Version;
    assert_eq!(version::parse_lenient("20.10.24+dfsg1"), Some(Version::new(20, 10, 24)));
    assert_eq!(version::parse_lenient("v2.26.1"), Some(Version::new(2, 26, 1)));
    assert_eq!(version::parse_lenient("20.10.24-0ubuntu1~22.04.1"), Some(Version::new(20, 10, 24)));
    assert_eq!(version::parse_lenient("19.03"), Some(Version::new(19, 3, 0)));
    assert_eq!(version::parse_lenient("27.0.0-rc.1"), Some(Version::new(27, 0, 0)));
    assert_eq!(version::parse_lenient("abc"), None);
    assert_eq!(version::parse_lenient(""), None);
    assert_eq!(version::find_version("docker-compose version 1.29.2, build unknown"), Some(Version::new(1, 29, 2)));
    assert_eq!(version::find_version("Docker Compose version v2.26.1"), Some(Version::new(2, 26, 1)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// P19: a Docker engine is accepted iff its version is at least 20.10.0,
    /// and a refusal names the version found and the one needed.
    #[test]
    fn p19_docker_minimum_version(major in 0u64..40, minor in 0u64..30, patch in 0u64..40, suffix in prop_oneof![
        Just(""), Just("+dfsg1"), Just("-0ubuntu1~22.04.1"), Just("-ce")
    ]) {
        let found = format!("{major}.{minor}.{patch}{suffix}");
        let fake = FakeHost::new().ok("docker version", &version_json(&found)).ok(INFO_CMD, INFO_20);
        let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
        let ok = semver::Version::new(major, minor, patch) >= semver::Version::parse(MIN_DOCKER).unwrap();
        prop_assert_eq!(p.available, ok);
        prop_assert_eq!(p.version.as_deref(), Some(found.as_str()));
        if !ok {
            let reason = p.reason.unwrap();
            prop_assert!(reason.contains(&found), "{}", reason);
            prop_assert!(reason.contains(MIN_DOCKER), "{}", reason);
        }
    }

    #[test]
    fn version_parsers_never_panic(s in ".{0,200}") {
        let _ = parse_version_json(&s);
        let _ = parse_info(&s);
        let _ = version::parse_lenient(&s);
        let _ = version::find_version(&s);
        let _ = version::require_min("Docker", &s, MIN_DOCKER);
        let _ = images::parse_image_inspect(&s, "x");
        let _ = images::parse_image_ls(&s, "cultivate");
    }

    #[test]
    fn json_shaped_garbage_never_panics(s in r#"[\[\]{}":,0-9a-zA-Z .\-+]{0,120}"#) {
        let _ = parse_version_json(&s);
        let _ = parse_info(&s);
        let _ = images::parse_image_inspect(&s, "x");
        let _ = images::parse_image_ls(&s, "");
    }

    #[test]
    fn probe_never_panics_on_any_output(out in ".{0,300}", err in ".{0,100}", status in -1i32..130) {
        let fake = FakeHost::new().answer("docker", Ok(ExecOutput { status, stdout: out, stderr: err }));
        let _ = DockerPlugin.probe(&fake.host(), &debian());
    }
}

// ---------------------------------------------------------------- images

#[test]
fn parses_real_image_inspect() {
    let infos = images::parse_image_inspect(INSPECT_20, "cultivate/debian:bookworm").unwrap();
    assert_eq!(infos.len(), 1);
    let i = &infos[0];
    assert_eq!(i.id.as_deref(), Some("sha256:0a8df34b2a9e34e20824a3dfc81f132fcd803756f751a80a0115c4da1c5647ac"));
    assert_eq!(i.layers, vec!["sha256:e8b2f0aa26a7b0d11315c52c6f0ef9316dad2bfd6cc21549533845d6bd2b384e"]);
    assert_eq!(i.size, 116561941);
    assert_eq!(i.tags, vec!["cultivate/debian:bookworm"]);
    assert!(i.labels.is_empty());
}

#[test]
fn inspect_reports_absent_images_without_error() {
    let fake = FakeHost::new().ok("docker image inspect cultivate/debian:bookworm", INSPECT_20).answer(
        "docker image inspect nosuch:1",
        Ok(ExecOutput {
            status: 1,
            stdout: "[]\n".into(),
            stderr: "Error response from daemon: no such image: nosuch:1: No such image: nosuch:1".into(),
        }),
    );
    let infos = call::<ops::ImageInspect>(
        &fake,
        &ops::ImageRefs { refs: vec!["cultivate/debian:bookworm".into(), "nosuch:1".into()] },
    )
    .unwrap();
    assert_eq!(infos.len(), 2);
    assert!(infos[0].id.is_some());
    assert_eq!(infos[0].reference, "cultivate/debian:bookworm");
    assert_eq!(infos[1], ImageInfo { reference: "nosuch:1".into(), ..ImageInfo::default() });
}

#[test]
fn inspect_fails_when_the_daemon_is_down() {
    let fake = FakeHost::new().fail("docker image inspect", 1, "Cannot connect to the Docker daemon");
    let err = call::<ops::ImageInspect>(&fake, &ops::ImageRefs { refs: vec!["a:1".into()] }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::CommandFailed);
    assert!(err.message.contains("Cannot connect"));
}

#[test]
fn inspect_reads_labels() {
    let json = r#"[{"Id":"sha256:abc","RepoTags":["cultivate-backend:1.2.0"],"Size":12,
        "RootFS":{"Type":"layers","Layers":["sha256:l1","sha256:l2"]},
        "Config":{"Labels":{"org.cultivate.release":"1.2.0"}}}]"#;
    let infos = images::parse_image_inspect(json, "cultivate-backend:1.2.0").unwrap();
    assert_eq!(infos[0].labels["org.cultivate.release"], "1.2.0");
    assert_eq!(infos[0].layers.len(), 2);
}

/// The two-command list the finch plugin shares (its CLI's `image ls`
/// output is JSON lines).
#[test]
fn two_command_list_filters_by_prefix_then_inspects() {
    let ls = [
        r#"{"Containers":"N/A","ID":"0c94d737ccc9","Repository":"cultivate-database","Tag":"latest"}"#,
        r#"{"Containers":"N/A","ID":"674072cd1b96","Repository":"\u003cnone\u003e","Tag":"\u003cnone\u003e"}"#,
        r#"{"Containers":"N/A","ID":"0a8df34b2a9e","Repository":"cultivate/debian","Tag":"bookworm"}"#,
        r#"{"Containers":"N/A","ID":"1111","Repository":"postgres","Tag":"16"}"#,
        "not json",
    ]
    .join("\n");
    assert_eq!(images::parse_image_ls(&ls, "cultivate-"), vec!["cultivate-database:latest"]);
    let fake = FakeHost::new().ok("docker image ls", &ls).ok(
        "docker image inspect 0c94d737ccc9",
        r#"[{"Id":"sha256:0c94d737ccc9ff","RootFS":{"Layers":["sha256:a"]}}]"#,
    );
    let infos = images::list(&fake.host(), &["docker".to_string()], "cultivate-").unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].reference, "cultivate-database:latest");
    assert_eq!(infos[0].id.as_deref(), Some("sha256:0c94d737ccc9ff"));
    assert_eq!(fake.commands(), vec!["docker image ls --format '{{json .}}'", "docker image inspect 0c94d737ccc9"]);
}

#[test]
fn two_command_list_inspects_every_listed_image_at_once() {
    let ls = [
        r#"{"ID":"aaaa11112222","Repository":"shop-backend","Tag":"v1"}"#,
        r#"{"ID":"aaaa11112222","Repository":"shop-backend","Tag":"v2"}"#,
        r#"{"ID":"bbbb33334444","Repository":"shop-database","Tag":"v1"}"#,
    ]
    .join("\n");
    let fake = FakeHost::new().ok("docker image ls", &ls).ok(
        "docker image inspect aaaa11112222 bbbb33334444",
        r#"[{"Id":"sha256:aaaa11112222f","RootFS":{"Layers":["sha256:a"]}},
            {"Id":"sha256:bbbb33334444f","RootFS":{"Layers":["sha256:b"]}}]"#,
    );
    let docker = ["docker".to_string()];
    let infos = images::list(&fake.host(), &docker, "shop-").unwrap();
    let got: Vec<(&str, &str)> = infos.iter().map(|i| (i.reference.as_str(), i.id.as_deref().unwrap())).collect();
    assert_eq!(
        got,
        vec![
            ("shop-backend:v1", "sha256:aaaa11112222f"),
            ("shop-backend:v2", "sha256:aaaa11112222f"),
            ("shop-database:v1", "sha256:bbbb33334444f")
        ]
    );
    assert_eq!(fake.commands().len(), 2);
    // An image gone between the two commands: one reference at a time.
    let fake = FakeHost::new()
        .ok("docker image ls", &ls)
        .fail("docker image inspect aaaa11112222 bbbb33334444", 1, "Error: No such image: bbbb33334444")
        .ok("docker image inspect shop-backend:v1", r#"[{"Id":"sha256:aaaa11112222f"}]"#)
        .ok("docker image inspect shop-backend:v2", r#"[{"Id":"sha256:aaaa11112222f"}]"#)
        .fail("docker image inspect shop-database:v1", 1, "Error: No such image: shop-database:v1");
    let infos = images::list(&fake.host(), &docker, "shop-").unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(fake.commands().len(), 5);
}

const A: &str = "sha256:aaaa111122223333444455556666777788889999aaaabbbbccccddddeeeeffff";
const B: &str = "sha256:bbbb111122223333444455556666777788889999aaaabbbbccccddddeeeeffff";
const C: &str = "sha256:cccc111122223333444455556666777788889999aaaabbbbccccddddeeeeffff";

#[test]
fn list_reads_the_images_and_the_ids_asked_in_one_command() {
    let out = format!(
        "shop-backend v1 {A}\nshop-backend v2 {A}\nshop-database <none> {B}\n{}\n\
         [{{\"Id\":\"{A}\",\"RootFS\":{{\"Layers\":[\"sha256:a\"]}}}},\
          {{\"Id\":\"{B}\",\"RootFS\":{{\"Layers\":[\"sha256:b\"]}}}}]\n",
        images::LIST_SPLIT
    );
    let fake = FakeHost::new()
        .answer("sh -c", Ok(ExecOutput { status: 1, stdout: out, stderr: format!("Error: No such image: {C}\n") }));
    let req = ops::ImageListRequest { prefix: "shop-".into(), ids: vec![A.into(), C.into()] };
    let infos = call::<ops::ImageList>(&fake, &req).unwrap();
    let got: Vec<(&str, Option<&str>)> = infos.iter().map(|i| (i.reference.as_str(), i.id.as_deref())).collect();
    assert_eq!(
        got,
        vec![(B, Some(B)), ("shop-backend:v1", Some(A)), ("shop-backend:v2", Some(A)), (A, Some(A)), (C, None)]
    );
    assert_eq!(infos[3].layers, vec!["sha256:a"], "an ID asked comes inspected");
    let commands = fake.commands();
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert!(commands[0].contains("image ls --no-trunc") && commands[0].contains(C), "{commands:?}");
}

#[test]
fn list_fails_when_the_daemon_is_down_and_when_inspect_fails_otherwise() {
    let fake = FakeHost::new().fail("sh -c", 1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock");
    let err =
        call::<ops::ImageList>(&fake, &ops::ImageListRequest { prefix: "shop-".into(), ids: vec![] }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::CommandFailed);
    assert!(err.message.contains("Cannot connect"), "{err:?}");
    let out = format!("shop-backend v1 {A}\n{}\n", images::LIST_SPLIT);
    let fake = FakeHost::new()
        .answer("sh -c", Ok(ExecOutput { status: 1, stdout: out, stderr: "error during connect: EOF\n".into() }));
    let err =
        call::<ops::ImageList>(&fake, &ops::ImageListRequest { prefix: "shop-".into(), ids: vec![] }).unwrap_err();
    assert!(err.message.contains("error during connect"), "{err:?}");
}

#[test]
fn list_with_nothing_listed_answers_only_the_ids() {
    let fake = FakeHost::new().answer(
        "sh -c",
        Ok(ExecOutput {
            status: 1,
            stdout: format!("\n{}\n[]\n", images::LIST_SPLIT),
            stderr: format!("Error: No such image: {C}\n"),
        }),
    );
    let infos =
        call::<ops::ImageList>(&fake, &ops::ImageListRequest { prefix: "shop-".into(), ids: vec![C.into()] }).unwrap();
    assert_eq!(infos, vec![ImageInfo { reference: C.into(), ..ImageInfo::default() }]);
    let empty = FakeHost::new().ok("sh -c", &format!("\n{}\n", images::LIST_SPLIT));
    assert!(call::<ops::ImageList>(&empty, &ops::ImageListRequest::default()).unwrap().is_empty());
}

#[test]
fn ls_lines_keep_the_prefix_and_name_untagged_images_by_id() {
    let text = format!("shop-web v1 {A}\nshop-web <none> {B}\n<none> <none> {C}\nshopping v1 {C}\nshop-x\n");
    assert_eq!(
        images::parse_ls_lines(&text, "shop-"),
        vec![(B.to_string(), B.to_string()), ("shop-web:v1".to_string(), A.to_string())]
    );
    assert!(images::parse_ls_lines(&text, "").is_empty(), "an empty prefix lists nothing");
}

/// The list command's shell against a stand-in `docker` (a shell function
/// printing a fixed listing and echoing the inspect's arguments): the prefix
/// filter and the IDs handed to inspect are the shell's own work.
#[test]
fn list_command_filters_in_the_shell() {
    let spec = images::list_command(&["fake_docker".to_string()], "shop-", &["sha256:zz".to_string()]);
    let script = format!(
        "fake_docker() {{ if [ \"$2\" = ls ]; then printf 'shop-a v1 sha256:11\\nother v1 sha256:22\\nshop-b v1 sha256:11\\n'; \
         else echo \"inspect: $*\"; fi; }}; {}",
        spec.argv[2]
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout,
        format!(
            "shop-a v1 sha256:11\nshop-b v1 sha256:11\n{}\ninspect: image inspect sha256:11 sha256:zz\n",
            images::LIST_SPLIT
        )
    );
}

proptest::proptest! {
    #[test]
    fn ls_lines_never_panic(text in "\\PC{0,300}", prefix in "[a-z-]{0,6}") {
        for (r, id) in images::parse_ls_lines(&text, &prefix) {
            proptest::prop_assert!(!prefix.is_empty());
            proptest::prop_assert!(r.starts_with(&prefix) || r == id);
        }
    }
}

#[test]
fn load_command_is_docker_load() {
    let spec = call::<ops::ImageLoadCommand>(&FakeHost::new(), &ops::ImageLoadRequest::default()).unwrap();
    assert_eq!(spec.argv, vec!["docker", "load"]);
    assert_eq!(spec.stdin, None);
    // gzip: every engine reads it itself.
    let gzip = ops::ImageLoadRequest { compression: Some("gzip".into()), ..Default::default() };
    assert_eq!(call::<ops::ImageLoadCommand>(&FakeHost::new(), &gzip).unwrap().argv, vec!["docker", "load"]);
}

#[test]
fn zstd_load_pipes_through_the_targets_zstd_when_it_has_one() {
    let zstd = ops::ImageLoadRequest { compression: Some("zstd".into()), ..Default::default() };
    let spec = call::<ops::ImageLoadCommand>(&FakeHost::new(), &zstd).unwrap();
    assert_eq!(
        spec.argv,
        vec!["sh", "-c", "if command -v zstd >/dev/null 2>&1; then zstd -dcq | docker load; else docker load; fi"]
    );
    let bad = ops::ImageLoadRequest { compression: Some("lz4".into()), ..Default::default() };
    let e = call::<ops::ImageLoadCommand>(&FakeHost::new(), &bad).unwrap_err();
    assert!(e.message.contains("`lz4`"), "{e:?}");
}

/// Runs the zstd load command's shell with a stand-in `docker` (cat) on this
/// machine: the archive comes out decompressed when `zstd` is there.
#[test]
fn zstd_load_command_decompresses_with_a_real_zstd() {
    if std::process::Command::new("zstd").arg("--version").output().is_err() {
        eprintln!("skipped: no zstd on this machine");
        return;
    }
    let spec = images::load_command_for(&["cat".to_string()], Some("zstd"), None).unwrap();
    let script = spec.argv[2].replace("cat load", "cat");
    let data = b"an image archive ".repeat(1000);
    let run = |args: &[&str], input: &[u8]| -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new(args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{args:?}");
        out.stdout
    };
    let compressed = run(&["zstd", "-q", "-c"], &data);
    assert!(compressed.len() < data.len() / 10);
    assert_eq!(run(&["sh", "-c", &script], &compressed), data);
}

#[test]
fn probe_reports_which_compressions_load() {
    let zstd_found = format!("{INFO_20}\n{}\n", images::ZSTD_FOUND);
    // Docker 20.10 without zstd on the target: gzip only.
    let fake = FakeHost::new().ok("docker version", VERSION_20).ok(INFO_CMD, INFO_20);
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert_eq!(p.details[ops::LOAD_COMPRESSION_DETAIL], "gzip");
    assert_eq!(p.details["image_store"], "classic", "the docker info JSON is still read");
    // Docker 20.10 with zstd: zstd too, learnt from the same command.
    let fake = FakeHost::new().ok("docker version", VERSION_20).ok(INFO_CMD, &zstd_found);
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert_eq!(p.details[ops::LOAD_COMPRESSION_DETAIL], "gzip,zstd");
    assert_eq!(p.details["storage_driver"], "fuse-overlayfs");
    assert_eq!(fake.commands().len(), 2, "no extra round trip");
    // Docker 26 reads zstd itself.
    let fake = FakeHost::new().ok("docker version", &version_json("26.1.5+dfsg1")).ok(INFO_CMD, INFO_CONTAINERD);
    let p = DockerPlugin.probe(&fake.host(), &debian()).unwrap();
    assert_eq!(p.details[ops::LOAD_COMPRESSION_DETAIL], "gzip,zstd");
}

#[test]
fn load_compression_by_engine_version_and_zstd() {
    assert_eq!(load_compression("20.10.24+dfsg1", false), "gzip");
    assert_eq!(load_compression("20.10.24+dfsg1", true), "gzip,zstd");
    assert_eq!(load_compression("23.0.0", false), "gzip,zstd");
    assert_eq!(load_compression("26.1.5+dfsg1", false), "gzip,zstd");
    assert_eq!(load_compression("garbage", false), "gzip");
}

#[test]
fn tag_runs_docker_image_tag() {
    let fake = FakeHost::new().ok("docker image tag", "");
    call::<ops::ImageTag>(&fake, &ops::ImageTagRequest { source: "sha256:abc".into(), target: "app:2".into() })
        .unwrap();
    assert_eq!(fake.commands(), vec!["docker image tag sha256:abc app:2"]);
    let err =
        call::<ops::ImageTag>(&fake, &ops::ImageTagRequest { source: "".into(), target: "x".into() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[test]
fn tag_failure_is_an_error() {
    let fake = FakeHost::new().fail("docker image tag", 1, "Error response from daemon: No such image: a:1");
    let err =
        call::<ops::ImageTag>(&fake, &ops::ImageTagRequest { source: "a:1".into(), target: "b:1".into() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::CommandFailed);
}

#[test]
fn remove_never_forces_and_reports_failures() {
    let fake = FakeHost::new()
        .ok("docker image rm old:1", "Untagged: old:1\n")
        .fail(
            "docker image rm inuse:1",
            1,
            "Error response from daemon: conflict: unable to remove repository reference \"inuse:1\" (must force) - container 62b3996fe5cc is using its referenced image 0a8df34b2a9e",
        )
        .fail("docker image rm gone:1", 1, "Error response from daemon: No such image: gone:1");
    let report = call::<ops::ImageRemove>(
        &fake,
        &ops::ImageRefs { refs: vec!["old:1".into(), "inuse:1".into(), "gone:1".into()] },
    )
    .unwrap();
    assert_eq!(report.removed, vec!["old:1", "gone:1"]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, "inuse:1");
    assert!(report.failed[0].1.contains("is using its referenced image"));
    for c in fake.commands() {
        assert!(!c.contains("-f") && !c.contains("--force"), "{c}");
    }
    let _: RemoveReport = report;
}

#[test]
fn build_command_shape() {
    let req = ImageBuildRequest {
        context_dir: "/home/deploy/cultivate/build".into(),
        dockerfile: "docker/Dockerfile.backend".into(),
        tag: "cultivate-backend:1.2.0".into(),
        build_args: [("NODE_ENV".to_string(), "production".to_string())].into_iter().collect(),
        labels: [("org.cultivate.release".to_string(), "1.2.0".to_string())].into_iter().collect(),
    };
    let spec = call::<ops::ImageBuildCommand>(&FakeHost::new(), &req).unwrap();
    assert_eq!(
        spec.argv,
        vec![
            "docker",
            "build",
            "-f",
            "/home/deploy/cultivate/build/docker/Dockerfile.backend",
            "-t",
            "cultivate-backend:1.2.0",
            "--build-arg",
            "NODE_ENV=production",
            "--label",
            "org.cultivate.release=1.2.0",
            "/home/deploy/cultivate/build",
        ]
    );
    assert_eq!(spec.cwd.as_deref(), Some("/home/deploy/cultivate/build"));
    let abs = ImageBuildRequest { dockerfile: "/abs/Dockerfile".into(), ..req.clone() };
    let spec = call::<ops::ImageBuildCommand>(&FakeHost::new(), &abs).unwrap();
    assert_eq!(spec.argv[3], "/abs/Dockerfile");
    let bad = ImageBuildRequest { tag: "".into(), ..req };
    assert_eq!(call::<ops::ImageBuildCommand>(&FakeHost::new(), &bad).unwrap_err().kind, ErrorKind::InvalidRequest);
}

#[test]
fn bad_payload_is_invalid_request() {
    let err = DockerPlugin.call(&FakeHost::new().host(), "image.inspect", "{not json").unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

// ---------------------------------------------------------------- install

/// A host whose answers change over time: each prefix has a queue of answers,
/// the last one repeats. Unknown commands exit 127.
#[derive(Default)]
struct SeqHost {
    rules: Mutex<Vec<(String, Vec<ExecOutput>)>>,
    commands: Mutex<Vec<String>>,
}

impl SeqHost {
    fn with(self, prefix: &str, answers: &[(i32, &str)]) -> Self {
        let outs = answers
            .iter()
            .map(|(status, out)| ExecOutput { status: *status, stdout: out.to_string(), stderr: String::new() })
            .collect();
        self.rules.lock().unwrap().push((prefix.to_string(), outs));
        self
    }
}

impl cultivate_plugin_api::HostServices for SeqHost {
    fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        let line = req.display();
        self.commands.lock().unwrap().push(line.clone());
        let mut rules = self.rules.lock().unwrap();
        for (prefix, answers) in rules.iter_mut().rev() {
            if line.starts_with(prefix.as_str()) {
                return Ok(if answers.len() > 1 { answers.remove(0) } else { answers[0].clone() });
            }
        }
        Ok(ExecOutput { status: 127, stdout: String::new(), stderr: format!("no rule for {line}") })
    }
    fn put_file(&self, _: &str, _: u32, _: &[u8]) -> Result<(), PluginError> {
        Ok(())
    }
    fn log(&self, _: cultivate_plugin_api::LogLevel, _: &str, _: &str) {}
}

fn install_host(systemd: bool, answers_after: usize) -> Arc<SeqHost> {
    let mut info = vec![(1, ""); answers_after];
    info.push((0, "20.10.24+dfsg1"));
    Arc::new(
        SeqHost::default()
            .with("env DEBIAN_FRONTEND=noninteractive apt-get update", &[(0, "")])
            .with("env DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io", &[(0, "")])
            .with("docker info --format '{{.ServerVersion}}'", &info)
            .with("test -d /run/systemd/system", &[(if systemd { 0 } else { 1 }, "")])
            .with("systemctl enable --now docker", &[(0, "")])
            .with("sh -c", &[(0, "")])
            .with("docker version", &[(0, VERSION_20)])
            .with("docker info --format '{{json .}}'", &[(0, INFO_20)]),
    )
}

#[test]
fn install_on_debian_with_systemd_enables_the_service() {
    let seq = install_host(true, 2);
    let report: InstallReport =
        install_with_timeout(&Host::new(seq.clone()), &debian(), Duration::from_secs(10)).unwrap();
    assert_eq!(report.version.as_deref(), Some("20.10.24+dfsg1"));
    let cmds = seq.commands.lock().unwrap().clone();
    assert_eq!(cmds[0], "env DEBIAN_FRONTEND=noninteractive apt-get update");
    assert_eq!(cmds[1], "env DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io");
    assert!(cmds.contains(&"systemctl enable --now docker".to_string()), "{cmds:?}");
    assert!(!cmds.iter().any(|c| c.contains("nohup")), "{cmds:?}");
    assert!(cmds.iter().any(|c| c.starts_with("docker version")), "verified with the probe: {cmds:?}");
}

#[test]
fn install_without_systemd_starts_dockerd_in_the_background() {
    let seq = install_host(false, 3);
    let report = install_with_timeout(&Host::new(seq.clone()), &debian(), Duration::from_secs(10)).unwrap();
    assert!(report.steps.iter().any(|s| s.contains("dockerd")), "{:?}", report.steps);
    let cmds = seq.commands.lock().unwrap().clone();
    assert!(cmds.iter().any(|c| c.contains("nohup dockerd >/var/log/dockerd.log 2>&1")), "{cmds:?}");
    assert!(!cmds.iter().any(|c| c.starts_with("systemctl")), "{cmds:?}");
}

#[test]
fn install_skips_starting_a_running_daemon() {
    let seq = install_host(false, 0);
    let report = install_with_timeout(&Host::new(seq.clone()), &debian(), Duration::from_secs(10)).unwrap();
    assert!(report.steps.iter().any(|s| s.contains("already running")));
    let cmds = seq.commands.lock().unwrap().clone();
    // (the probe's `docker info` runs in a `sh -c` too: no daemon is started by it)
    assert!(!cmds.iter().any(|c| c.contains("nohup dockerd") || c.starts_with("systemctl")), "{cmds:?}");
}

#[test]
fn install_times_out_when_the_daemon_never_answers() {
    let seq = install_host(false, 1_000_000);
    let err = install_with_timeout(&Host::new(seq), &debian(), Duration::from_millis(600)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
}

#[test]
fn install_fails_when_verification_fails() {
    let seq = Arc::new(
        SeqHost::default()
            .with("env DEBIAN_FRONTEND=noninteractive apt-get", &[(0, "")])
            .with("docker info --format '{{.ServerVersion}}'", &[(0, "19.03.0")])
            .with("docker version", &[(0, &version_json("19.03.0"))])
            .with("docker info --format '{{json .}}'", &[(0, INFO_20)]),
    );
    let err = install_with_timeout(&Host::new(seq), &debian(), Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAvailable);
    assert!(err.message.contains("19.03.0") && err.message.contains(MIN_DOCKER), "{}", err.message);
}

#[test]
fn install_refuses_other_distributions_with_instructions() {
    let fake = FakeHost::new();
    let err = call::<ops::Install>(&fake, &ops::InstallRequest { target: fedora() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAvailable);
    assert!(err.message.contains("Fedora Linux 40"), "{}", err.message);
    assert!(err.hint.unwrap().contains("docs.docker.com"));
    assert!(fake.commands().is_empty(), "nothing run");
}

#[test]
fn install_failure_of_apt_is_reported() {
    let fake = FakeHost::new().fail("env DEBIAN_FRONTEND=noninteractive apt-get update", 100, "E: network down");
    let err = call::<ops::Install>(&fake, &ops::InstallRequest { target: debian() }).unwrap_err();
    assert_eq!(err.kind, ErrorKind::CommandFailed);
    assert!(err.message.contains("E: network down"));
}

#[test]
fn install_help_is_exact_on_debian_and_generic_elsewhere() {
    let help = call::<ops::InstallHelp>(&FakeHost::new(), &ops::InstallRequest { target: debian() }).unwrap();
    assert!(help.lines.iter().any(|l| l.contains("apt-get install -y docker.io")));
    let ubuntu = TargetInfo {
        os_release: [("ID".to_string(), "linuxmint".to_string()), ("ID_LIKE".to_string(), "ubuntu debian".to_string())]
            .into_iter()
            .collect(),
        ..debian()
    };
    assert!(install_help(&ubuntu).lines.iter().any(|l| l.contains("docker.io")));
    let other = install_help(&fedora());
    assert!(other.lines.iter().any(|l| l.contains("https://docs.docker.com/engine/install/")));
    assert!(!other.lines.iter().any(|l| l.contains("apt-get")));
}

#[test]
fn a_verifying_load_reports_the_id_after_a_load_that_worked() {
    let req = ops::ImageLoadRequest { compression: None, verify: Some("shop-web:v2".into()) };
    let spec = call::<ops::ImageLoadCommand>(&FakeHost::new(), &req).unwrap();
    assert_eq!(
        spec.argv,
        vec![
            "sh",
            "-c",
            "docker load || exit $?; docker image inspect --format 'cultivate-loaded-id {{.Id}}' shop-web:v2 2>/dev/null; exit 0"
        ]
    );
    let req = ops::ImageLoadRequest { compression: Some("zstd".into()), verify: Some("it's:1".into()) };
    let spec = call::<ops::ImageLoadCommand>(&FakeHost::new(), &req).unwrap();
    assert!(spec.argv[2].starts_with("if command -v zstd"), "{spec:?}");
    assert!(spec.argv[2].ends_with("'it'\\''s:1' 2>/dev/null; exit 0"), "{spec:?}");
    // Run with stand-ins: the load's failure is the command's status, and no ID is printed.
    let run = |load: &str| {
        let script = spec.argv[2].replace("docker load", load).replace("docker image inspect", "echo");
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = run("(cat >/dev/null; exit 3)");
    assert_eq!((code, ops::loaded_id(&out)), (Some(3), None));
    let (code, out) = run("cat >/dev/null");
    assert_eq!(code, Some(0));
    assert!(out.contains("cultivate-loaded-id"), "{out}");
}
