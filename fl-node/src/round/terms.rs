//! A task record as the round code uses it: decoded and validated once, its aggregation rule
//! and architecture parsed into types, so no later step parses a string or meets a setting
//! it cannot run.

use std::sync::Arc;

use aggregator::{Rule, RuleError};
use cid::Cid;
use fl_core::content::Block;
use fl_core::model::{Architecture, ModelError};
use fl_core::records::Task;
use fl_core::records::task::TaskError;

/// A task every node of it agreed to by its CID, checked once.
#[derive(Debug, Clone)]
pub struct Terms {
    /// The task record's CID.
    pub cid: Cid,
    /// The record as published (its `rule` string is what manifests repeat, byte for byte).
    pub task: Arc<Task>,
    /// Its aggregation rule.
    pub rule: Rule,
    /// Its model architecture.
    pub architecture: Architecture,
}

/// Why a task record cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum TermsError {
    /// The block is not the record its CID names, or not a task record.
    #[error("the task record {cid}")]
    Record {
        /// The record.
        cid: Cid,
        /// Why.
        #[source]
        source: TaskError,
    },
    /// The block's bytes do not hash to its CID.
    #[error("the task record {cid}")]
    Block {
        /// The record.
        cid: Cid,
        /// Why.
        #[source]
        source: fl_core::content::BlockError,
    },
    /// Its aggregation rule does not parse or cannot run.
    #[error("the task's rule {rule:?}")]
    Rule {
        /// The rule as written.
        rule: String,
        /// Why.
        #[source]
        source: RuleError,
    },
    /// Its architecture is unknown here.
    #[error("the task's architecture")]
    Architecture(#[source] ModelError),
}

impl Terms {
    /// The terms of the task record `cid` whose bytes are `bytes`.
    pub fn decode(cid: Cid, bytes: Vec<u8>) -> Result<Self, TermsError> {
        let block = Block::new(cid, bytes).map_err(|source| TermsError::Block { cid, source })?;
        let task = Task::from_block(&block).map_err(|source| TermsError::Record { cid, source })?;
        Self::new(cid, task)
    }

    /// The terms of `task`, published as `cid`: refused unless every setting can run.
    pub fn new(cid: Cid, task: Task) -> Result<Self, TermsError> {
        task.validate()
            .map_err(|source| TermsError::Record { cid, source })?;
        let rule: Rule = task.rule.parse().map_err(|source| TermsError::Rule {
            rule: task.rule.clone(),
            source,
        })?;
        let architecture = task
            .architecture
            .parse()
            .map_err(TermsError::Architecture)?;
        Ok(Self {
            cid,
            task: Arc::new(task),
            rule,
            architecture,
        })
    }
}
