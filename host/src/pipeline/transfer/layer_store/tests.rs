use super::super::{filter_stream, Codec, LayerPlan};
use super::*;
use proptest::prelude::*;
use std::io::Read;

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A file of a fake layer.
#[derive(Debug, Clone)]
enum F {
    Dir(String),
    File(String, Vec<u8>),
    Symlink(String, String),
    /// A hard link to an earlier file.
    Hard(String, String),
    /// A whiteout (`.wh.<name>`, empty) or an opaque marker (`.wh..wh..opq`).
    Whiteout(String),
}

/// A layer tar as Docker writes it (GNU headers, names without `./`).
fn layer_tar(files: &[F]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match f {
            F::Dir(name) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{name}/"), std::io::empty()).unwrap();
            }
            F::File(name, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, data.as_slice()).unwrap();
            }
            F::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            F::Hard(name, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            F::Whiteout(name) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o000);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The tar-split JSON lines of a tar, as tar-split's disassembler writes
/// them: raw bytes up to each payload as a segment (`type` 2, base64), then
/// the file entry (`type` 1, `size` omitted when 0, `payload` a checksum or
/// null), the trailing padding and end blocks as a last segment.
fn tar_split_of(tar_bytes: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines = Vec::new();
    let mut pos = 0;
    let mut push = |v: serde_json::Value| {
        lines.push(v);
        pos += 1;
    };
    let mut cursor = 0usize;
    let mut archive = tar::Archive::new(tar_bytes);
    let mut position = 0;
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let start = e.raw_file_position() as usize;
        push(serde_json::json!({"type": 2, "payload": b64.encode(&tar_bytes[cursor..start]), "position": position}));
        position += 1;
        let size = e.size();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let mut entry = serde_json::json!({"type": 1, "name": name, "payload": null, "position": position});
        if size > 0 {
            entry["size"] = size.into();
            entry["payload"] = b64.encode(b"crc64sum").into();
        }
        push(entry);
        position += 1;
        cursor = start + size as usize;
    }
    push(serde_json::json!({"type": 2, "payload": b64.encode(&tar_bytes[cursor..]), "position": position}));
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The diff directory of a layer: the files with content, as the driver keeps them.
fn diff_dir(dir: &Path, files: &[F]) {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        match f {
            F::Dir(name) => std::fs::create_dir_all(dir.join(name)).unwrap(),
            F::File(name, data) => {
                let p = dir.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, data).unwrap();
            }
            F::Symlink(name, target) => {
                let p = dir.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let _ = std::os::unix::fs::symlink(target, p);
            }
            // Links and whiteouts carry no payload: nothing is read for them.
            F::Hard(..) | F::Whiteout(_) => {}
        }
    }
}

fn assemble(dir: &Path, split: &[u8]) -> Vec<u8> {
    let segments = parse_tar_split(split).unwrap();
    let mut out = Vec::new();
    Assembler::new(dir, &segments).read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, tar_size(&segments));
    out
}

fn sample_files() -> Vec<F> {
    vec![
        F::Dir("app".into()),
        F::File("app/server.js".into(), b"console.log('hi')\n".to_vec()),
        F::File("app/big.bin".into(), (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()),
        F::File("app/empty".into(), Vec::new()),
        F::Symlink("app/link".into(), "server.js".into()),
        F::Hard("app/hard".into(), "app/server.js".into()),
        F::Whiteout("etc/.wh.motd".into()),
        F::Dir("usr/share/doc".into()),
        F::Whiteout("usr/share/doc/.wh..wh..opq".into()),
        F::File(format!("deep/{}/file.txt", "d".repeat(120)), b"a long name".to_vec()),
    ]
}

#[test]
fn tar_split_reassembles_the_layer_tar_byte_for_byte() {
    let files = sample_files();
    let tar_bytes = layer_tar(&files);
    let dir = tempfile::tempdir().unwrap();
    diff_dir(dir.path(), &files);
    let out = assemble(dir.path(), &tar_split_of(&tar_bytes));
    assert_eq!(sha(&out), sha(&tar_bytes));
    assert!(out == tar_bytes);
}

#[test]
fn an_empty_layer_is_its_end_blocks() {
    let tar_bytes = layer_tar(&[]);
    assert_eq!(tar_bytes.len(), 1024);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(assemble(dir.path(), &tar_split_of(&tar_bytes)), tar_bytes);
}

#[test]
fn tar_split_lines_as_docker_writes_them_parse() {
    // Lines copied in form from a real tar-split.json.gz (payloads shortened).
    let split = concat!(
        r#"{"type":2,"payload":"AAEC","position":0}"#,
        "\n",
        r#"{"type":1,"name":"./","payload":null,"position":1}"#,
        "\n",
        r#"{"type":2,"payload":"AwQ=","position":2}"#,
        "\n",
        r#"{"type":1,"name":"etc/hosts","size":12,"payload":"3q2+7wAAAAA=","position":3}"#,
        "\n",
        r#"{"type":1,"name_raw":"/2E=","size":1,"payload":"AAAAAAAAAAA=","position":4}"#,
        "\n",
        r#"{"type":2,"payload":null,"position":5}"#,
        "\n"
    );
    let segs = parse_tar_split(split.as_bytes()).unwrap();
    use std::os::unix::ffi::OsStrExt;
    assert_eq!(
        segs,
        vec![
            Segment::Raw(vec![0, 1, 2, 3, 4]),
            Segment::File { name: "etc/hosts".into(), size: 12 },
            Segment::File { name: PathBuf::from(OsStr::from_bytes(&[0xff, b'a'])), size: 1 },
        ]
    );
}

#[test]
fn bad_tar_split_lines_are_errors_naming_the_line() {
    for (line, says) in [
        (r#"{"type":3,"position":0}"#, "unknown entry type 3"),
        (r#"{"type":2,"payload":"!!","position":0}"#, "not base64"),
        (r#"{"type":1,"name":"../etc/passwd","size":3,"position":0}"#, "leaves the layer directory"),
        (r#"{"type":1,"size":3,"position":0}"#, "without a name"),
        (r#"{"type":1,"name":"a","size":-1,"position":0}"#, "size -1"),
        ("not json", "line 1"),
    ] {
        let e = format!("{:#}", parse_tar_split(line.as_bytes()).unwrap_err());
        assert!(e.contains(says), "{line}: {e}");
    }
}

#[test]
fn a_file_shorter_than_its_entry_fails_the_read() {
    let files = vec![F::File("a".into(), vec![1; 5000])];
    let tar_bytes = layer_tar(&files);
    let dir = tempfile::tempdir().unwrap();
    diff_dir(dir.path(), &files);
    std::fs::write(dir.path().join("a"), [1; 100]).unwrap();
    let segments = parse_tar_split(tar_split_of(&tar_bytes).as_slice()).unwrap();
    let e = Assembler::new(dir.path(), &segments).read_to_end(&mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("4900 bytes shorter"), "{e}");
}

// ---------------------------------------------------------------- a fake store

struct FakeStore {
    dir: tempfile::TempDir,
    store: LayerStore,
    id: String,
    diffs: Vec<String>,
    tars: Vec<Vec<u8>>,
}

impl FakeStore {
    fn layer_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("overlay2").join(format!("cache{i}")).join("diff")
    }
}

/// A Docker root with one image of these layers, laid out as overlay2 keeps it.
fn fake_store(layers: &[Vec<F>]) -> FakeStore {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tars: Vec<Vec<u8>> = layers.iter().map(|l| layer_tar(l)).collect();
    let diffs: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config =
        serde_json::json!({"architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": diffs}}).to_string();
    let id = sha(config.as_bytes());
    let imagedb = root.join("image/overlay2/imagedb/content/sha256");
    std::fs::create_dir_all(&imagedb).unwrap();
    std::fs::write(imagedb.join(id.trim_start_matches("sha256:")), &config).unwrap();
    for (i, ((files, tar_bytes), chain)) in layers.iter().zip(&tars).zip(chain_ids(&diffs)).enumerate() {
        let db = root.join("image/overlay2/layerdb/sha256").join(chain.trim_start_matches("sha256:"));
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("diff"), &diffs[i]).unwrap();
        std::fs::write(db.join("cache-id"), format!("cache{i}")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_split_of(tar_bytes)).unwrap();
        std::fs::write(db.join("tar-split.json.gz"), gz.finish().unwrap()).unwrap();
        diff_dir(&root.join("overlay2").join(format!("cache{i}")).join("diff"), files);
    }
    let store = LayerStore::from_info(Some("overlay2"), root.to_str(), &[]).unwrap();
    FakeStore { dir, store, id, diffs, tars }
}

fn three_layers() -> Vec<Vec<F>> {
    vec![
        sample_files(),
        vec![F::Dir("app".into()), F::File("app/package.json".into(), b"{}".to_vec())],
        vec![F::File("app/server.js".into(), b"console.log('changed')\n".to_vec()), F::Whiteout("app/.wh.link".into())],
    ]
}

fn write(image: &Prepared, codec: Codec) -> (FilterReport, Vec<u8>, u64) {
    let read = Arc::new(AtomicU64::new(0));
    let (report, out) = write_archive(image, Compressor::new(codec, 2, Vec::new()).unwrap(), read.clone()).unwrap();
    (report, out, read.load(Ordering::Relaxed))
}

fn archive_entries(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_dir() {
            continue;
        }
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((name, data));
    }
    out
}

#[test]
fn the_archive_holds_the_config_the_layers_to_send_and_a_manifest_of_all() {
    let s = fake_store(&three_layers());
    let chains = chain_ids(&s.diffs);
    let plan = LayerPlan {
        layers: s.diffs.clone(),
        target_chains: chains[..2].iter().cloned().collect(),
        known_dirs: Default::default(),
    };
    // The layers the target has are never read.
    std::fs::remove_dir_all(s.layer_dir(0)).unwrap();
    std::fs::remove_dir_all(s.layer_dir(1)).unwrap();
    let image = s.store.prepare(&s.id, "shop-backend:v2", &plan).unwrap();
    let (report, out, read) = write(&image, Codec::None);
    assert_eq!((report.layers_sent, report.layers_skipped), (1, 2));
    let entries = archive_entries(&out);
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let layer2 = format!("{}/layer.tar", hex(&s.diffs[2]));
    assert_eq!(names, vec![format!("{}.json", hex(&s.id)).as_str(), layer2.as_str(), "manifest.json"]);
    assert_eq!(sha(&entries[0].1), s.id, "the config byte for byte");
    assert_eq!(entries[1].1, s.tars[2]);
    let manifest: serde_json::Value = serde_json::from_slice(&entries[2].1).unwrap();
    let layers: Vec<String> = s.diffs.iter().map(|d| format!("{}/layer.tar", hex(d))).collect();
    assert_eq!(
        manifest,
        serde_json::json!([{"Config": format!("{}.json", hex(&s.id)), "RepoTags": ["shop-backend:v2"], "Layers": layers}])
    );
    // The full archive's size is reported: every layer's tar counts.
    let tars: u64 = s.tars.iter().map(|t| t.len() as u64).sum();
    assert!(read >= tars && read < tars + 4096, "read {read}, layers {tars}");
    assert_eq!(report.input_bytes, read);
}

#[test]
fn the_archive_reads_like_an_export_and_compresses() {
    let s = fake_store(&three_layers());
    let image = s.store.prepare(&s.id, "x:1", &LayerPlan::everything(&s.diffs)).unwrap();
    let (plain_report, plain, _) = write(&image, Codec::None);
    assert_eq!((plain_report.layers_sent, plain_report.layers_skipped), (3, 0));
    let (_, zstd, _) = write(&image, Codec::Zstd(3));
    let decoded = zstd::stream::decode_all(zstd.as_slice()).unwrap();
    assert_eq!(decoded, plain);
    // The export filter (the one reader of the format) finds every layer by its hash.
    let chains: HashSet<String> = chain_ids(&s.diffs)[..1].iter().cloned().collect();
    let plan = LayerPlan { layers: s.diffs.clone(), target_chains: chains, known_dirs: Default::default() };
    let (report, _) = filter_stream(
        plain.as_slice(),
        Compressor::new(Codec::None, 1, Vec::new()).unwrap(),
        &plan,
        Arc::new(AtomicU64::new(0)),
    )
    .unwrap();
    assert_eq!((report.layers_sent, report.layers_skipped), (2, 1));
    assert_eq!(report.learned.len(), 3);
}

#[test]
fn a_layer_whose_files_differ_is_refused_before_anything_is_written() {
    let s = fake_store(&three_layers());
    // Same size, other bytes: only the hash can tell.
    std::fs::write(s.layer_dir(2).join("app/server.js"), b"console.log('CHANGED')\n").unwrap();
    let e = format!("{:#}", s.store.prepare(&s.id, "x:1", &LayerPlan::everything(&s.diffs)).unwrap_err());
    assert!(e.contains(&format!("layer {} reassembled", s.diffs[2])) && e.contains("hashes to"), "{e}");
    // A missing file.
    std::fs::remove_file(s.layer_dir(1).join("app/package.json")).unwrap();
    let e = format!("{:#}", s.store.prepare(&s.id, "x:1", &LayerPlan::everything(&s.diffs)).unwrap_err());
    assert!(e.contains("package.json"), "{e}");
}

#[test]
fn a_config_or_layer_record_that_does_not_match_is_refused() {
    let s = fake_store(&three_layers());
    let plan = LayerPlan::everything(&s.diffs);
    let imagedb = s.dir.path().join("image/overlay2/imagedb/content/sha256");
    // Another image's ID.
    let other = sha(b"other");
    let e = format!("{:#}", s.store.prepare(&other, "x:1", &plan).unwrap_err());
    assert!(e.contains("reading"), "{e}");
    // The plan's layers are not the config's.
    let e = format!("{:#}", s.store.prepare(&s.id, "x:1", &LayerPlan::everything(&s.diffs[..2])).unwrap_err());
    assert!(e.contains("other layers"), "{e}");
    // A layerdb record naming another diff.
    let chain = chain_ids(&s.diffs)[1].clone();
    let db = s.dir.path().join("image/overlay2/layerdb/sha256").join(chain.trim_start_matches("sha256:"));
    std::fs::write(db.join("diff"), &s.diffs[0]).unwrap();
    let e = format!("{:#}", s.store.prepare(&s.id, "x:1", &plan).unwrap_err());
    assert!(e.contains("says diff"), "{e}");
    std::fs::write(db.join("diff"), &s.diffs[1]).unwrap();
    std::fs::write(db.join("cache-id"), "../../etc").unwrap();
    let e = format!("{:#}", s.store.prepare(&s.id, "x:1", &plan).unwrap_err());
    assert!(e.contains("cache-id"), "{e}");
    // A config that does not hash to its ID.
    std::fs::write(imagedb.join(s.id.trim_start_matches("sha256:")), b"{\"rootfs\":{\"diff_ids\":[]}}").unwrap();
    let e = format!("{:#}", s.store.prepare(&s.id, "x:1", &plan).unwrap_err());
    assert!(e.contains("hashes to"), "{e}");
    assert!(s.store.prepare("latest", "x:1", &plan).is_err());
}

#[test]
fn only_a_readable_classic_overlay_store_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    std::fs::create_dir_all(dir.path().join("image/overlay2/imagedb/content/sha256")).unwrap();
    std::fs::create_dir_all(dir.path().join("image/fuse-overlayfs/imagedb/content/sha256")).unwrap();
    assert!(LayerStore::from_info(Some("overlay2"), Some(root), &[vec!["Backing Filesystem".into(), "extfs".into()]])
        .is_ok());
    assert!(LayerStore::from_info(Some("fuse-overlayfs"), Some(root), &[]).is_ok());
    let err = |driver: Option<&str>, root: Option<&str>, status: &[Vec<String>]| {
        LayerStore::from_info(driver, root, status).unwrap_err()
    };
    assert!(err(Some("vfs"), Some(root), &[]).contains("\"vfs\""));
    assert!(err(None, Some(root), &[]).contains("storage driver"));
    // Docker ≥ 24 with the containerd image store.
    let containerd = [vec!["driver-type".to_string(), "io.containerd.snapshotter.v1".to_string()]];
    assert!(err(Some("overlay2"), Some(root), &containerd).contains("containerd image store"));
    assert!(err(Some("overlay2"), Some("var/lib/docker"), &[]).contains("DockerRootDir"));
    assert!(err(Some("overlay2"), None, &[]).contains("DockerRootDir"));
    // Not readable (or elsewhere: a remote engine).
    let missing = dir.path().join("missing");
    assert!(err(Some("overlay2"), missing.to_str(), &[]).contains("cannot read"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any set of files, links and whiteouts reassembles to its tar, and a
    /// fake store's archive carries exactly the layers the target lacks.
    #[test]
    fn random_layers_reassemble_to_their_tars(
        files in proptest::collection::vec(
            (0u8..5, "[a-c]{1,3}(/[a-c]{1,3}){0,2}", proptest::collection::vec(any::<u8>(), 0..3000)),
            0..12,
        ),
        split in 0usize..13,
        has in 0usize..3,
    ) {
        let mut seen = HashSet::new();
        let mut not_dirs: HashSet<String> = HashSet::new();
        let mut fs: Vec<F> = Vec::new();
        let mut regular: Vec<String> = Vec::new();
        for (kind, name, data) in files {
            // One entry per path, and none under a path that is not a directory.
            if !seen.insert(name.clone()) || not_dirs.iter().any(|p| name.starts_with(&format!("{p}/"))) {
                continue;
            }
            if kind != 0 {
                not_dirs.insert(name.clone());
            }
            fs.push(match kind {
                0 => F::Dir(name),
                1 => F::Symlink(name, "elsewhere".into()),
                2 => match regular.first() {
                    Some(t) => F::Hard(name, t.clone()),
                    None => F::Whiteout(format!("{name}.wh")),
                },
                3 => F::Whiteout(format!(".wh.{name}")),
                _ => {
                    regular.push(name.clone());
                    F::File(name, data)
                }
            });
        }
        // Paths become directories only when no file took them already.
        fs.retain(|f| match f {
            F::File(n, _) | F::Symlink(n, _) | F::Hard(n, _) | F::Whiteout(n) => {
                !seen.iter().any(|p| p.starts_with(&format!("{n}/")))
            }
            F::Dir(_) => true,
        });
        let tar_bytes = layer_tar(&fs);
        let dir = tempfile::tempdir().unwrap();
        diff_dir(dir.path(), &fs);
        let out = assemble(dir.path(), &tar_split_of(&tar_bytes));
        prop_assert_eq!(sha(&out), sha(&tar_bytes));

        let cut = split.min(fs.len());
        let s = fake_store(&[fs[..cut].to_vec(), fs[cut..].to_vec(), vec![F::File("z".into(), vec![7; 10])]]);
        let chains = chain_ids(&s.diffs);
        let plan = LayerPlan {
            layers: s.diffs.clone(),
            target_chains: chains[..has].iter().cloned().collect(),
            known_dirs: Default::default(),
        };
        let image = s.store.prepare(&s.id, "x:1", &plan).unwrap();
        let (report, archive, _) = write(&image, Codec::None);
        let skippable = plan.skippable_diffs();
        prop_assert_eq!(report.layers_skipped, s.diffs.iter().filter(|d| skippable.contains(*d)).count());
        for (name, data) in archive_entries(&archive) {
            if let Some(dir) = name.strip_suffix("/layer.tar") {
                prop_assert_eq!(format!("sha256:{dir}"), sha(&data));
                prop_assert!(!plan.skippable_diffs().contains(&sha(&data)));
            }
        }
    }
}

// ---------------------------------------------------------------- this machine's engine

/// Every layer of this machine's images, and of one built here with links,
/// whiteouts, an opaque directory and an empty layer, reassembles from the
/// layer store to its diff ID. Runs as root with a local engine (skipped
/// otherwise; under CI a missing engine or store fails).
#[test]
fn this_machines_images_reassemble_to_their_diff_ids() {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        assert!(!ci, "CI is set and {why}");
        eprintln!("skipped: {why}");
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return eprintln!("skipped: not root (the layer store is root's)");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let docker = match rt.block_on(crate::pipeline::build::local_engine()) {
        Ok(d) => d,
        Err(e) => return skip(&format!("no local engine: {e:#}")),
    };
    let Some(store) = rt.block_on(LayerStore::detect(&docker)) else {
        return skip("the engine's layer store cannot be read (see the debug log)");
    };
    let docker_cli = |args: &[&str], stdin: Option<&str>| {
        let mut c = std::process::Command::new("docker");
        c.args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        let mut child = c.spawn().expect("docker");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "docker {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let images = docker_cli(&["images", "--format", "{{.Repository}}:{{.Tag}}"], None);
    let usable = |l: &&str| !l.contains("<none>") && !l.starts_with("cultivate-layerstore-test");
    let base = ["cultivate/debian:bookworm", "debian:bookworm-slim"]
        .into_iter()
        .find(|b| images.lines().any(|l| l == *b))
        .or_else(|| images.lines().find(usable));
    let Some(base) = base else { return skip("the engine has no image to build on") };
    let tag = format!("cultivate-layerstore-test:{}", std::process::id());
    let dockerfile = format!(
        "FROM {base}\n\
         USER root\n\
         RUN mkdir -p /t/d/e && echo hi > /t/a && ln /t/a /t/hard && ln -s a /t/sym && touch /t/empty \
             && head -c 300000 /dev/urandom > /t/big && rm -rf /etc/motd /usr/share/doc\n\
         RUN rm -rf /t/d && mkdir /t/d && echo x > /t/d/new && rm /t/sym\n\
         RUN true\n\
         ENV NOTHING=here\n"
    );
    docker_cli(&["build", "-q", "-t", &tag, "-"], Some(&dockerfile));
    let mut refs: Vec<String> = vec![tag.clone()];
    // And a few other images (each distinct; reading every image would take long).
    refs.extend(images.lines().filter(usable).take(3).map(String::from));
    let mut checked = 0;
    for r in &refs {
        let inspect = rt.block_on(docker.inspect_image(r)).unwrap();
        let id = inspect.id.unwrap();
        let layers = inspect.root_fs.and_then(|f| f.layers).unwrap_or_default();
        let image = store.prepare(&id, r, &LayerPlan::everything(&layers)).unwrap_or_else(|e| panic!("{r}: {e:#}"));
        let (report, archive, _) = write(&image, Codec::None);
        assert_eq!(report.layers_sent, layers.len());
        let mut seen = 0;
        for (name, data) in archive_entries(&archive) {
            if let Some(dir) = name.strip_suffix("/layer.tar") {
                assert_eq!(format!("sha256:{dir}"), sha(&data), "{r}");
                assert!(layers.contains(&sha(&data)), "{r}");
                seen += 1;
            }
        }
        assert_eq!(seen, layers.iter().collect::<HashSet<_>>().len(), "{r}");
        checked += layers.len();
    }
    let _ = docker_cli(&["rmi", &tag], None);
    eprintln!("{checked} layers of {} images reassembled to their diff IDs", refs.len());
    assert!(checked > 0);
}
