//! `cargo run --release -p experiments -- all [--quick]`: the evaluation of the federation.
//! Every experiment runs real nodes (`fl_node::simulate`) on CIFAR-10 and writes CSV files,
//! PNG plots and its part of `results/REPORT.md`.

mod harness;
mod suite;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use datasets::cifar10;

use suite::{Ctx, EXPERIMENTS, Scale, relative};

/// The evaluation: CSV, PNG plots and a markdown report from one command.
#[derive(Debug, Parser)]
#[command(name = "experiments")]
struct Args {
    /// `all`, `list`, or experiment names.
    #[arg(required = true)]
    names: Vec<String>,
    /// The quick suite: small federations on the first 2,400 training images (minutes).
    #[arg(long)]
    quick: bool,
    /// CIFAR-10 (the binary version's directory).
    #[arg(long, env = "FL_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where the results go.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

/// Training images of the quick suite.
const QUICK_IMAGES: usize = 2400;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.names.iter().any(|n| n == "list") {
        println!("experiments (run one by name, or `all`):");
        for (name, what) in EXPERIMENTS {
            println!("  {name:<26} {what}");
        }
        return Ok(());
    }
    let names: Vec<&str> = if args.names.iter().any(|n| n == "all") {
        EXPERIMENTS.iter().map(|(n, _)| *n).collect()
    } else {
        args.names.iter().map(String::as_str).collect()
    };
    for name in &names {
        if !EXPERIMENTS.iter().any(|(n, _)| n == name) {
            bail!("unknown experiment {name:?}; `list` shows them");
        }
    }
    let data_dir = args.data.context(
        "give --data DIR or set FL_DATA to a CIFAR-10 directory (`fl data fetch cifar10` downloads one)",
    )?;
    let mut data = cifar10::load(&data_dir)
        .with_context(|| format!("reading CIFAR-10 from {}", data_dir.display()))?;
    let scale = if args.quick {
        let n = QUICK_IMAGES.min(data.train.len());
        data.train = data.train.subset(&(0..n).collect::<Vec<_>>());
        Scale::QUICK
    } else {
        Scale::FULL
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let started = Instant::now();
    let ctx = Ctx::new(data, scale, args.out.clone());
    let mut sections = Vec::new();
    for name in names {
        let section = ctx
            .run(name)
            .with_context(|| format!("experiment {name}"))?;
        eprintln!("{name}: {:.0} s", section.seconds);
        sections.push(section);
    }
    let mut report = format!(
        "# Evaluation ({} suite)\n\nMade by `cargo run --release -p experiments -- {} {}--data DIR` in {:.1} minutes on this \
         machine ({} CPU cores, no GPU; every node a real peer on loopback in one process). The data: {} training and {} test \
         images of CIFAR-10.\n",
        if scale.quick { "quick" } else { "full" },
        args.names.join(" "),
        if scale.quick { "--quick " } else { "" },
        started.elapsed().as_secs_f64() / 60.0,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ctx.data.train.len(),
        ctx.data.test.len(),
    );
    for s in &sections {
        report.push_str(&format!(
            "\n## {} ({:.0} s)\n\n{}\n",
            s.title, s.seconds, s.body
        ));
        for f in &s.files {
            let rel = relative(f, &args.out);
            if rel.ends_with(".png") {
                report.push_str(&format!("![{rel}]({rel})\n\n"));
            } else {
                report.push_str(&format!("Data: [{rel}]({rel})\n\n"));
            }
        }
    }
    let path = args.out.join("REPORT.md");
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
