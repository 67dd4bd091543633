//! Sending an image as an OCI archive without the layers the target has.
//!
//! Podman (containers/image) refuses a `docker save` archive with layer files
//! left out, but before it reads a layer blob from an OCI image layout it asks
//! its store for that blob by digest. So a runtime whose probe lists
//! [`ops::LOAD_FORMAT_OCI_PARTIAL`] under [`ops::LOAD_FORMATS_DETAIL`] gets the
//! image converted here: an OCI archive (`oci-layout`, `index.json` naming the
//! reference, one manifest, the config and the layer blobs by sha256) whose
//! manifest lists every layer uncompressed by its diff ID, and whose blobs
//! leave out the layers whose chain the target holds. The config is the
//! source's byte for byte, so the image ID on the target is the source's (P20).
//!
//! [`convert`] reads a `docker save` stream (the legacy layout, Docker 20.10:
//! `<v1 id>/layer.tar`, `<image id>.json`, `manifest.json` last; or the OCI
//! layout of Docker 25 and later: `blobs/sha256/…`) from any [`Read`] and
//! writes the OCI archive to any [`Write`]. A legacy layer's digest is known
//! only once it is read, so each layer is spooled to a temporary file while
//! it is hashed (one at a time) and written out only if it is not skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, Write};

use anyhow::{bail, Context, Result};
use cultivate_plugin_api::ops;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::pipeline::build::BuiltImage;
use crate::pipeline::transfer::{self, TransferStats};
use crate::pipeline::Ctx;

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The index annotation that names the image (Podman tags the loaded image with it).
pub const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Blobs up to this size are kept in memory as well (an image config is a few KiB).
const SMALL_BLOB: u64 = 1 << 20;

/// True when the runtime's probe says its load command takes a partial OCI archive.
pub fn accepted(probe: &cultivate_plugin_api::Probe) -> bool {
    ops::loads_format(&probe.details, ops::LOAD_FORMAT_OCI_PARTIAL)
}

/// The diff IDs of `layers` (bottom first) that need not be sent: those whose
/// chain (the layer and every layer below it) the target holds.
pub fn skippable_diff_ids(layers: &[String], target_chains: &HashSet<String>) -> HashSet<String> {
    transfer::chain_ids(layers)
        .iter()
        .zip(layers)
        .filter(|(key, _)| target_chains.contains(*key))
        .map(|(_, layer)| layer.clone())
        .collect()
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converted {
    /// `sha256:…` of the config: the image ID.
    pub config_digest: String,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// The layers in the manifest (bottom first), by digest.
    pub layers: Vec<String>,
    /// Layer positions whose blob went into the archive.
    pub layers_sent: usize,
    /// Layer positions whose blob was left out.
    pub layers_skipped: usize,
    /// Bytes written.
    pub bytes: u64,
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

/// A blob file of the input: its digest and size.
#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    size: u64,
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// `../abc/layer.tar` seen from `def/layer.tar` → `abc/layer.tar`.
fn resolve_link(from: &str, link: &str) -> String {
    let mut parts: Vec<&str> = if link.starts_with('/') {
        Vec::new()
    } else {
        let mut p: Vec<&str> = from.split('/').collect();
        p.pop();
        p
    };
    for part in link.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Converts the `docker save` archive of one image read from `input` into an
/// OCI archive written to `out`, named `reference`, without the blobs of the
/// layers whose diff IDs are in `skip`.
pub fn convert<R: Read, W: Write>(input: R, out: W, reference: &str, skip: &HashSet<String>) -> Result<Converted> {
    let mut tar_in = tar::Archive::new(input);
    let mut builder = tar::Builder::new(Counting { inner: out, count: 0 });
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    builder.append_data(&mut header(layout.len() as u64), "oci-layout", &layout[..])?;

    let mut manifest: Option<Vec<ManifestEntry>> = None;
    let mut blobs: HashMap<String, Blob> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut written: HashSet<String> = HashSet::new();

    for entry in tar_in.entries().context("reading the image archive")? {
        let mut entry = entry.context("reading the image archive")?;
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                let link = entry.link_name()?.map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
                links.insert(path.clone(), resolve_link(&path, &link));
                continue;
            }
            tar::EntryType::Link => {
                let link = entry.link_name()?.map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
                links.insert(path.clone(), link.trim_start_matches("./").to_string());
                continue;
            }
            t if !t.is_file() => continue,
            _ => {}
        }
        let size = entry.size();
        if path == "manifest.json" {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf)?;
            manifest = Some(serde_json::from_slice(&buf).context("the image archive's manifest.json is not valid")?);
        } else if path.ends_with("/layer.tar") {
            // Legacy layout: the digest is known once the layer is read.
            let mut spool = tempfile::tempfile().context("creating a temporary file for a layer")?;
            let mut hashing = Hashing { inner: &mut entry, hash: Sha256::new() };
            let n =
                std::io::copy(&mut hashing, &mut spool).with_context(|| format!("reading {path} of the archive"))?;
            let digest = format!("sha256:{:x}", hashing.hash.finalize());
            if !skip.contains(&digest) && written.insert(digest.clone()) {
                spool.rewind()?;
                builder.append_data(&mut header(n), blob_path(&digest), &mut spool)?;
            }
            blobs.insert(path, Blob { digest, size: n });
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            // OCI layout (Docker 25+): the name is the digest; checked as it passes.
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                bail!("the image archive has a blob named {path}, which is not a sha256 digest");
            }
            let digest = format!("sha256:{hex}");
            blobs.insert(path.clone(), Blob { digest: digest.clone(), size });
            if skip.contains(&digest) || written.contains(&digest) {
                continue;
            }
            let got = if size <= SMALL_BLOB {
                let mut buf = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut buf)?;
                builder.append_data(&mut header(size), &path, buf.as_slice())?;
                let got = digest_of(&buf);
                small.insert(path.clone(), buf);
                got
            } else {
                let mut hashing = Hashing { inner: &mut entry, hash: Sha256::new() };
                builder.append_data(&mut header(size), &path, &mut hashing)?;
                format!("sha256:{:x}", hashing.hash.finalize())
            };
            if got != digest {
                bail!("blob {path} of the image archive has digest {got}: the archive is damaged");
            }
            written.insert(digest);
        } else if path.ends_with(".json") && !path.contains('/') && size <= SMALL_BLOB {
            // Legacy layout: `<image id>.json` is the config.
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf)?;
            small.insert(path, buf);
        }
    }

    let manifest = manifest.context("the image archive has no manifest.json")?;
    let [entry] = <[ManifestEntry; 1]>::try_from(manifest)
        .map_err(|m| anyhow::anyhow!("the image archive holds {} images; one was expected ({reference})", m.len()))?;
    let config = small
        .get(entry.config.trim_start_matches("./"))
        .with_context(|| format!("the image archive has no config {} for {reference}", entry.config))?
        .clone();
    let config_digest = digest_of(&config);
    if written.insert(config_digest.clone()) {
        builder.append_data(&mut header(config.len() as u64), blob_path(&config_digest), config.as_slice())?;
    }
    let diff_ids = serde_json::from_slice::<ImageConfig>(&config)
        .with_context(|| format!("the config of {reference} in the image archive is not valid"))?
        .rootfs
        .diff_ids;
    if diff_ids.len() != entry.layers.len() {
        bail!(
            "the image archive lists {} layers for {reference} but its config {}",
            entry.layers.len(),
            diff_ids.len()
        );
    }

    let mut layers = Vec::with_capacity(entry.layers.len());
    let mut out_layers = Vec::with_capacity(entry.layers.len());
    let mut sent = 0;
    for (i, (file, diff_id)) in entry.layers.iter().zip(&diff_ids).enumerate() {
        let mut path = file.trim_start_matches("./").to_string();
        for _ in 0..8 {
            match links.get(&path) {
                Some(p) => path = p.clone(),
                None => break,
            }
        }
        let blob =
            blobs.get(&path).with_context(|| format!("the image archive lists layer {file} but has no such file"))?;
        if &blob.digest != diff_id {
            bail!(
                "layer {} of {reference} ({file}) has digest {} but the image's config says {diff_id}: \
                 only uncompressed layers can be sent as an OCI archive",
                i + 1,
                blob.digest
            );
        }
        if written.contains(&blob.digest) {
            sent += 1;
        }
        layers.push(blob.digest.clone());
        out_layers.push(serde_json::json!({"mediaType": LAYER_MEDIA_TYPE, "digest": blob.digest, "size": blob.size}));
    }
    let oci_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
        "layers": out_layers,
    }))?;
    let manifest_digest = digest_of(&oci_manifest);
    builder.append_data(
        &mut header(oci_manifest.len() as u64),
        blob_path(&manifest_digest),
        oci_manifest.as_slice(),
    )?;
    let annotations: BTreeMap<&str, &str> = BTreeMap::from([(REF_ANNOTATION, reference)]);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": oci_manifest.len(),
            "annotations": annotations,
        }],
    }))?;
    builder.append_data(&mut header(index.len() as u64), "index.json", index.as_slice())?;
    let mut counting = builder.into_inner()?;
    counting.flush()?;
    Ok(Converted {
        config_digest,
        manifest_digest,
        layers_sent: sent,
        layers_skipped: layers.len() - sent,
        layers,
        bytes: counting.count,
    })
}

/// Sends `image` as an OCI archive without the layers whose chain the target
/// has, into the runtime's load command; `(stats, loaded)`. A conversion that
/// fails is a warning and `loaded = false`: the caller sends the whole
/// `docker save` archive instead.
pub(crate) fn send(
    ctx: &mut Ctx<'_>,
    image: &BuiltImage,
    archive: &mut std::fs::File,
    target_chains: &HashSet<String>,
    archive_bytes: u64,
) -> Result<(TransferStats, bool)> {
    let skip = skippable_diff_ids(&image.layers, target_chains);
    let mut oci = tempfile::tempfile().context("creating a temporary file for the OCI archive")?;
    archive.rewind()?;
    let converted = convert(&mut *archive, &mut oci, &image.reference, &skip);
    archive.rewind()?;
    let mut stats = TransferStats { reference: image.reference.clone(), archive_bytes, ..TransferStats::default() };
    let converted = match converted {
        Ok(c) => c,
        Err(e) => {
            ctx.warn(&format!("{}: cannot convert the image into an OCI archive: {e:#}", image.service));
            return Ok((stats, false));
        }
    };
    oci.rewind()?;
    let cmd = ctx.images_op::<ops::ImageLoadCommand>(&ops::ImageLoadRequest::default())?;
    let mut progress =
        transfer::Progress::new(&image.service, converted.bytes, ctx.printer.bars(), ctx.printer.quiet());
    let out = ctx.session.run_with_input(&cmd, &mut oci, &mut |sent| progress.update(sent))?;
    progress.finish(converted.bytes);
    let ok = out.success();
    if !ok {
        ctx.log.record("WARN", &format!("{} load of the OCI archive failed: {}", image.service, out.stderr.trim()));
        tracing::warn!("{} OCI load failed (status {}): {}", image.reference, out.status, out.stderr.trim());
    }
    stats.bytes_sent = converted.bytes;
    stats.layers_sent = converted.layers_sent;
    stats.layers_skipped = converted.layers_skipped;
    Ok((stats, ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        b.append_data(&mut header(data.len() as u64), name, data).unwrap();
    }

    fn config_for(layers: &[Vec<u8>]) -> Vec<u8> {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest_of(l)).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    /// A `docker save` archive in Docker 20.10's layout; a layer repeated
    /// later in the image is a symlink to the first, as Docker writes it.
    fn legacy_archive(layers: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let config = config_for(layers);
        let mut b = tar::Builder::new(Vec::new());
        let mut files = Vec::new();
        let mut first: HashMap<Vec<u8>, String> = HashMap::new();
        for (i, l) in layers.iter().enumerate() {
            let dir = format!("{:064x}", i + 1);
            let file = format!("{dir}/layer.tar");
            add(&mut b, &format!("{dir}/VERSION"), b"1.0");
            add(&mut b, &format!("{dir}/json"), b"{}");
            match first.get(l) {
                Some(earlier) => {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &file, format!("../{earlier}")).unwrap();
                }
                None => {
                    add(&mut b, &file, l);
                    first.insert(l.clone(), file.clone());
                }
            }
            files.push(file);
        }
        let config_name = format!("{}.json", digest_of(&config).trim_start_matches("sha256:"));
        add(&mut b, &config_name, &config);
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["x-backend:1"], "Layers": files}]);
        add(&mut b, "manifest.json", manifest.to_string().as_bytes());
        add(&mut b, "repositories", b"{}");
        (b.into_inner().unwrap(), config)
    }

    /// A `docker save` archive in Docker 25's OCI layout.
    fn oci_input_archive(layers: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let config = config_for(layers);
        let mut b = tar::Builder::new(Vec::new());
        let mut seen = HashSet::new();
        for l in layers {
            if seen.insert(digest_of(l)) {
                add(&mut b, &blob_path(&digest_of(l)), l);
            }
        }
        add(&mut b, &blob_path(&digest_of(&config)), &config);
        add(&mut b, "index.json", b"{}");
        let files: Vec<String> = layers.iter().map(|l| blob_path(&digest_of(l))).collect();
        let manifest =
            serde_json::json!([{"Config": blob_path(&digest_of(&config)), "RepoTags": ["x:1"], "Layers": files}]);
        add(&mut b, "manifest.json", manifest.to_string().as_bytes());
        add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        (b.into_inner().unwrap(), config)
    }

    /// The OCI archive's files by name.
    fn files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in tar::Archive::new(archive).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert!(out.insert(name.clone(), data).is_none(), "{name} twice");
        }
        out
    }

    /// Checks the layout: index → manifest → config and layers, every blob
    /// present named by its content's digest; returns the manifest.
    fn check_layout(files: &BTreeMap<String, Vec<u8>>, reference: &str) -> serde_json::Value {
        for (name, data) in files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(format!("sha256:{hex}"), digest_of(data), "{name}");
            }
        }
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(m["annotations"][REF_ANNOTATION], reference);
        let mbytes = &files[&blob_path(m["digest"].as_str().unwrap())];
        assert_eq!(m["size"], mbytes.len());
        let manifest: serde_json::Value = serde_json::from_slice(mbytes).unwrap();
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        let config = &files[&blob_path(manifest["config"]["digest"].as_str().unwrap())];
        assert_eq!(manifest["config"]["size"], config.len());
        manifest
    }

    #[test]
    fn nothing_skipped_keeps_every_layer_and_the_config_byte_for_byte() {
        let layers = vec![b"base".to_vec(), b"middle".to_vec(), b"top".to_vec()];
        let (input, config) = legacy_archive(&layers);
        let mut out = Vec::new();
        let c = convert(input.as_slice(), &mut out, "x-backend:1", &HashSet::new()).unwrap();
        assert_eq!(c.config_digest, digest_of(&config), "the image ID must stay the source's");
        assert_eq!((c.layers_sent, c.layers_skipped), (3, 0));
        assert_eq!(c.bytes, out.len() as u64);
        let f = files(&out);
        let manifest = check_layout(&f, "x-backend:1");
        assert_eq!(f[&blob_path(&c.config_digest)], config);
        for (l, m) in layers.iter().zip(manifest["layers"].as_array().unwrap()) {
            assert_eq!(m["digest"], digest_of(l));
            assert_eq!(m["mediaType"], LAYER_MEDIA_TYPE);
            assert_eq!(m["size"], l.len());
            assert_eq!(&f[&blob_path(&digest_of(l))], l);
        }
    }

    #[test]
    fn skipped_layers_stay_in_the_manifest_but_not_in_the_archive() {
        let layers = vec![b"base".to_vec(), b"middle".to_vec(), b"top".to_vec()];
        let (input, _) = legacy_archive(&layers);
        let skip: HashSet<String> = [digest_of(b"base"), digest_of(b"middle")].into();
        let mut out = Vec::new();
        let c = convert(input.as_slice(), &mut out, "x-backend:2", &skip).unwrap();
        assert_eq!((c.layers_sent, c.layers_skipped), (1, 2));
        let f = files(&out);
        let manifest = check_layout(&f, "x-backend:2");
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
        assert!(!f.contains_key(&blob_path(&digest_of(b"base"))));
        assert!(!f.contains_key(&blob_path(&digest_of(b"middle"))));
        assert_eq!(f[&blob_path(&digest_of(b"top"))], b"top");
    }

    #[test]
    fn skippable_layers_are_those_whose_chain_the_target_has() {
        let layers: Vec<String> = ["sha256:a", "sha256:b", "sha256:c"].map(String::from).to_vec();
        let target: Vec<String> = ["sha256:a", "sha256:b", "sha256:x"].map(String::from).to_vec();
        let chains: HashSet<String> = transfer::chain_ids(&target).into_iter().collect();
        assert_eq!(skippable_diff_ids(&layers, &chains), HashSet::from(["sha256:a".into(), "sha256:b".into()]));
        // the same layer on another parent is not the same chain
        let other: HashSet<String> = transfer::chain_ids(&["sha256:z".into(), "sha256:b".into()]).into_iter().collect();
        assert!(skippable_diff_ids(&layers, &other).is_empty());
    }

    #[test]
    fn docker_25_oci_layout_is_converted_too() {
        let layers = vec![b"base".to_vec(), vec![7u8; (SMALL_BLOB + 10) as usize]];
        let (input, config) = oci_input_archive(&layers);
        let mut out = Vec::new();
        let skip: HashSet<String> = [digest_of(b"base")].into();
        let c = convert(input.as_slice(), &mut out, "x:1", &skip).unwrap();
        assert_eq!(c.config_digest, digest_of(&config));
        assert_eq!((c.layers_sent, c.layers_skipped), (1, 1));
        let f = files(&out);
        check_layout(&f, "x:1");
        assert!(!f.contains_key(&blob_path(&digest_of(b"base"))));
        assert_eq!(f[&blob_path(&digest_of(&layers[1]))], layers[1]);
    }

    #[test]
    fn a_config_that_disagrees_with_the_layers_is_an_error_naming_both() {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "l1/layer.tar", b"gzipped?");
        let config = config_for(&[b"plain".to_vec()]);
        add(&mut b, "c.json", &config);
        add(&mut b, "manifest.json", br#"[{"Config":"c.json","Layers":["l1/layer.tar"]}]"#);
        let err = convert(b.into_inner().unwrap().as_slice(), Vec::new(), "x:1", &HashSet::new()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&digest_of(b"gzipped?")) && msg.contains(&digest_of(b"plain")), "{msg}");
        assert!(msg.contains("uncompressed"), "{msg}");
    }

    #[test]
    fn archives_that_are_not_one_image_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "repositories", b"{}");
        let err = convert(b.into_inner().unwrap().as_slice(), Vec::new(), "x:1", &HashSet::new()).unwrap_err();
        assert!(format!("{err:#}").contains("no manifest.json"), "{err:#}");
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "manifest.json", br#"[{"Config":"a.json","Layers":[]},{"Config":"b.json","Layers":[]}]"#);
        let err = convert(b.into_inner().unwrap().as_slice(), Vec::new(), "x:1", &HashSet::new()).unwrap_err();
        assert!(format!("{err:#}").contains("holds 2 images"), "{err:#}");
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "blobs/sha256/NOT-A-DIGEST", b"x");
        let err = convert(b.into_inner().unwrap().as_slice(), Vec::new(), "x:1", &HashSet::new()).unwrap_err();
        assert!(format!("{err:#}").contains("not a sha256 digest"), "{err:#}");
    }

    #[test]
    fn links_resolve_relative_to_their_directory() {
        assert_eq!(resolve_link("def/layer.tar", "../abc/layer.tar"), "abc/layer.tar");
        assert_eq!(resolve_link("def/layer.tar", "/abc/layer.tar"), "abc/layer.tar");
        assert_eq!(resolve_link("layer.tar", "./x"), "x");
    }

    fn layer_sets() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<bool>)> {
        // few distinct contents, so that layers repeat now and then
        proptest::collection::vec((0u8..6, 0usize..3000), 1..6).prop_flat_map(|spec| {
            let layers: Vec<Vec<u8>> = spec.iter().map(|(b, n)| vec![*b; *n + usize::from(*b)]).collect();
            let n = layers.len();
            (Just(layers), proptest::collection::vec(any::<bool>(), n))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever is skipped, in either input layout: the manifest lists
        /// every layer (digest = diff ID = content's sha256, its size), every
        /// blob is named by its content's digest, the config is the source's,
        /// and exactly the layers not skipped are in the archive with their bytes.
        #[test]
        fn conversion_keeps_digests_and_leaves_out_only_skipped_layers(
            (layers, skip_mask) in layer_sets(),
            oci_input in any::<bool>(),
        ) {
            let (input, config) = if oci_input { oci_input_archive(&layers) } else { legacy_archive(&layers) };
            let skip: HashSet<String> =
                layers.iter().zip(&skip_mask).filter(|(_, s)| **s).map(|(l, _)| digest_of(l)).collect();
            let mut out = Vec::new();
            let c = convert(input.as_slice(), &mut out, "p-backend:7", &skip).unwrap();
            prop_assert_eq!(&c.config_digest, &digest_of(&config));
            prop_assert_eq!(c.bytes, out.len() as u64);
            let f = files(&out);
            let manifest = check_layout(&f, "p-backend:7");
            let listed = manifest["layers"].as_array().unwrap();
            prop_assert_eq!(listed.len(), layers.len());
            let mut skipped = 0;
            for (l, m) in layers.iter().zip(listed) {
                prop_assert_eq!(m["digest"].as_str().unwrap(), digest_of(l));
                prop_assert_eq!(m["size"].as_u64().unwrap(), l.len() as u64);
                match f.get(&blob_path(&digest_of(l))) {
                    Some(data) => {
                        prop_assert!(!skip.contains(&digest_of(l)));
                        prop_assert_eq!(data, l);
                    }
                    None => {
                        prop_assert!(skip.contains(&digest_of(l)));
                        skipped += 1;
                    }
                }
            }
            prop_assert_eq!(c.layers_skipped, skipped);
            prop_assert_eq!(c.layers_sent + c.layers_skipped, layers.len());
            // blobs: the layers not skipped, the config, the manifest (and
            // Docker 25's own index/manifest blobs are not in these inputs)
            let expected_blobs: HashSet<String> = layers
                .iter()
                .map(|l| digest_of(l))
                .filter(|d| !skip.contains(d))
                .chain([c.config_digest.clone(), c.manifest_digest.clone()])
                .collect();
            let got_blobs: HashSet<String> =
                f.keys().filter_map(|k| k.strip_prefix("blobs/sha256/")).map(|h| format!("sha256:{h}")).collect();
            prop_assert_eq!(got_blobs, expected_blobs);
        }
    }
}
