//! `cargo run --release -p experiments -- all [--quick]`: the evaluation of the federation.
//! Every experiment runs real nodes (`fl_sim`) on CIFAR-10 and writes CSV files,
//! PNG plots and its section of `results/REPORT.md` (kept in `results/sections/`).

mod harness;
mod heterogeneous;
mod non_iid;
mod population;
mod privacy;
mod robustness;
mod secure;
mod suite;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use datasets::cifar10;

use privacy::PrivacyPoint;
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
    /// The privacy experiment's targets: epsilons at delta 1e-5, and `none` for no DP
    /// [default: 1,3,8,none; with --quick 1,8,none].
    #[arg(long, value_delimiter = ',')]
    epsilons: Option<Vec<PrivacyPoint>>,
    /// The seed of every run's initial model and data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The privacy experiment keeps the points already in OUT/privacy.csv that this run does
    /// not redo (they must have the same seed), so one table and plot show them all.
    #[arg(long)]
    merge: bool,
}

/// Training images of the quick suite.
const QUICK_IMAGES: usize = 2400;

fn main() -> anyhow::Result<()> {
    fl_core::model::allocator::keep_freed_memory();
    let args = Args::parse();
    // The nodes' own logs only when asked for (`RUST_LOG=info`): the suite prints its
    // progress itself.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
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
    let mut ctx = Ctx::new(data, data_dir.clone(), scale, args.out.clone());
    let epsilons_flag = match &args.epsilons {
        None => String::new(),
        Some(points) => {
            let list: Vec<String> = points.iter().map(ToString::to_string).collect();
            format!("--epsilons {} ", list.join(","))
        }
    };
    ctx.privacy_points = match args.epsilons {
        Some(points) => points,
        None if scale.quick => PrivacyPoint::QUICK.to_vec(),
        None => PrivacyPoint::DEFAULT.to_vec(),
    };
    ctx.seed = args.seed;
    ctx.merge_privacy = args.merge;
    let seed_flag = match args.seed {
        0 => String::new(),
        s => format!("--seed {s} "),
    };
    let sections_dir = args.out.join("sections");
    std::fs::create_dir_all(&sections_dir)
        .with_context(|| format!("creating {}", sections_dir.display()))?;
    let suite = if scale.quick { "--quick " } else { "" };
    for name in &names {
        let s = ctx
            .run(name)
            .with_context(|| format!("experiment {name}"))?;
        eprintln!("{name}: {:.0} s", s.seconds);
        let flags = if *name == "privacy" {
            let merge = if args.merge { "--merge " } else { "" };
            format!("{seed_flag}{epsilons_flag}{merge}")
        } else {
            seed_flag.clone()
        };
        let mut text = format!(
            "## {} ({:.0} s)\n\nMade by `cargo run --release -p experiments -- {name} {suite}{flags}--data DIR` on {} training \
             and {} test images.\n\n{}\n",
            s.title,
            s.seconds,
            ctx.data.train.len(),
            ctx.data.test.len(),
            s.body
        );
        for f in &s.files {
            let rel = relative(f, &args.out);
            if rel.ends_with(".png") {
                text.push_str(&format!("![{rel}]({rel})\n\n"));
            } else {
                text.push_str(&format!("Data: [{rel}]({rel})\n\n"));
            }
        }
        let path = sections_dir.join(format!("{name}.md"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let total = started.elapsed().as_secs_f64() / 60.0;
    let timing = sections_dir.join("suite.txt");
    if names.len() == EXPERIMENTS.len() {
        let line =
            format!("The whole suite (`-- all {suite}--data DIR`) last took {total:.1} minutes.\n");
        std::fs::write(&timing, line).with_context(|| format!("writing {}", timing.display()))?;
    }
    // The report is every section on disk, in the suite's order, so running one experiment
    // by name replaces its section only.
    let mut report = format!(
        "# Evaluation\n\nEvery experiment runs real peers on loopback in one process, on this machine ({} CPU cores, \
         no GPU). Each section says the command and data that made it.\n\n{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string(&timing).unwrap_or_default(),
    );
    for (name, _) in EXPERIMENTS {
        if let Ok(text) = std::fs::read_to_string(sections_dir.join(format!("{name}.md"))) {
            report.push('\n');
            report.push_str(&text);
        }
    }
    let path = args.out.join("REPORT.md");
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
