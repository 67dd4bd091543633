//! Reading an image's changed layers straight from this machine's layer
//! store, without `docker save`.
//!
//! `docker save` (Docker 20.10) writes the whole image to a temporary
//! directory before the first byte comes out: 2–3.5 s for the 330 MB backend
//! even when one small layer changed. A Docker engine with the classic image
//! store and an overlay driver (`overlay2`, `fuse-overlayfs`) keeps, under its
//! `DockerRootDir`:
//!
//! - `image/<driver>/imagedb/content/sha256/<image id>`: the image config,
//!   byte for byte (its sha256 is the image ID);
//! - `image/<driver>/layerdb/sha256/<chain id>/`: `diff` (the diff ID),
//!   `cache-id` (the driver's directory, `<driver>/<cache-id>/diff`, holding
//!   the files the layer added or changed) and `tar-split.json.gz`, the raw
//!   bytes of the layer tar's headers and padding with the names and sizes
//!   of the file payloads in between (vbatts/tar-split).
//!
//! The engine itself rebuilds a layer's tar from those two (moby's
//! `layer_store.assembleTarTo`, tar-split's `WriteOutputTarStream`), and so
//! does [`Assembler`]: segments as they are, then each file's bytes from the
//! diff directory. The result is the layer tar `docker save` would write,
//! whose sha256 is the diff ID; that is checked for every layer before the
//! archive's first byte is produced ([`LayerStore::prepare`]) and again while
//! it streams. Anything unexpected (another driver, a containerd image store,
//! files this process cannot read, a file that changed, a hash that differs)
//! makes [`LayerStore::prepare`] fail, and the caller exports with
//! `docker save` instead: never a wrong archive.
//!
//! [`write_archive`] writes a `docker save` legacy-layout archive (accepted by
//! `docker load` of Docker 20.10 and 26): the config, `<diff id>/layer.tar`
//! for the layers to send only, and `manifest.json` naming every layer (a
//! classic store never reads a layer whose chain it has: moby's tarexport
//! load loop).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{chain_ids, send_layer, Compressor, FilterReport, LayerPlan};

/// Storage drivers whose layers live as plain `diff` directories under
/// `<root>/<driver>/<cache-id>/` with the layer database under `image/<driver>`.
const DRIVERS: [&str; 2] = ["overlay2", "fuse-overlayfs"];

/// Setting `CULTIVATE_LAYER_STORE=0` (or `off`) always exports with `docker save`.
pub const DISABLE_VAR: &str = "CULTIVATE_LAYER_STORE";

/// A local engine's layer store this process can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStore {
    /// `DockerRootDir`.
    root: PathBuf,
    /// `overlay2` or `fuse-overlayfs`.
    driver: String,
}

impl LayerStore {
    /// The engine's layer store when it can be read directly; `None` (with a
    /// debug line saying why) when images must be exported with `docker save`.
    pub async fn detect(docker: &bollard::Docker) -> Option<LayerStore> {
        if std::env::var(DISABLE_VAR).is_ok_and(|v| matches!(v.as_str(), "0" | "off" | "false" | "no")) {
            tracing::debug!("layer store: {DISABLE_VAR} is off; exporting with docker save");
            return None;
        }
        let info = match docker.info().await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!("layer store: the engine's info failed ({e}); exporting with docker save");
                return None;
            }
        };
        let status = info.driver_status.unwrap_or_default();
        match Self::from_info(info.driver.as_deref(), info.docker_root_dir.as_deref(), &status) {
            Ok(store) => {
                tracing::debug!("layer store: reading layers from {}", store.image_dir().display());
                Some(store)
            }
            Err(why) => {
                tracing::debug!("layer store: {why}; exporting with docker save");
                None
            }
        }
    }

    /// Checks the engine's `Driver`, `DockerRootDir` and `DriverStatus`, and
    /// that this process can list the image database; the reason when not.
    pub fn from_info(driver: Option<&str>, root: Option<&str>, status: &[Vec<String>]) -> Result<LayerStore, String> {
        let driver = driver.unwrap_or_default();
        if !DRIVERS.contains(&driver) {
            return Err(format!("the engine's storage driver is {driver:?}, not overlay2 or fuse-overlayfs"));
        }
        // The containerd image store reports its snapshotter here (Docker ≥ 24).
        if let Some(kv) = status.iter().find(|kv| kv.iter().any(|s| s.contains("containerd"))) {
            return Err(format!("the engine uses the containerd image store ({})", kv.join(": ")));
        }
        let root = root.filter(|r| Path::new(r).is_absolute()).ok_or_else(|| format!("DockerRootDir {root:?}"))?;
        let store = LayerStore { root: PathBuf::from(root), driver: driver.to_string() };
        let imagedb = store.image_dir().join("imagedb/content/sha256");
        if let Err(e) = std::fs::read_dir(&imagedb) {
            return Err(format!("cannot read {}: {e}", imagedb.display()));
        }
        Ok(store)
    }

    fn image_dir(&self) -> PathBuf {
        self.root.join("image").join(&self.driver)
    }

    /// Everything needed to write `id`'s archive for `plan`, every layer to
    /// send checked against its diff ID. Fails on anything unexpected.
    pub fn prepare(&self, id: &str, reference: &str, plan: &LayerPlan) -> Result<Prepared> {
        let hex = digest_hex(id).with_context(|| format!("image ID {id:?}"))?;
        let config_path = self.image_dir().join("imagedb/content/sha256").join(hex);
        let config = std::fs::read(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
        let got = format!("sha256:{:x}", Sha256::digest(&config));
        if got != id {
            bail!("{} hashes to {got}, not {id}", config_path.display());
        }
        let diff_ids = config_diff_ids(&config).with_context(|| format!("the config of {id}"))?;
        if diff_ids != plan.layers {
            bail!("the config of {id} lists other layers than the engine reported");
        }
        let skippable = plan.skippable_diffs();
        let chains = chain_ids(&diff_ids);
        let mut send: Vec<Layer> = Vec::new();
        let mut seen = HashSet::new();
        let mut skipped_positions = 0;
        let mut skipped_bytes = 0;
        for (diff, chain) in diff_ids.iter().zip(&chains) {
            if skippable.contains(diff) {
                skipped_positions += 1;
                if seen.insert(diff.clone()) {
                    // Only its size is needed (the full archive's size is reported).
                    skipped_bytes += self.read_tar_split(chain).map(|s| tar_size(&s)).unwrap_or(0);
                }
                continue;
            }
            if !seen.insert(diff.clone()) {
                continue;
            }
            let layer = self.layer(diff, chain)?;
            let got = layer.hash().with_context(|| format!("reassembling layer {diff}"))?;
            if &got != diff {
                bail!("layer {diff} reassembled from {} hashes to {got}", layer.dir.display());
            }
            send.push(layer);
        }
        Ok(Prepared {
            id: id.to_string(),
            reference: reference.to_string(),
            config,
            diff_ids,
            send,
            skipped_positions,
            skipped_bytes,
        })
    }

    fn layer_db(&self, chain: &str) -> Result<PathBuf> {
        Ok(self.image_dir().join("layerdb/sha256").join(digest_hex(chain)?))
    }

    fn read_tar_split(&self, chain: &str) -> Result<Vec<Segment>> {
        let path = self.layer_db(chain)?.join("tar-split.json.gz");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        parse_tar_split(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
            .with_context(|| format!("reading {}", path.display()))
    }

    fn layer(&self, diff: &str, chain: &str) -> Result<Layer> {
        let db = self.layer_db(chain)?;
        let read = |name: &str| -> Result<String> {
            let p = db.join(name);
            Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string())
        };
        let recorded = read("diff")?;
        if recorded != diff {
            bail!("{} says diff {recorded}, the image says {diff}", db.display());
        }
        let cache_id = read("cache-id")?;
        if cache_id.is_empty() || cache_id.contains('/') || cache_id.starts_with('.') {
            bail!("{} has cache-id {cache_id:?}", db.display());
        }
        let dir = self.root.join(&self.driver).join(&cache_id).join("diff");
        let segments = self.read_tar_split(chain)?;
        Ok(Layer { diff: diff.to_string(), size: tar_size(&segments), dir, segments })
    }
}

/// The hex part of `sha256:<64 hex>`.
fn digest_hex(d: &str) -> Result<&str> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(h),
        _ => bail!("{d:?} is not a sha256 digest"),
    }
}

fn config_diff_ids(config: &[u8]) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let c: Config = serde_json::from_slice(config).context("not an image config with rootfs.diff_ids")?;
    Ok(c.rootfs.diff_ids)
}

// ---------------------------------------------------------------- tar-split

/// A piece of a layer tar, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Raw bytes: headers and padding.
    Raw(Vec<u8>),
    /// `size` bytes of the file at this path relative to the diff directory.
    File { name: PathBuf, size: u64 },
}

/// One line of a tar-split file (tar-split's `storage.Entry`): `type` 1 is a
/// file payload (`name`, or `name_raw` in base64 when not UTF-8; `size`,
/// omitted when 0; `payload` is its crc64), `type` 2 a raw segment whose
/// `payload` is base64.
#[derive(serde::Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    payload: Option<String>,
}

/// Reads tar-split JSON lines (already decompressed) into segments; a file
/// payload of size 0 (directories, links, whiteouts) contributes nothing.
pub fn parse_tar_split<R: BufRead>(input: R) -> Result<Vec<Segment>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Entry = serde_json::from_str(&line).with_context(|| format!("line {}: {line:.200}", n + 1))?;
        match e.kind {
            2 => {
                let raw = match e.payload.as_deref() {
                    Some(p) => b64.decode(p).with_context(|| format!("line {}: payload is not base64", n + 1))?,
                    None => Vec::new(),
                };
                // Adjacent segments merge: fewer, larger writes.
                match out.last_mut() {
                    Some(Segment::Raw(prev)) => prev.extend_from_slice(&raw),
                    _ if raw.is_empty() => {}
                    _ => out.push(Segment::Raw(raw)),
                }
            }
            1 => {
                if e.size < 0 {
                    bail!("line {}: size {}", n + 1, e.size);
                }
                if e.size == 0 {
                    continue;
                }
                let name: Vec<u8> = match (&e.name_raw, &e.name) {
                    (Some(raw), _) if !raw.is_empty() => {
                        b64.decode(raw).with_context(|| format!("line {}: name_raw is not base64", n + 1))?
                    }
                    (_, Some(name)) => name.as_bytes().to_vec(),
                    _ => bail!("line {}: a file entry without a name", n + 1),
                };
                out.push(Segment::File {
                    name: relative(&name).with_context(|| format!("line {}", n + 1))?,
                    size: e.size as u64,
                });
            }
            k => bail!("line {}: unknown entry type {k}", n + 1),
        }
    }
    Ok(out)
}

/// A tar entry name as a path inside the diff directory: no `..`, no root.
fn relative(name: &[u8]) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(name)).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("the entry {:?} leaves the layer directory", String::from_utf8_lossy(name))
            }
        }
    }
    if out.as_os_str().is_empty() {
        bail!("the file entry {:?} names no file", String::from_utf8_lossy(name));
    }
    Ok(out)
}

/// The length of the tar the segments make.
pub fn tar_size(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .map(|s| match s {
            Segment::Raw(b) => b.len() as u64,
            Segment::File { size, .. } => *size,
        })
        .sum()
}

/// Reads the layer tar the segments describe, files from `dir`; a file
/// shorter than its entry is an error (a longer one is cut: the hash tells).
pub struct Assembler<'a> {
    dir: &'a Path,
    segments: std::slice::Iter<'a, Segment>,
    current: Current<'a>,
}

enum Current<'a> {
    Idle,
    Raw(&'a [u8]),
    File { file: std::io::Take<std::fs::File>, left: u64, name: &'a Path },
}

impl<'a> Assembler<'a> {
    /// A reader of the tar.
    pub fn new(dir: &'a Path, segments: &'a [Segment]) -> Self {
        Assembler { dir, segments: segments.iter(), current: Current::Idle }
    }
}

impl Read for Assembler<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.current {
                Current::Idle => match self.segments.next() {
                    None => return Ok(0),
                    Some(Segment::Raw(b)) => self.current = Current::Raw(b),
                    Some(Segment::File { name, size }) => {
                        let path = self.dir.join(name);
                        let file = std::fs::File::open(&path)
                            .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
                        self.current = Current::File { file: file.take(*size), left: *size, name };
                    }
                },
                Current::Raw(rest) => {
                    if rest.is_empty() {
                        self.current = Current::Idle;
                        continue;
                    }
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    *rest = &rest[n..];
                    return Ok(n);
                }
                Current::File { file, left, name } => {
                    if *left == 0 {
                        self.current = Current::Idle;
                        continue;
                    }
                    let n = file.read(buf)?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("{} is {left} bytes shorter than its tar entry", self.dir.join(name).display()),
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

/// A layer to send: where its files are and how its tar goes.
#[derive(Debug)]
pub struct Layer {
    diff: String,
    dir: PathBuf,
    segments: Vec<Segment>,
    size: u64,
}

impl Layer {
    /// `sha256:…` of the reassembled tar.
    fn hash(&self) -> Result<String> {
        let mut h = Sha256::new();
        let n = std::io::copy(&mut Assembler::new(&self.dir, &self.segments), &mut HashWriter(&mut h))?;
        if n != self.size {
            bail!("reassembled {n} bytes, expected {}", self.size);
        }
        Ok(format!("sha256:{:x}", h.finalize()))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hashes and counts what is read through it.
struct Checked<'a, R> {
    inner: R,
    hash: Sha256,
    count: &'a AtomicU64,
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

// ---------------------------------------------------------------- the archive

/// An image whose archive can be written from the layer store.
#[derive(Debug)]
pub struct Prepared {
    id: String,
    reference: String,
    config: Vec<u8>,
    diff_ids: Vec<String>,
    /// The layers to send, each once, base first.
    send: Vec<Layer>,
    skipped_positions: usize,
    /// The tar size of the layers left out (each once).
    skipped_bytes: u64,
}

fn layer_path(diff: &str) -> String {
    format!("{}/layer.tar", diff.trim_start_matches("sha256:"))
}

/// Writes the legacy-layout archive of `image` into `out`, counting into
/// `read` the bytes `docker save`'s archive would have had (the left-out
/// layers at once, the others as they are read). The layers are hashed
/// again as they stream; a difference fails the stream.
pub fn write_archive<W: Write>(
    image: &Prepared,
    out: Compressor<W>,
    read: Arc<AtomicU64>,
) -> Result<(FilterReport, W)> {
    let hex = image.id.trim_start_matches("sha256:");
    let config_name = format!("{hex}.json");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [image.reference],
        "Layers": image.diff_ids.iter().map(|d| layer_path(d)).collect::<Vec<_>>(),
    }]))?;
    read.fetch_add(image.skipped_bytes + (image.config.len() + manifest.len()) as u64, Ordering::Relaxed);
    let mut builder = tar::Builder::new(out);
    let header = |size: u64, dir: bool| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_mtime(0);
        h
    };
    builder.append_data(&mut header(image.config.len() as u64, false), &config_name, image.config.as_slice())?;
    for layer in &image.send {
        let dir = layer.diff.trim_start_matches("sha256:");
        builder.append_data(&mut header(0, true), format!("{dir}/"), std::io::empty())?;
        let mut data =
            Checked { inner: Assembler::new(&layer.dir, &layer.segments), hash: Sha256::new(), count: &read };
        send_layer(&mut builder, &mut header(layer.size, false), &layer_path(&layer.diff), &mut data)?;
        let got = format!("sha256:{:x}", data.hash.finalize());
        if got != layer.diff {
            bail!("layer {} changed while it was sent: it now hashes to {got}", layer.diff);
        }
    }
    builder.append_data(&mut header(manifest.len() as u64, false), "manifest.json", manifest.as_slice())?;
    let out = builder.into_inner().context("finishing the archive")?;
    let out = out.finish()?;
    let report = FilterReport {
        layers_skipped: image.skipped_positions,
        layers_sent: image.diff_ids.len() - image.skipped_positions,
        input_bytes: read.load(Ordering::Relaxed),
        learned: Vec::new(),
    };
    Ok((report, out))
}

#[cfg(test)]
mod tests;
