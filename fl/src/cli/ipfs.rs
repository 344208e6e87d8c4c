//! `fl ipfs add|cat|get|pin|unpin|gc|pins`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use fl_core::content::Cid;
use fl_core::content::pins::PinMode;
use fl_core::content::unixfs::ImportOptions;

use super::{RepoPath, cid_arg};

#[derive(Debug, Subcommand)]
pub(super) enum Ipfs {
    /// Adds a file as UnixFS, pins it and prints its CID (the same as `ipfs add`).
    Add {
        /// The file to add; `-` reads standard input.
        file: PathBuf,
        /// 1: CIDv1 with raw leaves (`ipfs add --cid-version=1`); 0: Kubo's plain defaults.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        cid_version: u8,
        /// Print the CID only; store nothing.
        #[arg(long, short = 'n')]
        only_hash: bool,
    },
    /// Writes a file's bytes to standard output.
    Cat {
        /// The file's CID.
        #[arg(value_parser = cid_arg)]
        cid: Cid,
    },
    /// Writes a file to disk, whole or not at all.
    Get {
        /// The file's CID.
        #[arg(value_parser = cid_arg)]
        cid: Cid,
        /// Where to write it; default: the CID in the current directory.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Fetch missing blocks from these peers or the DHT (Bitswap) first.
        #[command(flatten)]
        network: super::node::FetchArgs,
    },
    /// Pins a DAG (recursively) so that gc keeps it.
    Pin {
        /// The root's CID.
        #[arg(value_parser = cid_arg)]
        cid: Cid,
        /// Pin this block alone, not what it links to.
        #[arg(long)]
        direct: bool,
    },
    /// Removes a pin.
    Unpin {
        /// The pinned CID.
        #[arg(value_parser = cid_arg)]
        cid: Cid,
    },
    /// Lists the pins.
    Pins,
    /// Removes every block no pin reaches.
    Gc,
}

pub(super) fn run(cmd: Ipfs, repo: &RepoPath) -> anyhow::Result<()> {
    match cmd {
        Ipfs::Add {
            file,
            cid_version,
            only_hash,
        } => {
            let version = if cid_version == 0 {
                cid::Version::V0
            } else {
                cid::Version::V1
            };
            let options = ImportOptions::with_cid_version(version);
            // No BufReader: the importer reads whole 256 KiB chunks into the blocks' own buffers.
            let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(File::open(&file).with_context(|| format!("opening {}", file.display()))?)
            };
            let added = if only_hash {
                fl_core::content::unixfs::import(input, &options, |_| Ok(()))
                    .with_context(|| format!("hashing {}", file.display()))?
            } else {
                repo.open()?
                    .add(input, &options)
                    .with_context(|| format!("adding {}", file.display()))?
            };
            println!("{}", added.root);
            tracing::info!(cid = %added.root, bytes = added.size, blocks = added.blocks, "added");
        }
        Ipfs::Cat { cid } => {
            let repo = repo.open()?;
            let stdout = std::io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            repo.cat(&cid, &mut out)
                .with_context(|| format!("reading {cid}"))?;
            out.flush().context("writing to standard output")?;
        }
        Ipfs::Get {
            cid,
            output,
            network,
        } => {
            let path = output.unwrap_or_else(|| PathBuf::from(cid.to_string()));
            let repo = repo.open()?;
            let started = std::time::Instant::now();
            if network.wants_network() {
                super::node::fetch(&repo, cid, &network)?;
            }
            let size = repo
                .get_to_file(&cid, &path)
                .with_context(|| format!("getting {cid}"))?;
            eprintln!(
                "saved {cid} ({size} bytes) to {} in {:.3} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Ipfs::Pin { cid, direct } => {
            let mode = if direct {
                PinMode::Direct
            } else {
                PinMode::Recursive
            };
            repo.open()?
                .pin(&cid, mode)
                .with_context(|| format!("pinning {cid}"))?;
            println!("pinned {cid} {mode}ly");
        }
        Ipfs::Unpin { cid } => {
            repo.open()?.unpin(&cid)?;
            println!("unpinned {cid}");
        }
        Ipfs::Pins => {
            for (cid, mode) in repo.open()?.pins().list()? {
                println!("{cid} {mode}");
            }
        }
        Ipfs::Gc => {
            let stats = repo.open()?.gc().context("collecting garbage")?;
            println!("removed {} blocks, kept {}", stats.removed, stats.kept);
        }
    }
    Ok(())
}
