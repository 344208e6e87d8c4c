//! `fl pubsub pub` and `fl pubsub sub`: signed gossipsub messages on a topic, for scripts and
//! for checking that peers reach each other.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::RepoPath;
use super::node::{NetArgs, runtime, start};

#[derive(Debug, Subcommand)]
pub(super) enum Pubsub {
    /// Publishes a message, signed with the node's key, once a peer has joined the topic.
    Pub(PubArgs),
    /// Prints each message that arrives on a topic as a JSON line (`from`, `topic`, `data`).
    Sub(SubArgs),
}

#[derive(Debug, Args)]
pub(super) struct PubArgs {
    /// The topic.
    topic: String,
    /// The message (UTF-8 text).
    data: String,
    #[command(flatten)]
    net: NetArgs,
    /// Seconds to wait for a peer on the topic before giving up.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Debug, Args)]
pub(super) struct SubArgs {
    /// The topic.
    topic: String,
    #[command(flatten)]
    net: NetArgs,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Exit with an error if `--count` messages have not arrived after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
}

pub(super) fn run(cmd: Pubsub, repo: &RepoPath) -> anyhow::Result<()> {
    let repo = repo.open()?;
    runtime()?.block_on(async {
        match cmd {
            Pubsub::Pub(args) => {
                let node = start(&repo, args.net.config(&["/ip4/0.0.0.0/tcp/0"])?).await?;
                node.subscribe(&args.topic).await?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
                // The topic's peers are learnt from their subscriptions, a heartbeat or so
                // after connecting; until then publishing fails.
                loop {
                    match node
                        .publish(&args.topic, args.data.clone().into_bytes())
                        .await
                    {
                        Ok(()) => break,
                        Err(e) if tokio::time::Instant::now() >= deadline => {
                            bail!("{e} (after {} s)", args.timeout)
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                // Let the message leave before the connections close.
                tokio::time::sleep(Duration::from_secs(1)).await;
                println!("published on {}", args.topic);
                Ok(())
            }
            Pubsub::Sub(args) => {
                let node = start(&repo, args.net.config(&["/ip4/0.0.0.0/tcp/0"])?).await?;
                let mut inbox = node.gossip();
                node.subscribe(&args.topic).await?;
                let mut out = std::io::stdout();
                writeln!(out, "peer id {}", node.peer_id())?;
                for addr in node.listen_addrs().await? {
                    writeln!(out, "listening on {addr}")?;
                }
                out.flush()?;
                let deadline = args
                    .timeout
                    .map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
                let mut seen = 0u64;
                while args.count.is_none_or(|c| seen < c) {
                    let next = match deadline {
                        Some(d) => tokio::time::timeout_at(d, inbox.recv())
                            .await
                            .with_context(|| {
                                format!("{seen} messages on {} before the timeout", args.topic)
                            })?,
                        None => inbox.recv().await,
                    };
                    let message = match next {
                        Ok(m) => m,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            eprintln!("fl: {n} messages dropped: reading too slowly");
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if message.topic != args.topic {
                        continue;
                    }
                    seen += 1;
                    let line = serde_json::json!({
                        "from": message.source.map(|p| p.to_string()),
                        "topic": message.topic,
                        "data": String::from_utf8_lossy(&message.data),
                    });
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                Ok(())
            }
        }
    })
}
