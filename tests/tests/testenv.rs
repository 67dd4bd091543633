//! The test target hosts themselves (scripts/testenv.sh): each kind comes up
//! for real, is what it claims to be, and leaves nothing behind.
//!
//! Needs root; run with `cargo test -p cultivate-e2e --test testenv`. Under
//! `CI=1` a missing prerequisite fails instead of skipping.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cultivate_e2e::prereq;
use cultivate_e2e::testenv::{self, Kind, Target};

fn local(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// GET `url` from this machine until it answers (containers take a moment).
fn http_get(url: &str, within: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        let out = Command::new("curl").args(["-sf", "--max-time", "3", url]).output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        if start.elapsed() > within {
            bail!("{url} did not answer within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Tears the target down and checks that nothing of it is left, including
/// the processes of the containers its engine ran.
fn down_and_check_clean(t: Target) {
    let name = t.name.clone();
    let dir = t.dir.clone();
    let veth = t.host_address.as_deref().and_then(testenv::veth_of);
    let containers: Vec<String> = if t.kind.has_docker() {
        t.ssh_ok("docker ps -aq --no-trunc").unwrap().split_whitespace().map(str::to_string).collect()
    } else {
        Vec::new()
    };
    t.down().expect("down");
    let mut left = testenv::leftovers(&name, &dir);
    left.extend(testenv::container_processes(&containers));
    assert!(left.is_empty(), "left behind by down {name}: {left:#?}");
    if let Some(veth) = veth {
        assert!(!testenv::host_links().contains(&veth), "veth {veth} left behind");
    }
    // a second down (and one after a crash) is harmless
    testenv::down(&name).expect("second down");
}

/// Puts the busybox image on this machine's engine under `tag`, then sends
/// it to the target the way a deploy does: `docker save | ssh docker load`.
fn send_tiny_image(t: &Target, tag: &str) -> Result<()> {
    let rootfs = testenv::tiny_image_rootfs()?;
    local("docker", &["import", &rootfs.display().to_string(), tag])?;
    let archive = tempfile::NamedTempFile::new()?;
    let saved = local("docker", &["save", "-o", &archive.path().display().to_string(), tag]);
    let _ = local("docker", &["rmi", tag]);
    saved?;
    let loaded = t.ssh_with_input("docker load", archive.path())?;
    assert!(loaded.contains(tag), "docker load said: {loaded}");
    Ok(())
}

fn check_published_port(t: &Target, tag: &str, port: u16) {
    t.ssh_ok(&format!("docker run -d --name web{port} -p {port}:80 {tag} httpd -f -p 80 -h /www"))
        .expect("docker run on the target");
    let body = http_get(&format!("http://{}:{port}/", t.address), Duration::from_secs(20))
        .expect("published port answers from this machine");
    assert_eq!(body, "cultivate-testenv");
}

#[test]
fn engine_target_has_its_own_engine() {
    if !testenv::available(Kind::Engine) || !prereq::require(prereq::docker_available(), "this machine's Docker engine")
    {
        return;
    }
    let t = Target::up("e2e-engine", Kind::Engine).expect("up");
    assert_eq!(t.kind, Kind::Engine);
    assert!(t.address.starts_with("10.77."), "{}", t.address);
    assert_eq!(t.port, 22);
    assert_eq!(t.ssh_uri(), format!("ssh://root@{}:22", t.address));

    // the sessions see the target's engine through DOCKER_HOST
    let dh = t.ssh_ok("echo $DOCKER_HOST").unwrap();
    assert_eq!(Some(dh.trim()), t.docker_host.as_deref());

    let fmt = "{{.ID}} {{.DockerRootDir}}";
    let mine = local("docker", &["info", "--format", fmt]).unwrap();
    let theirs = t.ssh_ok(&format!("docker info --format '{fmt}'")).unwrap();
    let (mine_id, mine_root) = mine.split_once(' ').unwrap();
    let (their_id, their_root) = theirs.trim().split_once(' ').unwrap();
    assert_ne!(mine_id, their_id, "the target must have its own engine");
    assert_ne!(mine_root, their_root);
    assert!(Path::new(their_root).starts_with(&t.dir), "{their_root}");

    let v1 = t.ssh_ok("docker-compose version --short").unwrap();
    assert!(v1.trim().starts_with("1."), "docker-compose {v1}");

    // its own address and network namespace
    let addrs = t.ssh_ok("ip -4 -o addr show dev eth0").unwrap();
    assert!(addrs.contains(&format!("{}/24", t.address)), "{addrs}");

    let tag = "cultivate-testenv/busybox:e2e-engine";
    send_tiny_image(&t, tag).expect("image transfer");
    check_published_port(&t, tag, 8080);
    // the container runs on the target's engine, not this machine's
    let here = local("docker", &["ps", "-q", "--filter", "name=web8080"]).unwrap();
    assert!(here.is_empty(), "container on this machine's engine: {here}");

    // faults: a cut link, then a stopped engine
    t.set_link(false).unwrap();
    let cut =
        Command::new("curl").args(["-sf", "--max-time", "2", &format!("http://{}:8080/", t.address)]).status().unwrap();
    assert!(!cut.success(), "answered through a cut link");
    t.set_link(true).unwrap();
    http_get(&format!("http://{}:8080/", t.address), Duration::from_secs(20)).expect("link restored");
    // (without its container: dockerd would wait 10 s for httpd, which
    // ignores SIGTERM as PID 1)
    t.ssh_ok("docker rm -f web8080").unwrap();
    t.stop_engine().unwrap();
    assert!(!t.ssh("docker info").unwrap().status.success(), "engine still answers");
    t.start_engine().unwrap();
    t.ssh_ok("docker info").expect("engine answers again");
    t.limit_rate(Some("2mbit")).unwrap();
    let payload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(payload.path(), vec![7u8; 512 * 1024]).unwrap();
    let start = Instant::now();
    t.ssh_with_input("cat >/dev/null", payload.path()).unwrap();
    // 4 Mbit at 2 Mbit/s
    assert!(start.elapsed() >= Duration::from_millis(1500), "rate limit not applied: {:?}", start.elapsed());
    t.limit_rate(None).unwrap();

    down_and_check_clean(t);
}

#[test]
fn bare_target_has_no_docker() {
    if !testenv::available(Kind::Bare) {
        return;
    }
    let t = Target::up("e2e-bare", Kind::Bare).expect("up");
    assert_eq!(t.kind, Kind::Bare);
    assert_eq!(t.docker_host, None);
    assert_eq!(t.ssh_ok("echo ok").unwrap().trim(), "ok");
    let release = t.ssh_ok("cat /etc/os-release").unwrap();
    assert!(release.contains("bookworm"), "{release}");
    let docker = t.ssh("command -v docker").unwrap();
    assert!(!docker.status.success(), "docker present on the bare target: {}", String::from_utf8_lossy(&docker.stdout));
    // it reaches Debian's archive (through NAT), where the deploy tool
    // installs Docker from
    t.ssh_ok("curl -sfI --max-time 20 http://deb.debian.org/debian/dists/bookworm/Release >/dev/null")
        .expect("the bare target reaches Debian's archive");
    t.ssh_ok("command -v apt-get sudo").unwrap();

    down_and_check_clean(t);
}

#[test]
fn trixie_target_has_docker_26_and_compose_v2() {
    if !testenv::available(Kind::Trixie) || !prereq::require(prereq::docker_available(), "this machine's Docker engine")
    {
        return;
    }
    let t = Target::up("e2e-trixie", Kind::Trixie).expect("up");
    assert_eq!(t.kind, Kind::Trixie);
    assert_eq!(t.docker_host.as_deref(), Some("unix:///var/run/docker.sock"));
    let server = t.ssh_ok("docker version --format '{{.Server.Version}}'").unwrap();
    assert!(server.trim().starts_with("26."), "docker {server}");
    let v2 = t.ssh_ok("docker compose version --short").unwrap();
    assert!(v2.trim().starts_with("2."), "docker compose {v2}");
    let dash = t.ssh_ok("docker-compose version --short").unwrap();
    assert!(dash.trim().starts_with("2."), "docker-compose {dash}");

    let tag = "cultivate-testenv/busybox:e2e-trixie";
    send_tiny_image(&t, tag).expect("image transfer");
    check_published_port(&t, tag, 8080);

    // a compose stack with a published port
    t.ssh_ok(&format!(
        "mkdir -p /root/stack && cd /root/stack && printf '%s\\n' \
         'services:' '  web:' '    image: {tag}' \
         '    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]' \
         '    ports: [\"8081:80\"]' > compose.yaml && docker compose up -d"
    ))
    .expect("docker compose up");
    let body =
        http_get(&format!("http://{}:8081/", t.address), Duration::from_secs(20)).expect("compose service answers");
    assert_eq!(body, "cultivate-testenv");

    down_and_check_clean(t);
}

#[test]
fn loopback_sshd_answers() {
    if !testenv::available(Kind::Loopback) {
        return;
    }
    let t = Target::up("e2e-loopback", Kind::Loopback).expect("up");
    assert_eq!(t.address, "127.0.0.1");
    assert_ne!(t.port, 22);
    assert_eq!(t.netns, None);
    let kh = std::fs::read_to_string(&t.known_hosts).unwrap();
    assert!(kh.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", t.port)), "{kh}");
    assert_eq!(t.ssh_ok("id -u").unwrap().trim(), "0");
    // a host key other than the target's is refused (StrictHostKeyChecking=yes)
    let other = tempfile::NamedTempFile::new().unwrap();
    let user_key = std::fs::read_to_string(t.identity.with_extension("pub")).unwrap();
    std::fs::write(other.path(), format!("[127.0.0.1]:{} {user_key}", t.port)).unwrap();
    let options: Vec<String> = t
        .ssh_options()
        .into_iter()
        .map(|o| {
            if o.starts_with("UserKnownHostsFile=") {
                format!("UserKnownHostsFile={}", other.path().display())
            } else {
                o
            }
        })
        .collect();
    let refused = Command::new("ssh").args(options).arg(format!("root@{}", t.address)).arg("true").output().unwrap();
    assert!(!refused.status.success());

    down_and_check_clean(t);
}

#[test]
fn down_of_an_unknown_target_is_harmless() {
    if !prereq::require(
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
        "root",
    ) {
        return;
    }
    testenv::down("e2e-never-up").unwrap();
    testenv::down("e2e-never-up").unwrap();
}
