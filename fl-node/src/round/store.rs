//! What a node remembers of a task across restarts, in `REPO/rounds.redb`: the update it
//! announced for each round (so a restarted node re-announces the same one and never a
//! second) and the manifest it adopted for each round.

use std::path::{Path, PathBuf};

use cid::Cid;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// (task CID bytes, round) -> announcement CID bytes.
const ANNOUNCED: TableDefinition<(&[u8], u32), &[u8]> = TableDefinition::new("announced");
/// (task CID bytes, round) -> adopted manifest CID bytes.
const ADOPTED: TableDefinition<(&[u8], u32), &[u8]> = TableDefinition::new("adopted");
/// (task CID, round) -> the aggregator's evaluation of the adopted manifest's model.
const EVALUATED: TableDefinition<(&[u8], u32), &[u8]> = TableDefinition::new("evaluated");

/// Why the round database failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundStoreError {
    /// Another process has the database open.
    #[error("{} is in use by another process (is a node already running on this repo?)", .0.display())]
    Locked(PathBuf),
    /// redb failed.
    #[error("round database {}: {source}", .path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// An entry is not a CID.
    #[error("round database {} holds a corrupt entry", .0.display())]
    Corrupt(PathBuf),
    /// A second, different update for a round was about to be recorded.
    #[error("round {round}: announced {existing} already; refusing to announce {new}")]
    SecondUpdate {
        /// The round.
        round: u32,
        /// What was announced.
        existing: Cid,
        /// What was about to be.
        new: Cid,
    },
}

/// The round database of one repo.
#[derive(Debug)]
pub struct RoundStore {
    db: Database,
    path: PathBuf,
}

impl RoundStore {
    /// Opens (creating if needed) the database in `repo_root`.
    pub fn open(repo_root: &Path) -> Result<Self, RoundStoreError> {
        let path = repo_root.join("rounds.redb");
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(RoundStoreError::Locked(path));
            }
            Err(e) => return Err(db_error(&path, e)),
        };
        let store = Self { db, path };
        store.write(|txn| {
            txn.open_table(ANNOUNCED)?;
            txn.open_table(ADOPTED)?;
            txn.open_table(EVALUATED)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// The announcement this node made for `round` of `task`, if any.
    pub fn announced(&self, task: &Cid, round: u32) -> Result<Option<Cid>, RoundStoreError> {
        self.get(ANNOUNCED, task, round)
    }

    /// Records this node's announcement for `round`; refuses a second, different one.
    pub fn record_announced(
        &self,
        task: &Cid,
        round: u32,
        announcement: &Cid,
    ) -> Result<(), RoundStoreError> {
        if let Some(existing) = self.announced(task, round)? {
            if existing == *announcement {
                return Ok(());
            }
            return Err(RoundStoreError::SecondUpdate {
                round,
                existing,
                new: *announcement,
            });
        }
        self.put(ANNOUNCED, task, round, announcement)
    }

    /// The manifest adopted for `round`, if any.
    pub fn adopted(&self, task: &Cid, round: u32) -> Result<Option<Cid>, RoundStoreError> {
        self.get(ADOPTED, task, round)
    }

    /// Records the manifest adopted for `round` (a better-ranked one replaces it).
    pub fn record_adopted(
        &self,
        task: &Cid,
        round: u32,
        manifest: &Cid,
    ) -> Result<(), RoundStoreError> {
        self.put(ADOPTED, task, round, manifest)
    }

    /// The evaluation recorded for `round`'s adopted manifest, if any (check that it names
    /// the manifest: a switch to another chain leaves it behind).
    pub fn evaluated(&self, task: &Cid, round: u32) -> Result<Option<Cid>, RoundStoreError> {
        self.get(EVALUATED, task, round)
    }

    /// Records the evaluation of `round`'s adopted manifest.
    pub fn record_evaluated(
        &self,
        task: &Cid,
        round: u32,
        evaluation: &Cid,
    ) -> Result<(), RoundStoreError> {
        self.put(EVALUATED, task, round, evaluation)
    }

    /// Records `chain` as the manifests adopted from round `from` on, in one transaction, and
    /// forgets any adopted after it: the switch to a better chain after a fork.
    pub fn record_chain(
        &self,
        task: &Cid,
        from: u32,
        chain: &[Cid],
    ) -> Result<(), RoundStoreError> {
        let key = task.to_bytes();
        self.write(|txn| {
            let mut t = txn.open_table(ADOPTED)?;
            let mut round = from;
            for cid in chain {
                t.insert((key.as_slice(), round), cid.to_bytes().as_slice())?;
                round += 1;
            }
            let stale: Vec<u32> = t
                .range((key.as_slice(), round)..=(key.as_slice(), u32::MAX))?
                .map(|entry| entry.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for r in stale {
                t.remove((key.as_slice(), r))?;
            }
            Ok(())
        })
    }

    /// The last round with an adopted manifest (0 for none) and that manifest.
    pub fn head(&self, task: &Cid) -> Result<(u32, Option<Cid>), RoundStoreError> {
        let key = task.to_bytes();
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn
            .open_table(ADOPTED)
            .map_err(|e| db_error(&self.path, e))?;
        let last = table
            .range((key.as_slice(), 0u32)..=(key.as_slice(), u32::MAX))
            .map_err(|e| db_error(&self.path, e))?
            .next_back();
        match last {
            None => Ok((0, None)),
            Some(entry) => {
                let (k, v) = entry.map_err(|e| db_error(&self.path, e))?;
                let cid = Cid::try_from(v.value())
                    .map_err(|_| RoundStoreError::Corrupt(self.path.clone()))?;
                Ok((k.value().1, Some(cid)))
            }
        }
    }

    fn get(
        &self,
        table: TableDefinition<(&[u8], u32), &[u8]>,
        task: &Cid,
        round: u32,
    ) -> Result<Option<Cid>, RoundStoreError> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn.open_table(table).map_err(|e| db_error(&self.path, e))?;
        let key = task.to_bytes();
        let value = table
            .get((key.as_slice(), round))
            .map_err(|e| db_error(&self.path, e))?;
        value
            .map(|v| {
                Cid::try_from(v.value()).map_err(|_| RoundStoreError::Corrupt(self.path.clone()))
            })
            .transpose()
    }

    fn put(
        &self,
        table: TableDefinition<(&[u8], u32), &[u8]>,
        task: &Cid,
        round: u32,
        cid: &Cid,
    ) -> Result<(), RoundStoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(table)?;
            let key = task.to_bytes();
            t.insert((key.as_slice(), round), cid.to_bytes().as_slice())?;
            Ok(())
        })
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), RoundStoreError> {
        let txn = self.db.begin_write().map_err(|e| db_error(&self.path, e))?;
        f(&txn).map_err(|e| db_error(&self.path, e))?;
        txn.commit().map_err(|e| db_error(&self.path, e))
    }
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> RoundStoreError {
    RoundStoreError::Db {
        path: path.to_owned(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_and_adoptions_survive_reopening_and_a_second_update_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cid = |s: &[u8]| *fl_core::content::Block::hashed(0x71, s.to_vec()).cid();
        let task = cid(b"task");
        {
            let store = RoundStore::open(dir.path()).unwrap();
            assert_eq!(store.head(&task).unwrap(), (0, None));
            store.record_announced(&task, 1, &cid(b"a1")).unwrap();
            store.record_announced(&task, 1, &cid(b"a1")).unwrap();
            assert!(matches!(
                store.record_announced(&task, 1, &cid(b"other")),
                Err(RoundStoreError::SecondUpdate { round: 1, .. })
            ));
            store.record_adopted(&task, 1, &cid(b"m1")).unwrap();
            store.record_adopted(&task, 2, &cid(b"m2")).unwrap();
            store
                .record_adopted(&cid(b"other task"), 9, &cid(b"x"))
                .unwrap();
        }
        let store = RoundStore::open(dir.path()).unwrap();
        assert_eq!(store.announced(&task, 1).unwrap(), Some(cid(b"a1")));
        assert_eq!(store.announced(&task, 2).unwrap(), None);
        assert_eq!(store.head(&task).unwrap(), (2, Some(cid(b"m2"))));
        // A switch to a shorter chain from round 1 forgets round 2; other tasks are untouched.
        store.record_chain(&task, 1, &[cid(b"m1'")]).unwrap();
        assert_eq!(store.head(&task).unwrap(), (1, Some(cid(b"m1'"))));
        assert_eq!(store.adopted(&task, 2).unwrap(), None);
        assert_eq!(
            store.head(&cid(b"other task")).unwrap(),
            (9, Some(cid(b"x")))
        );
    }
}
