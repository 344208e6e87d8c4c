//! Pins: the DAGs a node promises to keep. Garbage collection removes every block no pin
//! reaches. Kept in an embedded database (redb), whose exclusive file lock also keeps a
//! second process from collecting garbage under a running node.

use std::path::{Path, PathBuf};

use cid::Cid;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Pinned CIDs (bytes) to their [`PinMode`].
const PINS: TableDefinition<&[u8], u8> = TableDefinition::new("pins");

/// How much of a DAG a pin keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMode {
    /// The block and everything it links to, transitively.
    Recursive,
    /// The block alone.
    Direct,
}

impl PinMode {
    fn to_byte(self) -> u8 {
        match self {
            PinMode::Recursive => 1,
            PinMode::Direct => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(PinMode::Recursive),
            2 => Some(PinMode::Direct),
            _ => None,
        }
    }
}

impl std::fmt::Display for PinMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PinMode::Recursive => "recursive",
            PinMode::Direct => "direct",
        })
    }
}

/// The pin database failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Another process (a running node, a second `fl`) holds the repo.
    #[error("the pin database {} is in use by another process; stop it or use another --repo", .path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The database failed.
    #[error("pin database {}", .path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// The database holds something that is not a pin.
    #[error("pin database {} holds a corrupt entry", .path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
    },
}

/// The set of pins of one repo.
#[derive(Debug)]
pub struct PinSet {
    db: Database,
    path: PathBuf,
}

impl PinSet {
    /// Opens (creating if needed) the pin database at `path`.
    pub fn open(path: &Path) -> Result<Self, PinError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(PinError::Locked {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(db_error(path, e)),
        };
        let set = Self {
            db,
            path: path.to_owned(),
        };
        set.write(|_| Ok(()))?;
        Ok(set)
    }

    /// Pins `cid` with `mode` (a recursive pin replaces a direct one, not the reverse).
    pub fn add(&self, cid: &Cid, mode: PinMode) -> Result<(), PinError> {
        self.write(|table| {
            let key = cid.to_bytes();
            let current = table.get(key.as_slice())?.map(|v| v.value());
            if current != Some(PinMode::Recursive.to_byte()) {
                table.insert(key.as_slice(), mode.to_byte())?;
            }
            Ok(())
        })
    }

    /// Removes the pin on `cid`; returns whether there was one.
    pub fn remove(&self, cid: &Cid) -> Result<bool, PinError> {
        let mut removed = false;
        self.write(|table| {
            removed = table.remove(cid.to_bytes().as_slice())?.is_some();
            Ok(())
        })?;
        Ok(removed)
    }

    /// The pin on `cid`, if any.
    pub fn get(&self, cid: &Cid) -> Result<Option<PinMode>, PinError> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn.open_table(PINS).map_err(|e| db_error(&self.path, e))?;
        let value = table
            .get(cid.to_bytes().as_slice())
            .map_err(|e| db_error(&self.path, e))?
            .map(|v| v.value());
        value
            .map(|b| {
                PinMode::from_byte(b).ok_or(PinError::Corrupt {
                    path: self.path.clone(),
                })
            })
            .transpose()
    }

    /// Every pin, in CID byte order.
    pub fn list(&self) -> Result<Vec<(Cid, PinMode)>, PinError> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn.open_table(PINS).map_err(|e| db_error(&self.path, e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| db_error(&self.path, e))? {
            let (key, value) = entry.map_err(|e| db_error(&self.path, e))?;
            let corrupt = || PinError::Corrupt {
                path: self.path.clone(),
            };
            let cid = Cid::try_from(key.value()).map_err(|_| corrupt())?;
            let mode = PinMode::from_byte(value.value()).ok_or_else(corrupt)?;
            out.push((cid, mode));
        }
        Ok(out)
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static [u8], u8>) -> Result<(), redb::StorageError>,
    ) -> Result<(), PinError> {
        let txn = self.db.begin_write().map_err(|e| db_error(&self.path, e))?;
        {
            let mut table = txn.open_table(PINS).map_err(|e| db_error(&self.path, e))?;
            f(&mut table).map_err(|e| db_error(&self.path, e))?;
        }
        txn.commit().map_err(|e| db_error(&self.path, e))
    }
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> PinError {
    PinError::Db {
        path: path.to_owned(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Block, RAW};

    #[test]
    fn pins_survive_reopening_and_recursive_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.redb");
        let cid = *Block::hashed(RAW, &b"a"[..]).cid();
        {
            let pins = PinSet::open(&path).unwrap();
            pins.add(&cid, PinMode::Recursive).unwrap();
            pins.add(&cid, PinMode::Direct).unwrap();
        }
        let pins = PinSet::open(&path).unwrap();
        assert_eq!(pins.get(&cid).unwrap(), Some(PinMode::Recursive));
        assert_eq!(pins.list().unwrap(), vec![(cid, PinMode::Recursive)]);
        assert!(pins.remove(&cid).unwrap());
        assert!(!pins.remove(&cid).unwrap());
    }

    #[test]
    fn second_opener_is_told_the_repo_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.redb");
        let _first = PinSet::open(&path).unwrap();
        assert!(matches!(PinSet::open(&path), Err(PinError::Locked { .. })));
    }
}
