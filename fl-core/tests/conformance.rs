//! Our UnixFS CIDs against those of real IPFS implementations (Kubo 0.22, the js importer
//! Helia uses), from ../shared/conformance/unixfs_cids.json and
//! tests/vectors/balanced_layout.json (made by tests/vectors/make_balanced_layout.mjs).

use std::path::PathBuf;

use fl_core::content::unixfs::{self, ImportOptions};
use fl_core::content::{Blockstore, MemBlockstore};

fn shared(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(path)
}

/// The generated files' content: byte i is (i*31 + 7) % 251.
fn formula(size: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

fn content(entry: &serde_json::Value) -> Vec<u8> {
    let size = entry["size"].as_u64().unwrap() as usize;
    if let Some(text) = entry["content_utf8"].as_str() {
        return text.as_bytes().to_vec();
    }
    assert_eq!(
        entry["formula"], "byte[i] = (i*31+7) % 251",
        "unknown formula"
    );
    formula(size)
}

fn sha256_hex(data: &[u8]) -> String {
    use multihash_codetable::{Code, MultihashDigest};
    Code::Sha2_256
        .digest(data)
        .digest()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn cid_of(data: &[u8], options: &ImportOptions) -> String {
    let store = MemBlockstore::default();
    let added = unixfs::import(data, options, |b| store.put(b)).unwrap();
    let mut back = Vec::new();
    unixfs::export(&store, &added.root, &mut back).unwrap();
    assert_eq!(back, data, "export differs from import");
    added.root.to_string()
}

#[test]
fn cids_match_kubo_and_helia_for_every_conformance_file() {
    let path = shared("conformance/unixfs_cids.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared conformance data must sit beside the repo)",
            path.display()
        )
    });
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(entries.len() >= 8);
    for entry in &entries {
        let name = entry["name"].as_str().unwrap();
        let data = content(entry);
        assert_eq!(
            sha256_hex(&data),
            entry["sha256"],
            "{name}: generator disagrees with the file's sha256"
        );
        let v1 = cid_of(&data, &ImportOptions::default());
        assert_eq!(v1, entry["cidv1_raw"], "{name}: CIDv1 raw leaves");
        let v0 = cid_of(&data, &ImportOptions::kubo_v0());
        assert_eq!(v0, entry["cidv0_default"], "{name}: CIDv0 Kubo defaults");
    }
}

/// Multi-level trees: the js importer (the one Helia uses) with small chunks and few
/// links per node builds trees of depth 1 to 5 that exercise the balanced layout at
/// every boundary, cheaply.
#[test]
fn balanced_layout_matches_the_js_importer_at_every_depth() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/balanced_layout.json");
    let vectors: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(vectors.len() > 20);
    for v in &vectors {
        let size = v["size"].as_u64().unwrap() as usize;
        let chunk_size = v["chunk_size"].as_u64().unwrap() as usize;
        let max_links = v["max_links"].as_u64().unwrap() as usize;
        let data = formula(size);
        let v1 = ImportOptions {
            chunk_size,
            max_links,
            ..ImportOptions::default()
        };
        assert_eq!(
            cid_of(&data, &v1),
            v["cidv1_raw"],
            "size {size} chunk {chunk_size} links {max_links} (v1)"
        );
        let v0 = ImportOptions {
            chunk_size,
            max_links,
            ..ImportOptions::kubo_v0()
        };
        assert_eq!(
            cid_of(&data, &v0),
            v["cidv0"],
            "size {size} chunk {chunk_size} links {max_links} (v0)"
        );
    }
}
