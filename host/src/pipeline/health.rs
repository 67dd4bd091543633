//! Waiting for a stack to be healthy: poll every container's state and health
//! with exponential backoff until all are healthy or the deadline passes
//! (13.1–13.5, P23).

use std::time::{Duration, Instant};

use cultivate_plugin_api::ops::ServiceState;

use crate::settings::HealthSettings;

/// The verdict on one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every expected service runs and is healthy (or has no health check).
    Healthy,
    /// Not yet; the names of the services still starting.
    Waiting(Vec<String>),
    /// A service failed for good: `(service, why)`.
    Failed(Vec<(String, String)>),
}

/// Judges one `ps` result against the services that must be up.
pub fn judge(expected: &[&str], states: &[ServiceState]) -> Verdict {
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    for svc in expected {
        let Some(s) = states.iter().find(|s| s.service == *svc) else {
            waiting.push(format!("{svc} (no container yet)"));
            continue;
        };
        let health = s.health.as_deref().unwrap_or("");
        match (s.state.as_str(), health) {
            ("running", "healthy") | ("running", "") => {}
            ("running", "unhealthy") => failed.push((
                svc.to_string(),
                format!("unhealthy{}", s.health_log.as_deref().map(|l| format!(": {}", l.trim())).unwrap_or_default()),
            )),
            ("running", other) => waiting.push(format!("{svc} ({other})")),
            // Crash-looping: Docker restarts it with a growing back-off. Two
            // polls in a row (see `wait`) make it a failure, not one restart.
            ("restarting", _) => failed.push((
                svc.to_string(),
                format!(
                    "keeps restarting{}",
                    s.exit_code.map(|c| format!(" (last exit code {c})")).unwrap_or_default()
                ),
            )),
            ("exited" | "dead", _) => failed.push((
                svc.to_string(),
                format!("exited{}", s.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default()),
            )),
            (state, _) => waiting.push(format!("{svc} ({state})")),
        }
    }
    if !failed.is_empty() {
        Verdict::Failed(failed)
    } else if waiting.is_empty() {
        Verdict::Healthy
    } else {
        Verdict::Waiting(waiting)
    }
}

/// Running containers whose image is not the one `images` (service →
/// image ID) gives them: a stack tool that left an old container in place
/// would otherwise pass for the new release. A state without an image ID (a
/// plugin that does not report it) is not judged. `service: runs A, not B`.
pub fn image_mismatches(images: &[(&str, &str)], states: &[ServiceState]) -> Vec<String> {
    let short = |id: &str| id.trim_start_matches("sha256:").chars().take(12).collect::<String>();
    states
        .iter()
        .filter(|s| s.state == "running")
        .filter_map(|s| {
            let (_, want) = images.iter().find(|(svc, _)| *svc == s.service)?;
            let have = s.image_id.as_deref()?;
            (have != *want)
                .then(|| format!("{}: runs image {}, not the release's {}", s.service, short(have), short(want)))
        })
        .collect()
}

/// Backoff delays: `initial`, doubling, capped at `max`.
pub fn backoff(initial: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    let mut next = initial;
    std::iter::from_fn(move || {
        let d = next;
        next = (next * 2).min(max);
        Some(d)
    })
}

/// Why waiting failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthFailure {
    /// One line per service.
    pub services: Vec<(String, String)>,
    /// The deadline passed (rather than a service failing outright).
    pub timed_out: bool,
}

impl std::fmt::Display for HealthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.services.iter().map(|(s, why)| format!("{s}: {why}")).collect();
        if self.timed_out {
            write!(f, "not healthy before the deadline: {}", list.join("; "))
        } else {
            write!(f, "health check failed on {}", list.join("; "))
        }
    }
}

/// Polls `poll` until [`Verdict::Healthy`], a failure, or the deadline.
/// `report` hears each waiting list.
pub fn wait<E>(
    settings: &HealthSettings,
    expected: &[&str],
    mut poll: impl FnMut() -> Result<Vec<ServiceState>, E>,
    mut report: impl FnMut(&[String]),
) -> Result<Result<Vec<ServiceState>, HealthFailure>, E> {
    let deadline = Instant::now() + Duration::from_secs(settings.timeout_secs);
    let mut delays =
        backoff(Duration::from_millis(settings.initial_backoff_ms), Duration::from_millis(settings.max_backoff_ms));
    // A service may flap to unhealthy once while starting; it must stay failed
    // on two polls in a row before the deploy gives up before the deadline.
    let mut strikes: Vec<String> = Vec::new();
    loop {
        let states = poll()?;
        match judge(expected, &states) {
            Verdict::Healthy => return Ok(Ok(states)),
            Verdict::Failed(f) => {
                let names: Vec<String> = f.iter().map(|(s, _)| s.clone()).collect();
                if names.iter().all(|n| strikes.contains(n)) || Instant::now() >= deadline {
                    return Ok(Err(HealthFailure { services: f, timed_out: false }));
                }
                strikes = names;
            }
            Verdict::Waiting(w) => {
                strikes.clear();
                if Instant::now() >= deadline {
                    let services = w.into_iter().map(|s| (s, "still starting".to_string())).collect();
                    return Ok(Err(HealthFailure { services, timed_out: true }));
                }
                report(&w);
            }
        }
        let pause = delays.next().unwrap_or(Duration::from_secs(1));
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(pause.min(left.max(Duration::from_millis(50))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn st(service: &str, state: &str, health: Option<&str>) -> ServiceState {
        ServiceState {
            service: service.into(),
            container: format!("c-{service}"),
            state: state.into(),
            health: health.map(str::to_string),
            ..ServiceState::default()
        }
    }

    #[test]
    fn a_container_on_another_image_is_named_and_one_without_an_id_is_not_judged() {
        let mut old = st("backend", "running", Some("healthy"));
        old.image_id = Some("sha256:0000000000aa0000".into());
        let mut new = st("database", "running", Some("healthy"));
        new.image_id = Some("sha256:1111111111bb1111".into());
        let unknown = st("frontend", "running", None);
        let mut gone = st("backend", "exited", None);
        gone.image_id = Some("sha256:2222".into());
        let want = [
            ("database", "sha256:1111111111bb1111"),
            ("backend", "sha256:3333333333cc3333"),
            ("frontend", "sha256:4444"),
        ];
        assert_eq!(
            image_mismatches(&want, &[old, new, unknown, gone]),
            vec!["backend: runs image 0000000000aa, not the release's 3333333333cc".to_string()]
        );
    }

    #[test]
    fn all_healthy_is_healthy() {
        let s = [st("database", "running", Some("healthy")), st("backend", "running", None)];
        assert_eq!(judge(&["database", "backend"], &s), Verdict::Healthy);
    }

    #[test]
    fn exited_and_unhealthy_are_named() {
        let s = [st("database", "running", Some("unhealthy")), st("backend", "exited", None)];
        match judge(&["database", "backend"], &s) {
            Verdict::Failed(f) => {
                assert_eq!(f[0].0, "database");
                assert_eq!(f[1].0, "backend");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn missing_and_starting_wait() {
        let s = [st("database", "running", Some("starting"))];
        assert_eq!(
            judge(&["database", "backend"], &s),
            Verdict::Waiting(vec!["database (starting)".into(), "backend (no container yet)".into()])
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let d: Vec<u64> = backoff(Duration::from_millis(100), Duration::from_millis(500))
            .take(5)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn slow_starting_service_passes_within_the_deadline() {
        let settings = HealthSettings { timeout_secs: 5, initial_backoff_ms: 10, max_backoff_ms: 20, drain_secs: 0 };
        let mut n = 0;
        let r = wait::<()>(
            &settings,
            &["db"],
            || {
                n += 1;
                Ok(vec![st("db", "running", Some(if n < 4 { "starting" } else { "healthy" }))])
            },
            |_| {},
        );
        assert!(r.unwrap().is_ok());
        assert_eq!(n, 4);
    }

    #[test]
    fn never_healthy_times_out_naming_the_service() {
        let settings = HealthSettings { timeout_secs: 1, initial_backoff_ms: 10, max_backoff_ms: 50, drain_secs: 0 };
        let r = wait::<()>(&settings, &["db"], || Ok(vec![st("db", "running", Some("starting"))]), |_| {}).unwrap();
        let f = r.unwrap_err();
        assert!(f.timed_out);
        assert!(f.to_string().contains("db (starting)"), "{f}");
    }

    #[test]
    fn failure_must_persist_for_two_polls() {
        let settings = HealthSettings { timeout_secs: 5, initial_backoff_ms: 10, max_backoff_ms: 10, drain_secs: 0 };
        let mut n = 0;
        let r = wait::<()>(
            &settings,
            &["db"],
            || {
                n += 1;
                Ok(vec![st("db", "running", Some(if n == 1 { "unhealthy" } else { "healthy" }))])
            },
            |_| {},
        );
        assert!(r.unwrap().is_ok(), "one unhealthy poll is a flap, not a failure");
        let r = wait::<()>(&settings, &["db"], || Ok(vec![st("db", "exited", None)]), |_| {}).unwrap();
        assert!(!r.unwrap_err().timed_out);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Healthy exactly when every expected service is running and healthy or has no check.
        #[test]
        fn judge_is_healthy_iff_all_good(states in proptest::collection::vec((0usize..3, 0usize..4, 0usize..4), 0..6)) {
            let names = ["database", "backend", "frontend"];
            let st_names = ["running", "exited", "restarting", "created"];
            let healths = [None, Some("healthy"), Some("starting"), Some("unhealthy")];
            let list: Vec<ServiceState> = states.iter().map(|(s, t, h)| st(names[*s], st_names[*t], healths[*h])).collect();
            let all_good = names.iter().all(|n| list.iter().find(|s| s.service == *n).is_some_and(|s| s.state == "running" && matches!(s.health.as_deref(), None | Some("healthy"))));
            prop_assert_eq!(judge(&names, &list) == Verdict::Healthy, all_good);
        }
    }
}
