//! What the pipeline reads of a deployment on the target, in one command.
//!
//! `current`, the `stopped` marker, and every release's `release.json` (and,
//! when asked, its `.env`, for [`crate::secrets`]) come back from one shell
//! script ([`script`]) instead of a `readlink`, a `test`, an `ls` and a `cat`
//! per release: every command is an SSH session on the target (and, there, a
//! start of the user's shell with its rc files), so the number of commands is
//! what a quick run costs. The output is a sequence of sections, each opened
//! by a marker line ([`parse`]):
//!
//! ```text
//! @@cultivate-current releases/V      (what `current` links to; empty when none)
//! @@cultivate-stopped yes|no
//! @@cultivate-locked yes|no           whether the lock directory exists
//! @@cultivate-edge                    then edge/backend's first line, an empty line, edge/site's link
//! @@cultivate-release V               then V's release.json (nothing when missing)
//! @@cultivate-env V                   then V's .env (only with secrets)
//! ```
//!
//! `connect` reads it with the `.env`s (private output, never logged) to
//! register the releases' secrets, and keeps the rest as the state a
//! read-only command (`status`, `releases`) needs; a deploy or rollback reads
//! it again, without the `.env`s, in the same command that takes the lock,
//! so what it decides on is what the target has while it holds the lock.

use std::collections::BTreeMap;

use cultivate_plugin_api::shell::quote as q;

use super::release::{self, Layout, ReleaseRecord};

/// Marker of `current`'s link text.
pub const CURRENT_MARK: &str = "@@cultivate-current ";
/// Marker of the stop marker's presence.
pub const STOPPED_MARK: &str = "@@cultivate-stopped ";
/// Marker of the lock directory's presence.
pub const LOCKED_MARK: &str = "@@cultivate-locked ";
/// Marker of the deploy directory the prefetch read ([`prefetch`]).
pub const ROOT_MARK: &str = "@@cultivate-root ";
/// Marker of the edge directory's state (the text [`super::switch::parse_edge`] reads).
pub const EDGE_MARK: &str = "@@cultivate-edge";
/// Marker of a release's record (shared with [`crate::secrets`]).
pub const RELEASE_MARK: &str = "@@cultivate-release ";
/// Marker of a release's `.env` (shared with [`crate::secrets`]).
pub const ENV_MARK: &str = "@@cultivate-env ";

/// A deployment as read from the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetState {
    /// The release `current` points at, when it names a valid version.
    pub current: Option<String>,
    /// `cultivate stop` left its marker.
    pub stopped: bool,
    /// The lock directory exists (held, or left by a run that died): when
    /// read by `connect`, before any lock of this run.
    pub locked: bool,
    /// Release directories, oldest first (as [`release::parse_release_list`]).
    pub releases: Vec<String>,
    /// Each release's `release.json` as read (missing ones left out).
    pub records: BTreeMap<String, String>,
    /// The edge directory as `switch::read_edge` reads it.
    pub edge: String,
}

impl TargetState {
    /// A release's record, when it exists and parses.
    pub fn record(&self, version: &str) -> Option<ReleaseRecord> {
        self.records.get(version).and_then(|t| serde_json::from_str(t).ok())
    }

    /// The edge: which backend gets traffic, which site is served.
    pub fn edge(&self) -> super::switch::EdgeState {
        super::switch::parse_edge(&self.edge)
    }

    /// The current release's record.
    pub fn current_record(&self) -> Option<ReleaseRecord> {
        self.current.as_deref().and_then(|v| self.record(v))
    }

    /// Another project's release in this deploy directory, when there is
    /// one: `(its project, the release)`. Every image of a release is named
    /// `PROJECT-SERVICE:VERSION` ([`super::build::image_ref`]), so a record
    /// whose image of a service has another repository than
    /// `{project}-{service}` was written by a deploy of another project.
    /// The current release is looked at first, then the others, newest
    /// first; records that do not parse are left to the commands that read
    /// them.
    pub fn foreign_release(&self, project: &str) -> Option<(String, String)> {
        let current = self.current.as_ref().filter(|c| self.records.contains_key(*c));
        let others = self.records.keys().rev().filter(|v| Some(*v) != current);
        current.into_iter().chain(others).find_map(|v| {
            let record = self.record(v)?;
            record.images.iter().find_map(|(service, image)| {
                let (repository, _) = super::build::repo_and_tag(&image.reference);
                if repository == super::build::image_repository(project, service) {
                    return None;
                }
                let other = repository.strip_suffix(&format!("-{service}")).unwrap_or(repository);
                Some((other.to_string(), v.clone()))
            })
        })
    }
}

/// The script that prints the state of `layout` (see the module's doc);
/// with `envs`, each release's `.env` too (its output is then private). It
/// always exits 0, and changes nothing.
pub fn script(layout: &Layout, envs: bool) -> String {
    let env_part =
        if envs { format!("printf '\\n{ENV_MARK}%s\\n' \"$v\"; cat \"$v/.env\" 2>/dev/null; ") } else { String::new() };
    format!(
        "printf '{CURRENT_MARK}%s\\n' \"$(readlink {current} 2>/dev/null)\"; \
         if [ -e {stopped} ]; then printf '{STOPPED_MARK}yes\\n'; else printf '{STOPPED_MARK}no\\n'; fi; \
         if [ -e {lock} ]; then printf '{LOCKED_MARK}yes\\n'; else printf '{LOCKED_MARK}no\\n'; fi; \
         printf '{EDGE_MARK}\\n'; cat {edge}/backend 2>/dev/null | head -n 1; echo; readlink {edge}/site 2>/dev/null; \
         cd {releases} 2>/dev/null && for d in */; do [ -d \"$d\" ] || continue; v=${{d%/}}; \
         printf '\\n{RELEASE_MARK}%s\\n' \"$v\"; cat \"$v/release.json\" 2>/dev/null; {env_part}done; true",
        current = q(&layout.current()),
        stopped = q(&layout.stopped()),
        lock = q(&layout.lock()),
        edge = q(&layout.edge()),
        releases = q(&layout.releases()),
    )
}

/// Parses the output of [`script`]. Never fails: what it cannot read is
/// left out (a release without a readable record has none).
pub fn parse(out: &str) -> TargetState {
    let mut state = TargetState::default();
    let mut listed: Vec<String> = Vec::new();
    // The section being read: a release's record, or nothing.
    let mut section: Option<(String, String)> = None;
    let mut in_edge = false;
    let close = |section: &mut Option<(String, String)>, records: &mut BTreeMap<String, String>| {
        if let Some((v, text)) = section.take() {
            let text = text.trim();
            if !text.is_empty() {
                records.insert(v, text.to_string());
            }
        }
    };
    for line in out.split('\n') {
        if line.starts_with("@@cultivate-") {
            in_edge = false;
        }
        if let Some(link) = line.strip_prefix(CURRENT_MARK) {
            close(&mut section, &mut state.records);
            state.current = link
                .trim()
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|v| crate::settings::valid_version(v))
                .map(str::to_string);
        } else if let Some(flag) = line.strip_prefix(STOPPED_MARK) {
            close(&mut section, &mut state.records);
            state.stopped = flag.trim() == "yes";
        } else if let Some(flag) = line.strip_prefix(LOCKED_MARK) {
            close(&mut section, &mut state.records);
            state.locked = flag.trim() == "yes";
        } else if let Some(v) = line.strip_prefix(RELEASE_MARK) {
            close(&mut section, &mut state.records);
            listed.push(v.to_string());
            section = Some((v.to_string(), String::new()));
        } else if line == EDGE_MARK {
            close(&mut section, &mut state.records);
            in_edge = true;
        } else if in_edge {
            state.edge.push_str(line);
            state.edge.push('\n');
        } else if line.starts_with(ENV_MARK) {
            // A `.env` is never part of the state (secrets read it).
            close(&mut section, &mut state.records);
        } else if let Some((_, text)) = section.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    close(&mut section, &mut state.records);
    state.releases = release::parse_release_list(&listed.join("\n"));
    state.records.retain(|v, _| state.releases.contains(v));
    state
}

/// The state read (with the `.env`s) as the first command of a run can
/// run it, before the host knows the target's OS or home: `(prelude,
/// snippet)` for [`crate::session::Session::connect_with`]. The prelude
/// works out the deploy directory as [`super::deploy_path`] will (from
/// `deploy_path`, the OS and `$HOME`); the snippet prints it after
/// [`ROOT_MARK`], then [`script`]'s sections. [`prefetched`] takes the
/// sections only when that directory is the one the host then works out.
pub fn prefetch(deploy_path: Option<&str>) -> (String, String) {
    let (linux, mac) = match deploy_path {
        Some(p) => (p, p),
        None => (crate::settings::DEFAULT_DEPLOY_PATH_LINUX, crate::settings::DEFAULT_DEPLOY_PATH_MACOS),
    };
    let prelude = format!(
        "case \"$(uname -s 2>/dev/null)\" in Darwin) r={mac};; *) r={linux};; esac\n\
         case \"$r\" in \\~/*) h=${{HOME:-/root}}; while [ \"$h\" != \"${{h%/}}\" ]; do h=${{h%/}}; done; \
         r=\"$h/${{r#\\~/}}\";; esac",
        mac = q(mac),
        linux = q(linux),
    );
    let snippet = format!(
        "printf '{ROOT_MARK}%s\\n' \"$r\"; cd \"$r\" 2>/dev/null || exit 0\n{}",
        script(&Layout::new("."), true)
    );
    (prelude, snippet)
}

/// The output of [`prefetch`]'s snippet when it read `root` (else `None`):
/// what [`script`] with `.env`s would print there.
pub fn prefetched<'o>(out: &'o str, root: &str) -> Option<&'o str> {
    let (first, rest) = out.split_once('\n').unwrap_or((out, ""));
    let read = first.strip_prefix(ROOT_MARK)?;
    (read.trim_end_matches('/') == root.trim_end_matches('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(version: &str, status: &str) -> String {
        format!(
            "{{\n  \"version\": \"{version}\",\n  \"created_at\": \"t\",\n  \"images\": {{}},\n  \"files\": {{}},\n  \
             \"fingerprint\": \"f\",\n  \"status\": \"{status}\"\n}}"
        )
    }

    #[test]
    fn sections_give_current_stopped_releases_and_records() {
        let out = format!(
            "{CURRENT_MARK}releases/v2\n{STOPPED_MARK}no\n{EDGE_MARK}\nproject-backend-1:3000\n\nsites/abc\n\n{RELEASE_MARK}v2\n{}\n{ENV_MARK}v2\nA=secret\n\
             \n{RELEASE_MARK}v1\n{}\n{ENV_MARK}v1\n\n{RELEASE_MARK}v3\n\n{RELEASE_MARK}not a version\n{}",
            record("v2", "healthy"),
            record("v1", "failed"),
            record("x", "healthy")
        );
        let s = parse(&out);
        assert_eq!(s.current.as_deref(), Some("v2"));
        assert!(!s.stopped);
        assert_eq!(s.releases, ["v1", "v2", "v3"]);
        assert_eq!(s.current_record().unwrap().version, "v2");
        assert_eq!(s.record("v1").unwrap().status, release::ReleaseStatus::Failed);
        assert!(s.record("v3").is_none(), "a release without a record");
        assert!(!s.records.values().any(|r| r.contains("secret")), "a .env is never kept");
        assert_eq!(s.edge().backend.as_deref(), Some("project-backend-1"));
        assert_eq!(s.edge().site.as_deref(), Some("abc"));
    }

    #[test]
    fn nothing_deployed_and_a_stopped_stack() {
        let s = parse(&format!("{CURRENT_MARK}\n{STOPPED_MARK}no\n{EDGE_MARK}\n\n"));
        assert_eq!(s.edge(), Default::default());
        assert_eq!(TargetState { edge: String::new(), ..s }, TargetState::default());
        let s = parse(&format!("{CURRENT_MARK}releases/v1/\n{STOPPED_MARK}yes\n{RELEASE_MARK}v1\n{{not json"));
        assert_eq!(s.current.as_deref(), Some("v1"));
        assert!(s.stopped);
        assert_eq!(s.releases, ["v1"]);
        assert!(s.record("v1").is_none(), "an unreadable record");
        // A `current` naming something that is no version is no current release.
        assert_eq!(parse(&format!("{CURRENT_MARK}releases/not a version\n")).current, None);
    }

    /// The script, run by a real shell, reads a directory as [`parse`] expects.
    #[test]
    fn the_script_reads_a_deploy_directory() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_str().unwrap());
        let out = std::process::Command::new("sh").arg("-c").arg(script(&layout, false)).output().unwrap();
        assert!(out.status.success());
        let empty = parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(TargetState { edge: String::new(), ..empty.clone() }, TargetState::default(), "nothing there yet");
        assert_eq!(empty.edge(), Default::default());
        for (v, status) in [("v1", "healthy"), ("v2", "pending")] {
            std::fs::create_dir_all(dir.path().join("releases").join(v)).unwrap();
            std::fs::write(dir.path().join("releases").join(v).join("release.json"), record(v, status)).unwrap();
            std::fs::write(dir.path().join("releases").join(v).join(".env"), "S=hidden\n").unwrap();
        }
        std::os::unix::fs::symlink("releases/v1", dir.path().join("current")).unwrap();
        std::fs::write(dir.path().join("stopped"), "v1").unwrap();
        std::fs::create_dir_all(dir.path().join("edge")).unwrap();
        std::fs::write(dir.path().join("edge/backend"), "p-backend-2:3000\n").unwrap();
        std::os::unix::fs::symlink("sites/0123", dir.path().join("edge/site")).unwrap();
        for envs in [false, true] {
            let out = std::process::Command::new("sh").arg("-c").arg(script(&layout, envs)).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text.contains("S=hidden"), envs);
            let s = parse(&text);
            assert_eq!(s.current.as_deref(), Some("v1"));
            assert!(s.stopped);
            assert_eq!(s.releases, ["v1", "v2"]);
            assert_eq!(s.record("v2").unwrap().status, release::ReleaseStatus::Pending);
            assert_eq!(s.edge().backend.as_deref(), Some("p-backend-2"));
            assert_eq!(s.edge().site.as_deref(), Some("0123"));
        }
    }

    /// The prefetch, run by a real shell with a `HOME`, reads the directory
    /// `deploy_path` names there (`~/…` expanded as the host expands it),
    /// and its output is taken only for that directory.
    #[test]
    fn the_prefetch_finds_the_deploy_directory_as_the_host_does() {
        let home = tempfile::tempdir().unwrap();
        let root = home.path().join("apps/cultivate");
        std::fs::create_dir_all(root.join("releases/v1")).unwrap();
        std::fs::write(root.join("releases/v1/release.json"), record("v1", "healthy")).unwrap();
        std::fs::write(root.join("releases/v1/.env"), "S=hidden\n").unwrap();
        std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
        std::fs::create_dir(root.join(".lock")).unwrap();
        let run = |deploy_path: Option<&str>| {
            let (prelude, snippet) = prefetch(deploy_path);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{prelude}\n{snippet}"))
                .env("HOME", format!("{}//", home.path().display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let root_text = root.to_str().unwrap();
        for path in ["~/apps/cultivate", root_text] {
            let out = run(Some(path));
            let state = parse(prefetched(&out, root_text).unwrap_or_else(|| panic!("{path}: {out}")));
            assert_eq!(state.current.as_deref(), Some("v1"));
            assert!(state.locked);
            assert!(out.contains("S=hidden"), "the .env are read (for the secrets)");
            assert!(prefetched(&out, "/elsewhere").is_none(), "another directory's state is not taken");
        }
        // The default: /opt/cultivate on Linux, whatever it holds here.
        let out = run(None);
        assert!(prefetched(&out, crate::settings::DEFAULT_DEPLOY_PATH_LINUX).is_some(), "{out}");
        // A directory that is not there: an empty state.
        let out = run(Some("~/nothing/here"));
        let missing = format!("{}/nothing/here", home.path().display());
        assert_eq!(parse(prefetched(&out, &missing).unwrap()).current, None);
    }

    /// A record of `project`'s release `version`, its images named as a deploy names them.
    fn project_record(project: &str, version: &str) -> String {
        let images: Vec<String> = ["database", "backend", "frontend"]
            .iter()
            .map(|s| {
                format!(
                    "\"{s}\": {{\"reference\": \"{}\", \"id\": \"sha256:{s}\"}}",
                    super::super::build::image_ref(project, s, version)
                )
            })
            .collect();
        format!(
            "{{\"version\": \"{version}\", \"created_at\": \"t\", \"images\": {{{}}}, \"files\": {{}}, \
             \"fingerprint\": \"f\", \"status\": \"healthy\"}}",
            images.join(", ")
        )
    }

    fn state_of(current: Option<&str>, records: &[(&str, &str)]) -> TargetState {
        let mut out = format!(
            "{CURRENT_MARK}{}\n{STOPPED_MARK}no\n",
            current.map(|c| format!("releases/{c}")).unwrap_or_default()
        );
        for (project, v) in records {
            out.push_str(&format!("\n{RELEASE_MARK}{v}\n{}\n", project_record(project, v)));
        }
        parse(&out)
    }

    #[test]
    fn another_projects_release_is_found_by_its_image_names() {
        let v1 = "20261129-100000";
        let v2 = "20261129-110000";
        let ours = state_of(Some(v2), &[("shop", v1), ("shop", v2)]);
        assert_eq!(ours.foreign_release("shop"), None);
        assert_eq!(ours.foreign_release("blog"), Some(("shop".into(), v2.into())), "the current release first");
        // A name that only begins like the other: `shop-2` is not `shop`.
        assert_eq!(ours.foreign_release("shop-2"), Some(("shop".into(), v2.into())));
        assert_eq!(state_of(Some(v1), &[("shop-2", v1)]).foreign_release("shop"), Some(("shop-2".into(), v1.into())));
        // Without a current release, the newest record speaks.
        let mixed = state_of(None, &[("blog", v1), ("shop", v2)]);
        assert_eq!(mixed.foreign_release("blog"), Some(("shop".into(), v2.into())));
        // Nothing deployed, or records without images (older tests' fixtures): nothing to say.
        assert_eq!(state_of(None, &[]).foreign_release("shop"), None);
        let bare = parse(&format!("{CURRENT_MARK}releases/{v1}\n{RELEASE_MARK}{v1}\n{}\n", record(v1, "healthy")));
        assert_eq!(bare.foreign_release("shop"), None);
    }

    proptest! {
        /// A project never finds its own releases foreign, and always finds
        /// another's, named as that project.
        #[test]
        fn only_another_project_is_foreign(
            ours in "[a-z0-9][a-z0-9_-]{0,12}",
            theirs in "[a-z0-9][a-z0-9_-]{0,12}",
            versions in proptest::collection::btree_set("20[0-9]{6}-[0-9]{6}", 1..4),
        ) {
            let records: Vec<(&str, &str)> = versions.iter().map(|v| (ours.as_str(), v.as_str())).collect();
            let newest = versions.iter().next_back().unwrap().clone();
            prop_assert_eq!(state_of(Some(&newest), &records).foreign_release(&ours), None);
            let found = state_of(Some(&newest), &records).foreign_release(&theirs);
            if ours == theirs {
                prop_assert_eq!(found, None);
            } else {
                prop_assert_eq!(found, Some((ours.clone(), newest.clone())));
            }
        }

        /// Whatever the target prints, parsing never panics, and only valid
        /// versions become releases or `current`.
        #[test]
        fn parsing_never_panics(lines in proptest::collection::vec(
            prop_oneof![
                "\\PC{0,40}",
                "[a-z0-9./-]{0,20}".prop_map(|v| format!("{CURRENT_MARK}{v}")),
                "[a-z0-9./ -]{0,20}".prop_map(|v| format!("{RELEASE_MARK}{v}")),
                "[a-z0-9./ -]{0,20}".prop_map(|v| format!("{ENV_MARK}{v}")),
                "(yes|no|\\PC{0,5})".prop_map(|v| format!("{STOPPED_MARK}{v}")),
                Just(EDGE_MARK.to_string()),
            ],
            0..20,
        )) {
            let s = parse(&lines.join("\n"));
            for v in s.releases.iter().chain(s.current.iter()) {
                prop_assert!(crate::settings::valid_version(v), "{v}");
            }
            for v in s.records.keys() {
                prop_assert!(s.releases.contains(v));
            }
        }

        /// Records survive the round trip whatever their position.
        #[test]
        fn records_round_trip(versions in proptest::collection::btree_set("[0-9]{8}-[0-9]{6}", 0..5)) {
            let mut out = format!("{CURRENT_MARK}\n{STOPPED_MARK}no\n");
            for v in &versions {
                out.push_str(&format!("\n{RELEASE_MARK}{v}\n{}\n{ENV_MARK}{v}\nK=v\n", record(v, "healthy")));
            }
            let s = parse(&out);
            prop_assert_eq!(s.releases.len(), versions.len());
            for v in &versions {
                prop_assert_eq!(s.record(v).map(|r| r.version), Some(v.clone()));
            }
        }
    }
}
