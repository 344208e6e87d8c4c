//! Round trips through every codec of the content layer, on random inputs.

use fl_core::content::unixfs::{self, ImportOptions};
use fl_core::content::{Block, Blockstore, MemBlockstore, RAW, Repo, car, dagcbor};
use proptest::prelude::*;

fn bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Sizes from 0 to 20 MB, weighted towards the chunk boundaries where importers break.
fn size() -> impl Strategy<Value = usize> {
    const CHUNK: usize = unixfs::DEFAULT_CHUNK_SIZE;
    prop_oneof![
        0usize..=20_000_000,
        0usize..=4 * CHUNK,
        (1usize..=76).prop_flat_map(|k| (k * CHUNK - 1)..=(k * CHUNK + 1)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// import -> export gives the same bytes; CAR export -> import into an empty repo
    /// -> cat gives them again.
    #[test]
    fn file_survives_unixfs_and_car(size in size(), seed in any::<u64>(), v0 in any::<bool>()) {
        let data = bytes(size, seed);
        let options = if v0 { ImportOptions::kubo_v0() } else { ImportOptions::default() };
        let store = MemBlockstore::default();
        let added = unixfs::import(&data[..], &options, |b| store.put(b)).unwrap();
        prop_assert_eq!(added.size as usize, size);
        prop_assert_eq!(added.blocks as usize, store.len());
        let mut back = Vec::with_capacity(size);
        unixfs::export(&store, &added.root, &mut back).unwrap();
        prop_assert!(back == data, "unixfs round trip differs");

        let mut archive = Vec::new();
        car::export(&store, &[added.root], &mut archive).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        let imported = repo.import_car(&archive[..]).unwrap();
        prop_assert_eq!(imported.pinned, vec![added.root]);
        let mut again = Vec::with_capacity(size);
        repo.cat(&added.root, &mut again).unwrap();
        prop_assert!(again == data, "CAR round trip differs");
    }

    /// Any blocks, any roots: a CAR gives back exactly what was written.
    #[test]
    fn car_round_trips_any_blocks(blobs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..20)) {
        let store = MemBlockstore::default();
        let cids: Vec<_> = blobs.iter().map(|b| {
            let block = Block::hashed(RAW, b.clone());
            let cid = *block.cid();
            store.put(block).unwrap();
            cid
        }).collect();
        let mut archive = Vec::new();
        car::export(&store, &cids, &mut archive).unwrap();
        let reader = car::CarReader::new(&archive[..]).unwrap();
        prop_assert_eq!(&reader.header().roots, &cids);
        let read: Vec<Block> = reader.collect::<Result<_, _>>().unwrap();
        let mut unique = cids.clone();
        unique.dedup_by_key(|c| *c);
        for block in &read {
            prop_assert!(cids.contains(block.cid()));
            prop_assert_eq!(block, &store.get(block.cid()).unwrap());
        }
    }

    /// DAG-CBOR: a record with links decodes to itself and its CID is stable.
    #[test]
    fn dagcbor_round_trips(round in any::<u64>(), note in ".{0,40}", n in 0usize..5, w in prop::collection::vec(-1e30f64..1e30, 0..8)) {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Rec { round: u64, note: String, links: Vec<cid::Cid>, weights: Vec<f64> }
        let links = (0..n).map(|i| *Block::hashed(RAW, vec![i as u8]).cid()).collect();
        let rec = Rec { round, note, links, weights: w };
        let block = dagcbor::encode(&rec).unwrap();
        prop_assert_eq!(dagcbor::decode::<Rec>(&block).unwrap(), rec);
        let again = dagcbor::encode(&dagcbor::decode::<Rec>(&block).unwrap()).unwrap();
        prop_assert_eq!(again.cid(), block.cid());
    }
}
