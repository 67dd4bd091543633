//! Moving images to the target: only the layers it lacks cross the wire,
//! compressed, read straight from the local engine's export stream.
//!
//! 1. If the target already has the image's content ID, it is only tagged.
//! 2. Otherwise the image is exported from this machine's engine (`docker
//!    save` format) and the export stream is filtered as it arrives
//!    ([`filter_stream`]): the layer files whose chain the target already
//!    holds are dropped (a Docker engine with the classic image store never
//!    reads a layer it has: moby's tarexport load loop), everything else
//!    (config, manifests, changed layers) passes in the order it came. A
//!    layer is recognised by its name: in the OCI layout (Docker ≥ 25) the
//!    blob's name is its digest, which is the diff ID; in the legacy layout
//!    (`<v1id>/layer.tar`, Docker ≤ 24) the directory is looked up in a cache
//!    of directories learnt from earlier exports' `manifest.json` (the v1 IDs
//!    of all but the top layer depend only on the chain), and an unknown
//!    directory's layer is hashed while it is spooled (its sha256 is its diff
//!    ID) and then sent or dropped.
//! 3. The filtered stream is compressed ([`Codec`]: zstd when the target
//!    loads it, as the probe's `load_compression` detail says: an engine that
//!    decompresses it itself, Docker ≥ 23, or a load command that pipes it
//!    through the target's `zstd`; gzip otherwise, which every `docker load`
//!    accepts) and streamed into the runtime's load
//!    command over the transport while the export is still running, with
//!    progress (P21). The next image's export starts while one is sent.
//! 4. The target's image ID must equal the source's, or the deploy stops
//!    (P20). A filtered or compressed load that fails falls back to the full,
//!    uncompressed archive once; a containerd image store gets the full
//!    archive (compressed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::pipeline::build::BuiltImage;

/// What one image transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferStats {
    /// Image reference.
    pub reference: String,
    /// The target already had the image: only tagged.
    pub already_present: bool,
    /// Bytes streamed to the target (on the wire: compressed).
    pub bytes_sent: u64,
    /// Size of the full (uncompressed) archive the local engine exported.
    pub archive_bytes: u64,
    /// Layers sent.
    pub layers_sent: usize,
    /// Layers skipped because the target had them.
    pub layers_skipped: usize,
    /// The filtered archive failed and the full one was sent.
    pub fell_back: bool,
    /// How the stream was compressed: `zstd`, `gzip` or `none`.
    pub compression: String,
}

/// Docker's chain IDs of a layer list: the first layer's diff ID, then
/// `sha256(previous chain ID + " " + diff ID)`. Layer `i` of an image can be
/// skipped when the target has an image whose first `i+1` layers are the
/// same (same chain ID), not merely the same layer somewhere else.
pub fn chain_ids(layers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(layers.len());
    for l in layers {
        let id = match out.last() {
            None => l.clone(),
            Some(prev) => format!("sha256:{:x}", Sha256::digest(format!("{prev} {l}").as_bytes())),
        };
        out.push(id);
    }
    out
}

// ---------------------------------------------------------------- compression

/// How the archive is compressed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As exported.
    None,
    /// zstd at this level, several threads, long-distance matching (128 MiB window).
    Zstd(i32),
    /// gzip at this level (1–9).
    Gzip(u32),
}

impl Codec {
    /// `none`, `zstd`, `gzip`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd(_) => "zstd",
            Codec::Gzip(_) => "gzip",
        }
    }
}

/// zstd window: 2^27 = 128 MiB, the largest a decoder accepts without being asked
/// (`zstd -d`, the Go decoder in Docker).
const ZSTD_WINDOW_LOG: u32 = 27;

/// The codec for a target: none when compression is off or the runtime is not
/// Docker; zstd when the target loads it, as the probe's `load_compression`
/// detail says (`zstd_loads`: the engine decompresses it itself, Docker ≥ 23,
/// or the load command pipes it through the target's `zstd`); else gzip,
/// which every `docker load` accepts (checked on 20.10). A plugin that does
/// not report the detail (`None`) gets zstd only from Docker ≥ 23 (moby's
/// DecompressStream learnt zstd in 23.0; checked on 26.1).
pub fn codec_for(
    settings: &crate::settings::TransferSettings,
    runtime: &str,
    engine_version: Option<&str>,
    zstd_loads: Option<bool>,
) -> Codec {
    if settings.compression == crate::settings::Compression::None || runtime != "docker" {
        return Codec::None;
    }
    let major = engine_version.and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    if zstd_loads.unwrap_or(major >= 23) {
        Codec::Zstd(settings.level)
    } else {
        Codec::Gzip(settings.level.clamp(1, 9) as u32)
    }
}

/// What the load command is told: the archive's compression, and the
/// reference whose ID it reports once loaded (`verify`).
pub fn load_request(codec: Codec, verify: Option<&str>) -> cultivate_plugin_api::ops::ImageLoadRequest {
    cultivate_plugin_api::ops::ImageLoadRequest {
        compression: (codec != Codec::None).then(|| codec.name().to_string()),
        verify: verify.map(str::to_string),
    }
}

/// A writer compressing with a [`Codec`]. [`Compressor::set_store`] ends the
/// current zstd frame or gzip member and starts the next one at a level that
/// barely tries (zstd -5, gzip 0) for data that does not shrink, or back at the
/// configured level: decoders read concatenated frames/members as one stream.
pub struct Compressor<W: Write> {
    codec: Codec,
    threads: u32,
    stored: bool,
    inner: Option<Enc<W>>,
}

enum Enc<W: Write> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    /// A compressor writing into `out` with `threads` zstd workers.
    pub fn new(codec: Codec, threads: u32, out: W) -> std::io::Result<Self> {
        let inner = Some(Self::start(codec, threads, false, out)?);
        Ok(Compressor { codec, threads, stored: false, inner })
    }

    fn start(codec: Codec, threads: u32, stored: bool, out: W) -> std::io::Result<Enc<W>> {
        Ok(match codec {
            Codec::None => Enc::Plain(out),
            Codec::Zstd(level) => {
                let mut e = zstd::stream::write::Encoder::new(out, if stored { -5 } else { level })?;
                if threads > 1 {
                    e.multithread(threads)?;
                }
                if !stored {
                    e.long_distance_matching(true)?;
                    e.window_log(ZSTD_WINDOW_LOG)?;
                }
                Enc::Zstd(e)
            }
            Codec::Gzip(level) => {
                Enc::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::new(if stored { 0 } else { level })))
            }
        })
    }

    fn finish_inner(enc: Enc<W>) -> std::io::Result<W> {
        match enc {
            Enc::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Enc::Zstd(e) => e.finish(),
            Enc::Gzip(e) => e.finish(),
        }
    }

    /// Switches between compressing (`false`) and barely compressing (`true`).
    pub fn set_store(&mut self, stored: bool) -> std::io::Result<()> {
        if stored == self.stored || self.codec == Codec::None {
            return Ok(());
        }
        let enc = self.inner.take().ok_or_else(|| std::io::Error::other("compressor already finished"))?;
        let out = Self::finish_inner(enc)?;
        self.inner = Some(Self::start(self.codec, self.threads, stored, out)?);
        self.stored = stored;
        Ok(())
    }

    /// Ends the stream and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        let enc = self.inner.take().ok_or_else(|| std::io::Error::other("compressor already finished"))?;
        Self::finish_inner(enc)
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.as_mut() {
            Some(Enc::Plain(w)) => w.write(buf),
            Some(Enc::Zstd(e)) => e.write(buf),
            Some(Enc::Gzip(e)) => e.write(buf),
            None => Err(std::io::Error::other("compressor already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.as_mut() {
            Some(Enc::Plain(w)) => w.flush(),
            Some(Enc::Zstd(e)) => e.flush(),
            Some(Enc::Gzip(e)) => e.flush(),
            None => Ok(()),
        }
    }
}

/// True when `sample` does not shrink by at least 3 % at zstd level 1
/// (already compressed files: a layer of .gz/.jpg/.woff2).
pub fn incompressible(sample: &[u8]) -> bool {
    if sample.len() < 4096 {
        return false;
    }
    match zstd::bulk::compress(sample, 1) {
        Ok(c) => c.len() as f64 > sample.len() as f64 * 0.97,
        Err(_) => false,
    }
}

// ---------------------------------------------------------------- the stream filter

/// What the filter needs to know to drop layers the target has.
#[derive(Debug, Clone, Default)]
pub struct LayerPlan {
    /// The image's diff IDs, base first (`docker image inspect` RootFS.Layers).
    pub layers: Vec<String>,
    /// Chain IDs the target has (or will have before this image loads).
    pub target_chains: HashSet<String>,
    /// Legacy-layout layer directories (`<v1id>`) → chain ID, learnt from earlier exports.
    pub known_dirs: HashMap<String, String>,
}

impl LayerPlan {
    /// A plan that sends every layer.
    pub fn everything(layers: &[String]) -> Self {
        LayerPlan { layers: layers.to_vec(), ..LayerPlan::default() }
    }

    /// The diff IDs every one of whose positions the target has the chain of.
    fn skippable_diffs(&self) -> HashSet<String> {
        let chains = chain_ids(&self.layers);
        let mut ok: HashMap<&str, bool> = HashMap::new();
        for (diff, chain) in self.layers.iter().zip(&chains) {
            let has = self.target_chains.contains(chain);
            ok.entry(diff.as_str()).and_modify(|v| *v &= has).or_insert(has);
        }
        ok.into_iter().filter(|(_, v)| *v).map(|(k, _)| k.to_string()).collect()
    }
}

/// What [`filter_stream`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterReport {
    /// Layer files dropped.
    pub layers_skipped: usize,
    /// Layer files sent.
    pub layers_sent: usize,
    /// Bytes read from the export.
    pub input_bytes: u64,
    /// Legacy layer directories → chain ID, from this export's `manifest.json`.
    pub learned: Vec<(String, String)>,
}

/// The kind of a layer entry: a legacy `<dir>/layer.tar` or an OCI blob named by digest.
enum LayerEntry {
    Legacy(String),
    Blob(String),
}

fn layer_entry(path: &str) -> Option<LayerEntry> {
    if let Some(dir) = path.strip_suffix("/layer.tar") {
        if !dir.is_empty() && !dir.contains('/') {
            return Some(LayerEntry::Legacy(dir.to_string()));
        }
    }
    let hex = path.strip_prefix("blobs/sha256/")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| LayerEntry::Blob(format!("sha256:{hex}")))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    #[serde(default)]
    layers: Vec<String>,
}

/// Counts bytes read into a shared counter (progress from another thread).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Spools `entry` while hashing it: `(spool, "sha256:…")`.
fn spool_hashed<R: Read>(entry: &mut R) -> Result<(tempfile::SpooledTempFile, String)> {
    let mut spool = tempfile::SpooledTempFile::new(64 << 20);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        spool.write_all(&buf[..n])?;
    }
    spool.rewind()?;
    Ok((spool, format!("sha256:{:x}", hash.finalize())))
}

/// Copies an image archive (`docker save` output, legacy or OCI layout) from
/// `input` into `out` as it streams, without the layer files whose chain the
/// target has (`plan`), in the order they came. Layers that do not shrink are
/// sent barely compressed. Counts the bytes read into `read`.
pub fn filter_stream<R: Read, W: Write>(
    input: R,
    out: Compressor<W>,
    plan: &LayerPlan,
    read: Arc<AtomicU64>,
) -> Result<(FilterReport, W)> {
    let skippable = plan.skippable_diffs();
    // A legacy directory names a chain; it may go when its layer may.
    let skippable_chains: HashSet<String> = chain_ids(&plan.layers)
        .into_iter()
        .zip(&plan.layers)
        .filter(|(_, d)| skippable.contains(*d))
        .map(|(c, _)| c)
        .collect();
    let mut report = FilterReport::default();
    let mut manifest: Option<Vec<u8>> = None;
    let mut tar = tar::Archive::new(Counting { inner: input, count: read.clone() });
    let mut builder = tar::Builder::new(out);
    for entry in tar.entries().context("reading the image export")? {
        let mut entry = entry.context("reading the image export")?;
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
        let mut header = entry.header().clone();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            // Duplicate layers are links to the first copy: tiny, always kept.
            let link = entry.link_name()?.map(|l| l.into_owned()).unwrap_or_default();
            builder.append_link(&mut header, &path, link)?;
            continue;
        }
        if path == "manifest.json" {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf)?;
            builder.append_data(&mut header, &path, buf.as_slice())?;
            manifest = Some(buf);
            continue;
        }
        let layer = if kind.is_file() { layer_entry(&path) } else { None };
        let Some(layer) = layer else {
            builder.append_data(&mut header, &path, &mut entry)?;
            continue;
        };
        // Decide from the name when it says which layer this is.
        let decided: Option<bool> = match &layer {
            _ if skippable.is_empty() => Some(false),
            LayerEntry::Blob(digest) => Some(skippable.contains(digest)),
            LayerEntry::Legacy(dir) => plan.known_dirs.get(dir).map(|chain| skippable_chains.contains(chain)),
        };
        match decided {
            Some(true) => {
                report.layers_skipped += 1;
                // Unread data is skipped by the archive reader.
            }
            Some(false) => {
                let is_layer = match &layer {
                    LayerEntry::Legacy(_) => true,
                    LayerEntry::Blob(d) => plan.layers.contains(d),
                };
                if is_layer {
                    report.layers_sent += 1;
                }
                send_layer(&mut builder, &mut header, &path, &mut entry)?;
            }
            None => {
                let (mut spool, diff) = spool_hashed(&mut entry)?;
                if skippable.contains(&diff) {
                    report.layers_skipped += 1;
                } else {
                    report.layers_sent += 1;
                    send_layer(&mut builder, &mut header, &path, &mut spool)?;
                }
            }
        }
    }
    let out = builder.into_inner().context("finishing the filtered archive")?;
    let out = out.finish()?;
    // Learn which legacy directory holds which chain, for the next export.
    if let Some(m) = manifest {
        let entries: Vec<ManifestEntry> =
            serde_json::from_slice(&m).context("the image archive's manifest.json is not valid")?;
        if let [one] = entries.as_slice() {
            if one.layers.len() == plan.layers.len() {
                for (file, chain) in one.layers.iter().zip(chain_ids(&plan.layers)) {
                    if let Some(LayerEntry::Legacy(dir)) = layer_entry(file) {
                        report.learned.push((dir, chain));
                    }
                }
            }
        }
    } else {
        bail!("the image archive has no manifest.json");
    }
    report.input_bytes = read.load(Ordering::Relaxed);
    Ok((report, out))
}

/// Appends a layer entry, barely compressed when its first 1 MiB does not shrink.
fn send_layer<W: Write, R: Read>(
    builder: &mut tar::Builder<Compressor<W>>,
    header: &mut tar::Header,
    path: &str,
    data: &mut R,
) -> Result<()> {
    let mut sample = Vec::with_capacity(1 << 20);
    data.take(1 << 20).read_to_end(&mut sample)?;
    builder.get_mut().set_store(incompressible(&sample))?;
    builder.append_data(header, path, sample.as_slice().chain(data))?;
    builder.get_mut().set_store(false)?;
    Ok(())
}

// ---------------------------------------------------------------- producing the stream

/// The producer's error when the transport stopped reading.
pub const ABANDONED: &str = "the transfer was abandoned";

/// A chunked pipe between the thread producing the archive and the transport.
pub struct ChannelWriter(std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(Ok(buf.to_vec())).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, ABANDONED))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The receiving end: reads the chunks in order; an error the producer hit
/// becomes a read error (the load sees a broken stream, never a short archive
/// that happens to parse).
pub struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Buffers small writes into 256 KiB chunks for the channel.
fn chunked(w: ChannelWriter) -> std::io::BufWriter<ChannelWriter> {
    std::io::BufWriter::with_capacity(256 * 1024, w)
}

/// Where an image's archive comes from.
pub enum Source {
    /// This machine's Docker engine (`docker save` through its API).
    Engine(bollard::Docker),
    /// This machine's layer store read directly ([`layer_store`]): only the
    /// layers to send are read; `docker save` when that fails.
    LayerStore {
        /// The store.
        store: Arc<layer_store::LayerStore>,
        /// The engine, for the fallback export.
        docker: bollard::Docker,
        /// The image ID (the config's sha256).
        id: String,
    },
    /// An archive already on disk (Finch's `finch save`).
    File(std::fs::File),
}

/// An image archive being produced on a thread: read it from `reader`.
pub struct Outgoing {
    /// The filtered, compressed archive.
    pub reader: ChannelReader,
    /// Bytes of the export read so far.
    pub read: Arc<AtomicU64>,
    /// The producer's result.
    pub handle: std::thread::JoinHandle<Result<FilterReport>>,
}

/// Starts exporting `reference` from `source` on a thread, filtering with
/// `plan` and compressing with `codec`; the stream waits (bounded buffer)
/// until the transport reads it.
pub fn spawn_export(source: Source, reference: &str, plan: LayerPlan, codec: Codec, threads: u32) -> Outgoing {
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(32);
    let read = Arc::new(AtomicU64::new(0));
    let counter = read.clone();
    let reference = reference.to_string();
    let handle = std::thread::spawn(move || {
        let err_tx = tx.clone();
        let run = || -> Result<FilterReport> {
            let out = Compressor::new(codec, threads, chunked(ChannelWriter(tx)))?;
            let export = |docker: bollard::Docker, out| -> Result<(FilterReport, _)> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let input = EngineExport {
                    rt,
                    stream: Box::pin(docker.export_image(&reference)),
                    buf: bytes::Bytes::new(),
                    reference: reference.clone(),
                };
                filter_stream(input, out, &plan, counter.clone())
            };
            let (report, out) = match source {
                Source::Engine(docker) => export(docker, out)?,
                Source::LayerStore { store, docker, id } => match store.prepare(&id, &reference, &plan) {
                    Ok(image) => layer_store::write_archive(&image, out, counter.clone())?,
                    Err(e) => {
                        tracing::info!(
                            "{reference}: not read from the layer store ({e:#}); exporting it with docker save"
                        );
                        export(docker, out)?
                    }
                },
                Source::File(f) => {
                    filter_stream(std::io::BufReader::with_capacity(1 << 20, f), out, &plan, counter.clone())?
                }
            };
            out.into_inner().map_err(|e| e.into_error())?;
            Ok(report)
        };
        let result = run();
        if let Err(e) = &result {
            let _ = err_tx.send(Err(std::io::Error::other(format!("{e:#}"))));
        }
        result
    });
    Outgoing { reader: ChannelReader { rx, buf: Vec::new(), pos: 0 }, read, handle }
}

/// The local engine's export stream as a blocking reader.
struct EngineExport {
    rt: tokio::runtime::Runtime,
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, bollard::errors::Error>> + Send>>,
    buf: bytes::Bytes,
    reference: String,
}

impl Read for EngineExport {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "exporting {} from this machine's engine: {e}",
                        self.reference
                    )))
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

// ---------------------------------------------------------------- the learnt layer directories

/// Legacy layer directories → chain IDs learnt from earlier exports, kept in
/// the user's cache directory (`cultivate/layer-dirs.json`). Only a hint: a
/// wrong entry sends a layer the target has (harmless) or drops one it lacks
/// (the load fails and the full archive goes).
pub fn load_known_dirs() -> HashMap<String, String> {
    let Some(path) = known_dirs_path() else { return HashMap::new() };
    std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Adds `learned` and saves (at most 10 000 entries; the oldest file goes when full).
pub fn save_known_dirs(known: &mut HashMap<String, String>, learned: &[(String, String)]) {
    if learned.iter().all(|(d, c)| known.get(d) == Some(c)) {
        return;
    }
    if known.len() + learned.len() > 10_000 {
        known.clear();
    }
    known.extend(learned.iter().cloned());
    let Some(path) = known_dirs_path() else { return };
    let sorted: BTreeMap<&String, &String> = known.iter().collect();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Several deploys may write at once: each its own temporary file, renamed over.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    if serde_json::to_vec(&sorted).ok().and_then(|b| std::fs::write(&tmp, b).ok()).is_some() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

fn known_dirs_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("CULTIVATE_LAYER_CACHE") {
        return Some(p.into());
    }
    dirs::cache_dir().map(|d| d.join("cultivate").join("layer-dirs.json"))
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

/// Exports an image from this machine's engine into a temporary file (the
/// OCI conversion for Podman reads it twice).
pub async fn export_to_file(docker: &bollard::Docker, reference: &str) -> Result<std::fs::File> {
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

pub mod layer_store;

#[cfg(test)]
mod tests;
