//! Records this node holds already: its head and earlier manifests, its announcements.

use super::*;

impl Participant {
    /// The bytes of a block this node holds.
    pub(super) fn block_bytes(&self, cid: &Cid) -> Result<Vec<u8>, RoundError> {
        self.repo
            .blocks()
            .get(cid)
            .map(|b| b.data().to_vec())
            .map_err(|e| RoundError::Repo(e.into()))
    }

    pub(super) fn load_manifest(&self, cid: &Cid) -> Result<Signed<Manifest>, RoundError> {
        let bytes = self.block_bytes(cid)?;
        Ok(Signed::<Manifest>::from_bytes(cid, &bytes)?)
    }
}
