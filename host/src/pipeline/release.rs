//! Releases on the target: their layout, their records, and which is current.
//!
//! ```text
//! DEPLOY_PATH/
//!   releases/VERSION/docker-compose.yml   the release's compose file
//!   releases/VERSION/.env                 its environment, mode 0600
//!   releases/VERSION/certs/               its certificate and key, if any
//!   releases/VERSION/release.json         the record below
//!   current -> releases/VERSION           the last release that was healthy
//!   edge/backend                          NAME:PORT of the backend nginx sends /api/ to
//!   edge/site -> sites/ID                 the site nginx serves (copied out of a frontend image)
//!   certs/                                the running release's certificate and key (CERT_DIR)
//!   logs/deploy-VERSION.log               one log per deploy, kept for a while
//!   .lock/                                held while a deploy or rollback runs
//! ```
//!
//! `current` only ever moves to a release after it was seen healthy, so after
//! any failure or crash it names a release to go back to (P28).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The target-side paths of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The deploy directory.
    pub root: String,
}

impl Layout {
    /// Layout under `root` (absolute, no trailing slash).
    pub fn new(root: &str) -> Self {
        Layout { root: root.trim_end_matches('/').to_string() }
    }

    /// `releases/`.
    pub fn releases(&self) -> String {
        format!("{}/releases", self.root)
    }

    /// One release's directory.
    pub fn release(&self, version: &str) -> String {
        format!("{}/releases/{version}", self.root)
    }

    /// The `current` symlink.
    pub fn current(&self) -> String {
        format!("{}/current", self.root)
    }

    /// The logs directory.
    pub fn logs(&self) -> String {
        format!("{}/logs", self.root)
    }

    /// The marker `cultivate stop` leaves (holding the release it stopped):
    /// the stack is down on purpose, `status` must not repair it.
    pub fn stopped(&self) -> String {
        format!("{}/stopped", self.root)
    }

    /// The lock directory.
    pub fn lock(&self) -> String {
        format!("{}/.lock", self.root)
    }

    /// The edge directory, mounted read-only into the frontend: `backend`
    /// (the live backend container), `site` (link to `sites/ID`), `sites/`.
    pub fn edge(&self) -> String {
        format!("{}/edge", self.root)
    }

    /// The deployment's certificate directory (`CERT_DIR`), a copy of the
    /// running release's `certs/`.
    pub fn certs(&self) -> String {
        format!("{}/certs", self.root)
    }
}

/// What became of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseStatus {
    /// Uploaded, not yet started or checked.
    Pending,
    /// Was healthy after start.
    Healthy,
    /// Failed its start or health check.
    Failed,
}

/// One image of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseImage {
    /// Reference (`cultivate-backend:VERSION`).
    pub reference: String,
    /// Content ID on the target.
    pub id: String,
    /// For the frontend: digest of its layers below the site (see `switch::without_site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_site: Option<String>,
}

/// `release.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The version (directory name and image tag).
    pub version: String,
    /// ISO 8601 time of creation.
    pub created_at: String,
    /// Service name to image: the image its container runs, tagged with the
    /// release that built it (an unchanged image keeps an earlier release's tag).
    pub images: BTreeMap<String, ReleaseImage>,
    /// The frontend image whose site is served (its nginx may be an earlier one's).
    #[serde(default)]
    pub site: Option<ReleaseImage>,
    /// sha256 of each configuration file, by name.
    pub files: BTreeMap<String, String>,
    /// Image IDs and configuration together: equal fingerprints mean nothing changed.
    pub fingerprint: String,
    /// What became of it.
    pub status: ReleaseStatus,
    /// The release that was current when this one was deployed.
    #[serde(default)]
    pub previous: Option<String>,
    /// Runtime plugins used.
    #[serde(default)]
    pub runtime: BTreeMap<String, String>,
    /// The `.env` keys whose values came from the secrets file: their names,
    /// never their values, so any later command can register those values for
    /// redaction. `None` in records written before cultivate kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_keys: Option<Vec<String>>,
    /// Compose's configuration hash of each service of this release (what
    /// `stack.service_hashes` answered when it went live), valid for the
    /// stack runtime named in `runtime` (`stack`, `stack_version`). The
    /// release's files never change, so a later `status` or deploy compares
    /// the containers against these without asking compose again (Python's
    /// docker-compose 1.x takes 0.5-1 s to start). Empty in older records.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_hashes: BTreeMap<String, String>,
}

/// A release version from the clock and, when available, the git commit:
/// `20261126-040500-1a2b3c4`. Sorts by time.
pub fn version_from(now: time::OffsetDateTime, git_hash: Option<&str>) -> String {
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = now.format(&fmt).unwrap_or_else(|_| "00000000-000000".into());
    match git_hash.map(str::trim).filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())) {
        Some(h) => format!("{stamp}-{}", &h[..h.len().min(12)]),
        None => stamp,
    }
}

/// ISO 8601 UTC timestamp.
pub fn now_iso() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Parses `ls -1` of `releases/` into versions, oldest first (versions sort by time).
pub fn parse_release_list(ls: &str) -> Vec<String> {
    let mut v: Vec<String> =
        ls.lines().map(str::trim).filter(|l| crate::settings::valid_version(l)).map(str::to_string).collect();
    v.sort();
    v
}

/// Which releases to delete so that `keep` remain, never the current one nor
/// the one a rollback would go to. Oldest go first.
pub fn releases_to_prune(all: &[String], current: Option<&str>, previous: Option<&str>, keep: usize) -> Vec<String> {
    let protected = |v: &str| Some(v) == current || Some(v) == previous;
    let mut excess = all.len().saturating_sub(keep);
    let mut out = Vec::new();
    for v in all {
        if excess == 0 {
            break;
        }
        if !protected(v) {
            out.push(v.clone());
            excess -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_sort_by_time_and_carry_the_commit() {
        let t = time::macros::datetime!(2026-11-26 04:05:00 UTC);
        assert_eq!(version_from(t, Some("1a2b3c4\n")), "20261126-040500-1a2b3c4");
        assert_eq!(version_from(t, None), "20261126-040500");
        assert_eq!(version_from(t, Some("not hex")), "20261126-040500");
        assert!(crate::settings::valid_version(&version_from(t, Some("abcdef0123456789"))));
    }

    #[test]
    fn layout_paths() {
        let l = Layout::new("/opt/cultivate/");
        assert_eq!(l.release("v1"), "/opt/cultivate/releases/v1");
        assert_eq!(l.current(), "/opt/cultivate/current");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// P28: pruning keeps the current release and the previous one, never
        /// leaves fewer than `keep` (when there were more), and only removes
        /// releases that existed.
        #[test]
        fn p28_previous_deployment_preservation(n in 0usize..15, keep in 2usize..8, cur in 0usize..15, prev in 0usize..15) {
            let all: Vec<String> = (0..n).map(|i| format!("2026010{}-0000{:02}", i % 10, i)).collect::<Vec<_>>();
            let mut all = all; all.sort();
            let current = all.get(cur).cloned();
            let previous = all.get(prev).cloned();
            let pruned = releases_to_prune(&all, current.as_deref(), previous.as_deref(), keep);
            if let Some(c) = &current { prop_assert!(!pruned.contains(c)); }
            if let Some(p) = &previous { prop_assert!(!pruned.contains(p)); }
            prop_assert!(pruned.iter().all(|p| all.contains(p)));
            prop_assert!(all.len() - pruned.len() >= keep.min(all.len()));
        }

        #[test]
        fn release_list_parsing_never_panics(s in "\\PC{0,200}") {
            for v in parse_release_list(&s) { prop_assert!(crate::settings::valid_version(&v)); }
        }
    }
}
