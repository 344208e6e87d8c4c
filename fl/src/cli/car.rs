//! `fl car export|import`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use fl_core::content::Cid;

use super::{RepoPath, cid_arg};

#[derive(Debug, Subcommand)]
pub(super) enum Car {
    /// Writes a DAG as a CAR v1 file (`ipfs dag export`).
    Export {
        /// The DAG's root.
        #[arg(value_parser = cid_arg)]
        cid: Cid,
        /// The CAR file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Reads a CAR v1 file into the store and pins its roots (`ipfs dag import`).
    Import {
        /// The CAR file.
        file: PathBuf,
    },
}

pub(super) fn run(cmd: Car, repo: &RepoPath) -> anyhow::Result<()> {
    match cmd {
        Car::Export { cid, output } => {
            let repo = repo.open()?;
            let dir = output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(".".as_ref());
            let mut tmp = tempfile::Builder::new()
                .prefix(".fl-car-")
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
            let written = repo
                .export_car(&[cid], &mut out)
                .with_context(|| format!("exporting {cid}"))?;
            out.flush()
                .with_context(|| format!("writing {}", output.display()))?;
            drop(out);
            tmp.persist(&output)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "exported {cid}: {} blocks, {} bytes to {}",
                written.blocks,
                written.bytes,
                output.display()
            );
        }
        Car::Import { file } => {
            let repo = repo.open()?;
            let input = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let imported = repo
                .import_car(BufReader::with_capacity(1 << 20, input))
                .with_context(|| format!("importing {}", file.display()))?;
            for root in &imported.pinned {
                println!("pinned root {root}");
            }
            for (root, missing) in &imported.incomplete {
                println!(
                    "root {root} not pinned: block {missing} is not in the archive or the store"
                );
            }
            eprintln!(
                "imported {} blocks from {}",
                imported.blocks,
                file.display()
            );
        }
    }
    Ok(())
}
