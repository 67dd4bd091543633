use super::*;
use proptest::prelude::*;

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
}

/// A legacy-layout export (Docker ≤ 24): `<dir>/VERSION`, `<dir>/json`,
/// `<dir>/layer.tar` in sorted order, the config, then manifest.json last.
fn legacy(layers: &[(&str, &[u8])]) -> (Vec<u8>, Vec<String>) {
    let diffs: Vec<String> = layers.iter().map(|(_, d)| sha(d)).collect();
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "abc.json", serde_json::json!({"rootfs": {"diff_ids": diffs}}).to_string().as_bytes());
    let mut sorted: Vec<&(&str, &[u8])> = layers.iter().collect();
    sorted.sort_by_key(|l| l.0);
    for (dir, data) in sorted {
        add(&mut b, &format!("{dir}/VERSION"), b"1.0");
        add(&mut b, &format!("{dir}/json"), b"{}");
        add(&mut b, &format!("{dir}/layer.tar"), data);
    }
    let files: Vec<String> = layers.iter().map(|(d, _)| format!("{d}/layer.tar")).collect();
    let manifest = serde_json::json!([{"Config": "abc.json", "RepoTags": ["x:1"], "Layers": files}]);
    add(&mut b, "manifest.json", manifest.to_string().as_bytes());
    add(&mut b, "repositories", b"{}");
    (b.into_inner().unwrap(), diffs)
}

/// An OCI-layout export (Docker ≥ 25): blobs named by digest.
fn oci(layers: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
    let diffs: Vec<String> = layers.iter().map(|d| sha(d)).collect();
    let config = serde_json::json!({"rootfs": {"diff_ids": diffs}}).to_string();
    let config_digest = sha(config.as_bytes());
    let mut b = tar::Builder::new(Vec::new());
    let mut blobs: Vec<(String, Vec<u8>)> = layers.iter().map(|d| (sha(d), d.to_vec())).collect();
    blobs.push((config_digest.clone(), config.into_bytes()));
    blobs.sort();
    for (digest, data) in &blobs {
        add(&mut b, &format!("blobs/sha256/{}", &digest[7..]), data);
    }
    add(&mut b, "index.json", b"{}");
    let files: Vec<String> = diffs.iter().map(|d| format!("blobs/sha256/{}", &d[7..])).collect();
    let manifest = serde_json::json!([{"Config": format!("blobs/sha256/{}", &config_digest[7..]), "Layers": files}]);
    add(&mut b, "manifest.json", manifest.to_string().as_bytes());
    add(&mut b, "oci-layout", b"{}");
    (b.into_inner().unwrap(), diffs)
}

fn run(archive: &[u8], plan: &LayerPlan, codec: Codec) -> (FilterReport, Vec<u8>) {
    let out = Compressor::new(codec, 2, Vec::new()).unwrap();
    filter_stream(archive, out, plan, Arc::new(AtomicU64::new(0))).unwrap()
}

fn decompress(codec: Codec, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match codec {
        Codec::None => out = data.to_vec(),
        Codec::Zstd(_) => {
            zstd::stream::read::Decoder::new(data).unwrap().read_to_end(&mut out).unwrap();
        }
        Codec::Gzip(_) => {
            flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).unwrap();
        }
    }
    out
}

fn entries(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    tar::Archive::new(tar_bytes)
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn names(tar_bytes: &[u8]) -> Vec<String> {
    entries(tar_bytes).into_iter().map(|e| e.0).collect()
}

#[test]
fn chain_ids_are_dockers() {
    // Docker's layerdb directory for this image's top chain (checked on 20.10).
    let layers: Vec<String> = [
        "sha256:20ea9a7df77ed0467d9e40f63292b8a3a53a8b8923a98b5039650e37fe65aa70",
        "sha256:28f64dee8459bb820042dcbf9d948dc2697e4f83fbc7f1670b210f2803276398",
        "sha256:c6b38c00abc5243605acc6cfc24c387c02b8a22cf650866438c959464ca2dc64",
        "sha256:6871f68e53ccc498f06ea22a1fd6361fcc0fe7b97df6820111ddad33af87b554",
        "sha256:ad93b4187624a22b097293a34c1d8e227c5c084bdddc3cc56c4e975c1b81feae",
        "sha256:0ac6a6dc1b9bfbb71965f77ee8605e00471fa02689f8078a9527ac393fc995c4",
    ]
    .map(String::from)
    .to_vec();
    let ids = chain_ids(&layers);
    assert_eq!(ids[0], layers[0]);
    assert_eq!(ids[5], "sha256:350c2a3d11328cdb444597d250f0dfd45e87f15bc06d66abc55cdb8a8d696b19");
}

#[test]
fn legacy_layers_the_target_has_are_dropped_by_their_hash() {
    let (a, diffs) = legacy(&[("d1", b"base"), ("d0", b"mid"), ("d2", b"top")]);
    // The target has an image base|mid|other: the first two layers are there, not the third.
    let target = chain_ids(&[diffs[0].clone(), diffs[1].clone(), sha(b"other")]).into_iter().collect();
    let plan = LayerPlan { layers: diffs.clone(), target_chains: target, known_dirs: HashMap::new() };
    let (report, out) = run(&a, &plan, Codec::None);
    assert_eq!((report.layers_skipped, report.layers_sent), (2, 1));
    assert_eq!(
        names(&out),
        [
            "abc.json",
            "d0/VERSION",
            "d0/json",
            "d1/VERSION",
            "d1/json",
            "d2/VERSION",
            "d2/json",
            "d2/layer.tar",
            "manifest.json",
            "repositories"
        ]
    );
    // What was learnt names each directory's chain.
    let chains = chain_ids(&diffs);
    let learned: HashMap<String, String> = report.learned.into_iter().collect();
    assert_eq!(learned["d1"], chains[0]);
    assert_eq!(learned["d0"], chains[1]);
    assert_eq!(learned["d2"], chains[2]);
}

#[test]
fn known_legacy_directories_are_decided_by_name() {
    let (a, diffs) = legacy(&[("d1", b"base"), ("d0", b"mid"), ("d2", b"top")]);
    let chains = chain_ids(&diffs);
    let target: HashSet<String> = chains[..2].iter().cloned().collect();
    // A wrong hint is followed (the name is trusted; a failing load falls back):
    // it proves the content was not hashed.
    let known = HashMap::from([("d1".to_string(), chains[0].clone()), ("d2".to_string(), chains[1].clone())]);
    let plan = LayerPlan { layers: diffs, target_chains: target, known_dirs: known };
    let (report, out) = run(&a, &plan, Codec::None);
    let layer_files: Vec<String> = names(&out).into_iter().filter(|n| n.ends_with("layer.tar")).collect();
    // d1 and d2 dropped by name; d0 (unknown) hashed and dropped.
    assert!(layer_files.is_empty(), "{layer_files:?}");
    assert_eq!(report.layers_skipped, 3);
}

#[test]
fn same_layer_on_another_parent_is_not_skipped() {
    let (a, diffs) = legacy(&[("d1", b"base"), ("d2", b"mid")]);
    let target = chain_ids(&[sha(b"z"), diffs[1].clone()]).into_iter().collect();
    let plan = LayerPlan { layers: diffs, target_chains: target, known_dirs: HashMap::new() };
    let (report, _) = run(&a, &plan, Codec::None);
    assert_eq!(report.layers_skipped, 0);
}

#[test]
fn a_layer_repeated_in_the_image_goes_unless_every_position_is_on_the_target() {
    // Layers x, y, x: the target has x and x|y but not x|y|x.
    let (a, diffs) = legacy(&[("d1", b"x"), ("d2", b"y"), ("d3", b"x")]);
    let chains = chain_ids(&diffs);
    let plan =
        LayerPlan { layers: diffs, target_chains: chains[..2].iter().cloned().collect(), known_dirs: HashMap::new() };
    let (_, out) = run(&a, &plan, Codec::None);
    let layer_files: Vec<String> = names(&out).into_iter().filter(|n| n.ends_with("layer.tar")).collect();
    assert_eq!(layer_files, ["d1/layer.tar", "d3/layer.tar"]);
}

#[test]
fn oci_blobs_the_target_has_are_dropped_by_digest() {
    let (a, diffs) = oci(&[b"base", b"mid", b"top"]);
    let target = chain_ids(&diffs[..2]).into_iter().collect();
    let plan = LayerPlan { layers: diffs.clone(), target_chains: target, known_dirs: HashMap::new() };
    let (report, out) = run(&a, &plan, Codec::None);
    assert_eq!((report.layers_skipped, report.layers_sent), (2, 1));
    let kept = names(&out);
    assert!(kept.contains(&format!("blobs/sha256/{}", &diffs[2][7..])));
    assert!(!kept.contains(&format!("blobs/sha256/{}", &diffs[0][7..])));
    assert!(kept.contains(&"manifest.json".to_string()) && kept.contains(&"index.json".to_string()));
    assert_eq!(kept.len(), 5, "{kept:?}"); // top layer, config, index.json, manifest.json, oci-layout
    assert!(report.learned.is_empty());
}

#[test]
fn an_export_without_manifest_is_an_error() {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "d1/layer.tar", b"x");
    let a = b.into_inner().unwrap();
    let out = Compressor::new(Codec::None, 1, Vec::new()).unwrap();
    let err = filter_stream(a.as_slice(), out, &LayerPlan::everything(&[sha(b"x")]), Arc::default()).unwrap_err();
    assert!(format!("{err:#}").contains("no manifest.json"), "{err:#}");
}

#[test]
fn compressed_streams_decode_to_the_filtered_archive() {
    // A compressible layer and one that does not shrink (sent barely compressed, its own frame).
    let text = "the quick brown fox jumps over the lazy dog\n".repeat(50_000);
    let mut noise = vec![0u8; 300_000];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let (a, diffs) = legacy(&[("d1", text.as_bytes()), ("d2", &noise)]);
    let (_, plain) = run(&a, &LayerPlan::everything(&diffs), Codec::None);
    for codec in [Codec::Zstd(3), Codec::Gzip(6)] {
        let (_, packed) = run(&a, &LayerPlan::everything(&diffs), codec);
        assert_eq!(decompress(codec, &packed), plain, "{codec:?}");
        assert!(packed.len() < plain.len() / 3, "{codec:?}: {} of {}", packed.len(), plain.len());
    }
    assert!(incompressible(&noise));
    assert!(!incompressible(text.as_bytes()));
}

#[test]
fn codec_follows_the_engine() {
    use crate::settings::{Compression, TransferSettings};
    let on = TransferSettings { compression: Compression::Zstd, level: 5 };
    // A plugin that does not report `load_compression`: the engine's version decides.
    assert_eq!(codec_for(&on, "docker", Some("26.1.5+dfsg1"), None), Codec::Zstd(5));
    assert_eq!(codec_for(&on, "docker", Some("20.10.24+dfsg1"), None), Codec::Gzip(5));
    assert_eq!(codec_for(&on, "docker", None, None), Codec::Gzip(5));
    assert_eq!(codec_for(&on, "finch", Some("1.4.0"), None), Codec::None);
    let off = TransferSettings { compression: Compression::None, level: 3 };
    assert_eq!(codec_for(&off, "docker", Some("26.1.5"), None), Codec::None);
    assert_eq!(codec_for(&off, "docker", Some("20.10.24"), Some(true)), Codec::None);
}

#[test]
fn codec_follows_the_probes_load_compression() {
    use crate::settings::{Compression, TransferSettings};
    let on = TransferSettings { compression: Compression::Zstd, level: 12 };
    // Docker 20.10 with zstd on the target: zstd, piped through it.
    assert_eq!(codec_for(&on, "docker", Some("20.10.24+dfsg1"), Some(true)), Codec::Zstd(12));
    // Docker 20.10 without zstd: gzip, its level capped at 9.
    assert_eq!(codec_for(&on, "docker", Some("20.10.24+dfsg1"), Some(false)), Codec::Gzip(9));
    // The detail wins over the version both ways.
    assert_eq!(codec_for(&on, "docker", Some("26.1.5"), Some(true)), Codec::Zstd(12));
    assert_eq!(codec_for(&on, "docker", Some("26.1.5"), Some(false)), Codec::Gzip(9));
    // Only Docker's load command is known to take compressed archives.
    assert_eq!(codec_for(&on, "finch", Some("1.4.0"), Some(true)), Codec::None);
}

#[test]
fn the_load_command_is_told_the_codec() {
    assert_eq!(load_request(Codec::None, None).compression, None);
    assert_eq!(load_request(Codec::Zstd(3), None).compression.as_deref(), Some("zstd"));
    assert_eq!(load_request(Codec::Gzip(6), Some("a:1")).compression.as_deref(), Some("gzip"));
}

#[test]
fn the_channel_carries_the_stream_and_the_producers_error() {
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    let mut r = ChannelReader { rx, buf: Vec::new(), pos: 0 };
    let t = std::thread::spawn(move || {
        let mut w = ChannelWriter(tx.clone());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        tx.send(Err(std::io::Error::other("export broke"))).unwrap();
    });
    let mut got = vec![0u8; 11];
    r.read_exact(&mut got).unwrap();
    assert_eq!(got, b"hello world");
    let err = r.read(&mut [0u8; 4]).unwrap_err();
    assert!(err.to_string().contains("export broke"));
    t.join().unwrap();
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
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// For any image and any set of chains on the target, the filtered stream
    /// holds exactly the layers whose chain the target lacks, byte for byte,
    /// every other entry, in the export's order; with or without compression,
    /// legacy or OCI layout.
    #[test]
    fn filtered_streams_hold_exactly_what_the_target_lacks(
        sizes in proptest::collection::vec(0usize..5000, 1..6),
        have in proptest::collection::vec(any::<bool>(), 6),
        codec in prop_oneof![Just(Codec::None), Just(Codec::Zstd(1)), Just(Codec::Gzip(1))],
        layout_oci in any::<bool>(),
    ) {
        let datas: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| vec![i as u8 + 1; *n]).collect();
        let dirs: Vec<String> = (0..sizes.len()).map(|i| format!("{:02x}", (i * 37) % 256)).collect();
        let (archive, diffs) = if layout_oci {
            oci(&datas.iter().map(Vec::as_slice).collect::<Vec<_>>())
        } else {
            legacy(&dirs.iter().map(String::as_str).zip(datas.iter().map(Vec::as_slice)).collect::<Vec<_>>())
        };
        let chains = chain_ids(&diffs);
        // The target has a prefix-closed set of chains (as a real store does).
        let n_have = have.iter().take_while(|h| **h).count().min(diffs.len());
        let plan = LayerPlan {
            layers: diffs.clone(),
            target_chains: chains[..n_have].iter().cloned().collect(),
            known_dirs: HashMap::new(),
        };
        let (report, packed) = run(&archive, &plan, codec);
        let out = entries(&decompress(codec, &packed));
        let all = entries(&archive);
        let layer_of = |name: &str| -> Option<usize> {
            if layout_oci {
                diffs.iter().position(|d| name == format!("blobs/sha256/{}", &d[7..]))
            } else {
                dirs.iter().position(|d| name == format!("{d}/layer.tar"))
            }
        };
        let want: Vec<&(String, Vec<u8>)> = all.iter().filter(|(name, _)| match layer_of(name) {
            Some(i) => !plan.skippable_diffs().contains(&diffs[i]),
            None => true,
        }).collect();
        prop_assert_eq!(out.iter().collect::<Vec<_>>(), want);
        prop_assert_eq!(report.layers_skipped + report.layers_sent >= 1, true);
    }
}
