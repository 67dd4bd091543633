//! Moving images to the target: only the layers it lacks cross the wire.
//!
//! 1. If the target already has the image's content ID, it is only tagged.
//! 2. Otherwise the image is exported from this machine's engine (`docker
//!    save` format) and rewritten without the layer files whose chain the
//!    target already holds: a Docker engine with the classic image store
//!    skips reading a layer it has (moby's tarexport load loop), so the
//!    archive still loads. The config, manifests and every changed layer go.
//! 3. The archive is streamed into the runtime's load command over the
//!    transport, with progress (P21).
//! 4. The target's image ID must equal the source's, or the deploy stops
//!    (P20). A filtered load that fails falls back to the full archive once;
//!    a containerd image store always gets the full archive.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, Write};

use anyhow::{bail, Context, Result};
use bollard::Docker;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::pipeline::build::BuiltImage;

/// What one image transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferStats {
    /// Image reference.
    pub reference: String,
    /// The target already had the image: only tagged.
    pub already_present: bool,
    /// Bytes streamed to the target.
    pub bytes_sent: u64,
    /// Size of the full archive.
    pub archive_bytes: u64,
    /// Layers sent.
    pub layers_sent: usize,
    /// Layers skipped because the target had them.
    pub layers_skipped: usize,
    /// The filtered archive failed and the full one was sent.
    pub fell_back: bool,
}

/// Keys naming each prefix of a layer list: layer `i` of an image can be
/// skipped when the target has an image whose first `i+1` layers are the same
/// (same chain ID), not merely the same layer somewhere else.
pub fn chain_keys(layers: &[String]) -> Vec<String> {
    let mut keys = Vec::with_capacity(layers.len());
    let mut acc = String::new();
    for l in layers {
        if !acc.is_empty() {
            acc.push('|');
        }
        acc.push_str(l);
        keys.push(acc.clone());
    }
    keys
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The archive's layer files whose chains the target has: path in the archive → skip.
/// Reads `manifest.json` and the image config from the archive.
pub fn skippable_layer_files<R: Read + Seek>(
    archive: &mut R,
    target_chains: &HashSet<String>,
) -> Result<HashSet<String>> {
    let mut manifest: Option<Vec<ManifestEntry>> = None;
    let mut configs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    archive.rewind()?;
    let mut tar = tar::Archive::new(&mut *archive);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
        if path == "manifest.json" {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf)?;
            manifest = Some(serde_json::from_slice(&buf).context("the archive's manifest.json is not valid")?);
        } else if (path.ends_with(".json") && !path.contains('/'))
            || path.starts_with("blobs/sha256/") && entry.size() < 1 << 20
        {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf)?;
            configs.insert(path, buf);
        }
    }
    let manifest = manifest.context("the image archive has no manifest.json")?;
    let mut skip = HashSet::new();
    for m in manifest {
        let Some(config) = configs.get(&m.config) else { continue };
        let Ok(config) = serde_json::from_slice::<ImageConfig>(config) else { continue };
        if config.rootfs.diff_ids.len() != m.layers.len() {
            continue;
        }
        for (key, file) in chain_keys(&config.rootfs.diff_ids).iter().zip(&m.layers) {
            if target_chains.contains(key) {
                skip.insert(file.clone());
            }
        }
    }
    archive.rewind()?;
    Ok(skip)
}

/// Copies `archive` to `out` without the entries in `skip`; returns the entries skipped.
pub fn filter_archive<R: Read + Seek, W: Write>(archive: &mut R, out: W, skip: &HashSet<String>) -> Result<usize> {
    archive.rewind()?;
    let mut tar = tar::Archive::new(&mut *archive);
    let mut builder = tar::Builder::new(out);
    let mut skipped = 0;
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
        if skip.contains(&path) {
            skipped += 1;
            continue;
        }
        let mut header = entry.header().clone();
        match entry.header().entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let link = entry.link_name()?.map(|l| l.into_owned()).unwrap_or_default();
                builder.append_link(&mut header, &path, link)?;
            }
            _ => builder.append_data(&mut header, &path, &mut entry)?,
        }
    }
    builder.into_inner()?.flush()?;
    archive.rewind()?;
    Ok(skipped)
}

/// Exports an image from this machine's engine into a temporary file.
pub async fn export_to_file(docker: &Docker, reference: &str) -> Result<std::fs::File> {
    let mut file = tempfile::tempfile().context("creating a temporary file for the image archive")?;
    let mut stream = docker.export_image(reference);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("exporting {reference} from this machine's engine"))?;
        file.write_all(&chunk)?;
    }
    file.flush()?;
    file.rewind()?;
    Ok(file)
}

/// Progress of a transfer: a bar on a terminal, else a line every few seconds.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    started: std::time::Instant,
    last_line: std::time::Instant,
    quiet: bool,
}

impl Progress {
    /// Starts reporting a transfer of `total` bytes.
    pub fn new(label: &str, total: u64, bars: bool, quiet: bool) -> Self {
        let bar = bars.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "    {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        let now = std::time::Instant::now();
        Progress { bar, label: label.to_string(), total, started: now, last_line: now, quiet }
    }

    /// Reports `sent` bytes so far.
    pub fn update(&mut self, sent: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(sent);
            return;
        }
        if self.quiet || self.last_line.elapsed() < std::time::Duration::from_secs(2) {
            return;
        }
        self.last_line = std::time::Instant::now();
        // A closed stderr must not stop the transfer (eprintln! would panic).
        let _ =
            writeln!(std::io::stderr(), "    {}", progress_line(&self.label, sent, self.total, self.started.elapsed()));
    }

    /// Ends the report.
    pub fn finish(&mut self, sent: u64) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        tracing::info!("{}", progress_line(&self.label, sent, self.total, self.started.elapsed()));
    }
}

/// `label: 12.0 MiB of 30.0 MiB (40%), 6.0 MiB/s, about 3s left`.
pub fn progress_line(label: &str, sent: u64, total: u64, elapsed: std::time::Duration) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = sent as f64 / secs;
    let pct = (sent.min(total) * 100).checked_div(total).unwrap_or(100) as u32;
    let left = if rate > 0.0 && total > sent {
        format!(", about {:.0}s left", (total - sent) as f64 / rate)
    } else {
        String::new()
    };
    format!(
        "{label}: {:.1} MiB of {:.1} MiB ({pct}%), {:.1} MiB/s{left}",
        mib(sent),
        mib(total),
        rate / (1024.0 * 1024.0)
    )
}

/// `512 B`, `20.3 KiB`, `317.4 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Reads an open archive file's length.
pub fn file_len(f: &std::fs::File) -> u64 {
    f.metadata().map(|m| m.len()).unwrap_or(0)
}

/// Ensures the target's image ID equals the source's (P20).
pub fn verify_id(image: &BuiltImage, target_id: Option<&str>) -> Result<()> {
    match target_id {
        Some(id) if id == image.id => Ok(()),
        Some(id) => bail!(
            "image transfer verification failed for {}: the target has {id}, this machine built {}",
            image.reference,
            image.id
        ),
        None => bail!(
            "image transfer verification failed for {}: the target has no such image after loading",
            image.reference
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn archive(layers: &[(&str, &[u8])], diff_ids: &[&str]) -> std::io::Cursor<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, data).unwrap();
        };
        for (name, data) in layers {
            add(name, data);
        }
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": diff_ids}});
        add("abc.json", config.to_string().as_bytes());
        let manifest = serde_json::json!([{"Config": "abc.json", "RepoTags": ["x:1"], "Layers": layers.iter().map(|l| l.0).collect::<Vec<_>>()}]);
        add("manifest.json", manifest.to_string().as_bytes());
        std::io::Cursor::new(b.into_inner().unwrap())
    }

    #[test]
    fn only_layers_whose_chain_the_target_has_are_skipped() {
        let mut a = archive(
            &[("l1/layer.tar", b"base"), ("l2/layer.tar", b"mid"), ("l3/layer.tar", b"top")],
            &["sha256:a", "sha256:b", "sha256:c"],
        );
        // The target has an image a|b|x: layers 1 and 2 are there, 3 is not.
        let target: HashSet<String> =
            chain_keys(&["sha256:a".into(), "sha256:b".into(), "sha256:x".into()]).into_iter().collect();
        let skip = skippable_layer_files(&mut a, &target).unwrap();
        assert_eq!(skip, HashSet::from(["l1/layer.tar".to_string(), "l2/layer.tar".to_string()]));
        let mut out = Vec::new();
        assert_eq!(filter_archive(&mut a, &mut out, &skip).unwrap(), 2);
        let names: Vec<String> = tar::Archive::new(out.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["l3/layer.tar", "abc.json", "manifest.json"]);
    }

    #[test]
    fn same_layer_on_another_parent_is_not_skipped() {
        let mut a = archive(&[("l1/layer.tar", b"base"), ("l2/layer.tar", b"mid")], &["sha256:a", "sha256:b"]);
        let target: HashSet<String> = chain_keys(&["sha256:z".into(), "sha256:b".into()]).into_iter().collect();
        assert!(skippable_layer_files(&mut a, &target).unwrap().is_empty());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(20 * 1024 + 300), "20.3 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }

    #[test]
    fn progress_lines_say_size_rate_and_time_left() {
        let line = progress_line("backend", 10 * 1024 * 1024, 40 * 1024 * 1024, std::time::Duration::from_secs(2));
        assert_eq!(line, "backend: 10.0 MiB of 40.0 MiB (25%), 5.0 MiB/s, about 6s left");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]
        /// Filtering with nothing to skip reproduces every entry's bytes.
        #[test]
        fn filtering_keeps_everything_not_skipped(sizes in proptest::collection::vec(0usize..5000, 1..5)) {
            let names: Vec<String> = (0..sizes.len()).map(|i| format!("l{i}/layer.tar")).collect();
            let datas: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| vec![i as u8; *n]).collect();
            let layers: Vec<(&str, &[u8])> = names.iter().map(String::as_str).zip(datas.iter().map(Vec::as_slice)).collect();
            let ids: Vec<String> = (0..sizes.len()).map(|i| format!("sha256:{i}")).collect();
            let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let mut a = archive(&layers, &id_refs);
            let mut out = Vec::new();
            filter_archive(&mut a, &mut out, &HashSet::new()).unwrap();
            let mut t = tar::Archive::new(out.as_slice());
            for (entry, want) in t.entries().unwrap().zip(datas.iter()) {
                let mut entry = entry.unwrap();
                let mut got = Vec::new();
                entry.read_to_end(&mut got).unwrap();
                prop_assert_eq!(&got, want);
            }
        }
    }
}
