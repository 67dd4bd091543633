//! `cultivate deploy --build remote` (9.2): the build context goes to the
//! target through the transport and the images are built there; nothing is
//! exported or loaded. Run on this machine through the local transport, so
//! the same code path as over SSH is exercised without a second engine.

use cultivate_e2e::deploy::{Project, ProjectOptions, Via};
use cultivate_e2e::prereq;

#[test]
fn remote_build_builds_on_the_target_and_sends_no_image() {
    if !(prereq::require(prereq::docker_available(), "this machine's Docker engine")
        && prereq::require(cultivate_e2e::deploy::base_image_present(), "image cultivate/debian:bookworm"))
    {
        return;
    }
    let p = Project::new("rbuild", 28680, Via::Local, ProjectOptions::default());
    let run = p.deploy(&["--build", "remote", "--json", "--release-version", "rb1", "-v"]);
    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["outcome"], "deployed", "{}", run.output());
    assert_eq!(report["bytes_sent"], 0, "a remote build sends no image: {}", run.output());
    assert!(report["timings"].as_array().unwrap().iter().all(|t| t[0] != "transfer-images"), "{report}");
    // The build ran on the target, through the runtime plugin's build command.
    assert!(run.stderr.contains("docker build") || run.stderr.contains("finch build"), "{}", run.output());
    for service in ["database", "backend", "frontend"] {
        let tag = format!("{}-{service}:rb1", p.name);
        p.via.docker_ok(&format!("image inspect {tag}")).unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
    let health = p.get("/api/health").expect("GET /api/health");
    assert!(health.contains("\"database\":\"ok\""), "{health}");
    // The build directory is cleaned up after the build.
    let left = p.via.sh(&format!("ls {}/build 2>/dev/null | wc -l", p.deploy_path)).unwrap();
    assert_eq!(left.trim(), "0", "build contexts left on the target");
}
