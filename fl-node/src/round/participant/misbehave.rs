//! The attacks a node makes beside its own update (`fl simulate --attack`): flooding its
//! peers with Bitswap wants or with manifests. Each runs in the background for a bounded
//! count of messages, and an honest node runs none.

use fl_core::content::links;
use fl_core::records::Manifest;

use super::*;
use crate::net::bitswap::MAX_WANTLIST_ENTRIES;
use crate::net::bitswap::message::{Message, Want, WantType};
use crate::round::attack::{FLOOD_MANIFESTS_PER_ROUND, FLOOD_MESSAGES_PER_PEER};
use crate::round::inbox::{KEEP_ROUNDS_BEHIND, MAX_RECORD_BYTES};

/// Bytes left for a flooding manifest's signature, key and framing under the record limit.
const MANIFEST_ROOM: usize = 4096;

impl Participant {
    /// Starts the attack this node makes after announcing in the round on `base`, if any.
    pub(super) fn misbehave(&self, ctx: &Ctx, base: &RoundBase) {
        match self.config.attack {
            Some(Attack::HaveFlood) => {
                let (node, repo, model) = (self.node.clone(), self.repo.clone(), base.model_cid);
                tokio::spawn(flood_haves(node, repo, model).in_current_span());
            }
            Some(Attack::ManifestFlood) => {
                let last = ctx
                    .terms
                    .task
                    .rounds
                    .min(base.round.saturating_add(KEEP_ROUNDS_BEHIND));
                let (node, key) = (self.node.clone(), self.key.clone());
                let (task, topic) = (ctx.terms.cid, Task::manifests_topic(&ctx.terms.cid));
                let (first, prev, model) = (base.round, base.prev, base.model_cid);
                tokio::spawn(
                    async move {
                        let padding = "x".repeat(MAX_RECORD_BYTES - MANIFEST_ROOM);
                        tracing::info!(rounds = last + 1 - first, "attack: flooding manifests");
                        for round in first..=last {
                            for rank in 0..FLOOD_MANIFESTS_PER_ROUND as u32 {
                                // Near the largest a record may be (its rule name padded),
                                // and none of them valid.
                                let manifest = Manifest::counting_nothing(
                                    task, round, prev, model, &*padding, rank,
                                );
                                match Signed::sign(manifest, &key).and_then(|s| s.to_block()) {
                                    Ok(block) => {
                                        let _ = node.publish(&topic, block.data().to_vec()).await;
                                    }
                                    Err(e) => tracing::warn!(
                                        "attack: a flooding manifest could not be made: {e}"
                                    ),
                                }
                            }
                        }
                    }
                    .in_current_span(),
                );
            }
            _ => {}
        }
    }
}

/// Attack `have-flood`: [`FLOOD_MESSAGES_PER_PEER`] messages to each connected peer, each of
/// the most HAVE wants a message may carry, for the blocks of `model` (which every member
/// holds) and then for blocks nobody has.
async fn flood_haves(node: Node, repo: Arc<Repo>, model: Cid) {
    let mut cids = dag_cids(repo.blocks(), model, MAX_WANTLIST_ENTRIES);
    let mut filler = 0u64;
    while cids.len() < MAX_WANTLIST_ENTRIES {
        filler += 1;
        let block = fl_core::content::Block::hashed(0x55, filler.to_le_bytes().to_vec());
        cids.push(*block.cid());
    }
    let wants: Vec<Want> = cids
        .into_iter()
        .map(|cid| Want {
            cid,
            kind: WantType::Have,
            cancel: false,
            send_dont_have: true,
        })
        .collect();
    let message = Message::with_wants(&wants, false);
    let Ok(peers) = node.peers().await else {
        return;
    };
    tracing::info!(
        peers = peers.len(),
        "attack: flooding peers with HAVE wants"
    );
    for _ in 0..FLOOD_MESSAGES_PER_PEER {
        for &peer in &peers {
            if node
                .bitswap()
                .send_as_is(peer, message.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Up to `max` distinct CIDs of the DAG under `root` held in `store`, root first.
fn dag_cids(store: &dyn Blockstore, root: Cid, max: usize) -> Vec<Cid> {
    let mut found = vec![root];
    let mut seen = HashSet::from([root]);
    let mut next = 0;
    while next < found.len() && found.len() < max {
        let cid = found[next];
        next += 1;
        let Ok(block) = store.get(&cid) else { continue };
        for link in links::links(&block).unwrap_or_default() {
            if found.len() < max && seen.insert(link) {
                found.push(link);
            }
        }
    }
    found
}
