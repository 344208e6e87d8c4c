//! `fl data fetch|partition|publish|shard`: CIFAR-10 as content-addressed shards.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use datasets::cifar10::{self, CLASSES};
use datasets::download::{self, Source};
use datasets::partition::{Partition, Scheme, partition};
use datasets::shard;
use fl_core::content::Cid;

use super::{RepoPath, cid_arg};

#[derive(Debug, Subcommand)]
pub(super) enum Data {
    /// Downloads the official CIFAR-10 archive (resumable, MD5-checked) and unpacks it.
    Fetch {
        /// Dataset name; only `cifar10`.
        #[arg(value_parser = ["cifar10"])]
        dataset: String,
        /// Where to put it; default: `datasets/` under the user's data directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Splits the training set across nodes and prints each node's label counts.
    Partition {
        #[command(flatten)]
        split: SplitArgs,
        /// Also draw the table as a PNG heatmap.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// Also write each node's training-image indices as JSON (`{"clients": [[i, ...],
        /// ...]}`), so another framework can train on exactly the same shards.
        #[arg(long, value_name = "FILE")]
        indices: Option<PathBuf>,
    },
    /// Stores every node's shard and a dataset manifest; prints the manifest's CID.
    Publish {
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Fetches one node's shard named by a dataset manifest.
    Shard {
        /// The dataset manifest.
        #[arg(value_parser = cid_arg)]
        manifest: Cid,
        /// The node's index (0-based).
        #[arg(long)]
        node: usize,
        /// Write the shard here (official binary format).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(super) struct SplitArgs {
    /// The CIFAR-10 directory (binary or python format).
    #[arg(long, env = "FL_DATA", value_name = "DIR")]
    data: PathBuf,
    /// Number of nodes.
    #[arg(long)]
    clients: usize,
    /// iid, dirichlet:ALPHA, shards:K, quantity:ALPHA or draw:N (each node draws N images
    /// of its own; nodes overlap).
    #[arg(long, default_value = "iid")]
    scheme: Scheme,
    /// Seed of the split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fewest samples any node may get.
    #[arg(long, default_value_t = 10)]
    min_size: usize,
    /// Split only the first N training images, as `fl simulate --images` does; default: all.
    #[arg(long, value_name = "N")]
    images: Option<usize>,
}

impl SplitArgs {
    fn run(&self) -> anyhow::Result<(cifar10::Cifar10, Partition)> {
        let mut data = cifar10::load(&self.data)?;
        super::first_images(&mut data, self.images)?;
        let split = partition(
            data.train.labels(),
            self.clients,
            &self.scheme,
            self.seed,
            self.min_size,
        )?;
        Ok((data, split))
    }
}

pub(super) fn run(cmd: Data, repo: &RepoPath) -> anyhow::Result<()> {
    match cmd {
        Data::Fetch { dataset: _, dir } => {
            let dir = match dir {
                Some(d) => d,
                None => dirs::data_dir()
                    .context("no user data directory on this system; pass --dir DIR")?
                    .join("fl/datasets"),
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let unpacked = download::fetch(&Source::cifar10_binary(), &dir, |p| {
                if let Some(t) = p.total {
                    bar.set_length(t);
                }
                bar.set_position(p.done);
            });
            bar.finish_and_clear();
            let unpacked = unpacked?;
            println!("{}", unpacked.display());
            eprintln!(
                "CIFAR-10 is in {0}; use --data {0} or export FL_DATA={0}",
                unpacked.display()
            );
        }
        Data::Partition {
            split,
            png,
            indices,
        } => {
            let (data, parts) = split.run()?;
            let counts = parts.label_counts(data.train.labels());
            print_table(&counts);
            if let Some(path) = indices {
                let json = parts.index_lists_json(&split.scheme, split.seed, data.train.len());
                std::fs::write(&path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("indices written to {}", path.display());
            }
            if let Some(path) = png {
                fl_plot::label_heatmap(
                    &counts,
                    &CLASSES,
                    &format!(
                        "{} across {} nodes, seed {}",
                        split.scheme, split.clients, split.seed
                    ),
                    &path,
                )
                .with_context(|| format!("drawing {}", path.display()))?;
                eprintln!("heatmap written to {}", path.display());
            }
        }
        Data::Publish { split } => {
            let (data, parts) = split.run()?;
            let repo = repo.open()?;
            let cid = shard::publish(&repo, &data, &parts, &split.scheme.to_string(), split.seed)
                .context("publishing the shards")?;
            print_table(&parts.label_counts(data.train.labels()));
            println!("{cid}");
        }
        Data::Shard {
            manifest,
            node,
            output,
        } => {
            let repo = repo.open()?;
            let m = shard::manifest(repo.blocks(), &manifest)
                .with_context(|| format!("reading manifest {manifest}"))?;
            let images = shard::fetch_shard(repo.blocks(), &m, node)
                .with_context(|| format!("fetching shard {node} of {manifest}"))?;
            println!(
                "node {node}: {} images, label counts {:?}",
                images.len(),
                images.label_counts()
            );
            if let Some(path) = output {
                std::fs::write(&path, images.to_binary())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

fn print_table(counts: &[[u64; cifar10::NUM_CLASSES]]) {
    print!("{:>5}", "node");
    for c in CLASSES {
        print!(" {:>6}", &c[..c.len().min(6)]);
    }
    println!(" {:>7}", "total");
    for (i, row) in counts.iter().enumerate() {
        print!("{i:>5}");
        for v in row {
            print!(" {v:>6}");
        }
        println!(" {:>7}", row.iter().sum::<u64>());
    }
}
