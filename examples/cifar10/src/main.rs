//! The end-to-end example: CIFAR-10 through the federation.
//!
//! What exists today is the content layer, so this example does its first step for real:
//! it stores every CIFAR-10 batch file of the data directory (FL_DATA, or the first
//! argument) in a repo as UnixFS, exactly as `ipfs add --cid-version=1` would, and prints
//! each file's CID. Training rounds join it as their issues land.

use std::path::PathBuf;

use anyhow::{Context, bail};
use fl_core::content::Repo;
use fl_core::content::unixfs::ImportOptions;

fn main() -> anyhow::Result<()> {
    let data = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("FL_DATA"))
        .map(PathBuf::from)
        .context("give the CIFAR-10 directory as the first argument or in FL_DATA")?;
    let repo_dir = std::env::var_os("FL_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("fl-cifar10-example"));
    let repo =
        Repo::open(&repo_dir).with_context(|| format!("opening repo {}", repo_dir.display()))?;
    let mut names: Vec<_> = std::fs::read_dir(&data)
        .with_context(|| format!("reading {}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no CIFAR-10 batch files (*.bin) in {}", data.display());
    }
    println!("repo: {}", repo_dir.display());
    for path in names {
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let added = repo
            .add(file, &ImportOptions::default())
            .with_context(|| format!("adding {}", path.display()))?;
        println!(
            "{:<20} {:>10} bytes  {}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            added.size,
            added.root
        );
    }
    eprintln!("note: federated training is not built yet; see the open issues");
    Ok(())
}
