//! A LAN of network namespaces for tests: a bridge in its own namespace and hosts plugged
//! into it by veth pairs, each host with one address in 10.199.0.0/24; all removed on drop.
//! Needs root and `ip` (iproute2).

use std::path::Path;
use std::process::Command;

/// A bridge in its own namespace and hosts (namespaces) plugged into it, each with one
/// address in 10.199.0.0/24; all removed on drop.
pub struct Lan {
    prefix: String,
    hosts: usize,
}

impl Lan {
    /// Makes a LAN of `hosts` hosts, or says why it cannot.
    pub fn new(tag: &str, hosts: usize) -> Result<Lan, String> {
        let prefix = format!("fl{}{tag}", std::process::id());
        let hub = format!("{prefix}hub");
        ip(&["netns", "add", &hub])?;
        let mut lan = Lan { prefix, hosts: 0 };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = lan.host(i);
            ip(&["netns", "add", &ns])?;
            lan.hosts = i + 1;
            let (inner, outer) = ("eth0".to_string(), format!("vb{i}"));
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lan.addr(i)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    pub fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    pub fn host(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("10.199.0.{}", i + 1)
    }

    /// Unplugs host `i` from the bridge: a network partition.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.hub(), "link", "set", &format!("vb{i}"), "down"])
    }

    /// Plugs host `i` back in.
    pub fn join(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.hub(), "link", "set", &format!("vb{i}"), "up"])
    }

    /// `fl ARGS` on host `i` with repo `repo`.
    pub fn fl(&self, i: usize, repo: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(i), env!("CARGO_BIN_EXE_fl")])
            .args(args)
            .env("FL_REPO", repo)
            .env_remove("FL_DATA");
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.host(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The LAN, or `None` after saying why there is none (a failure under FL_REQUIRE_NETNS=1).
pub fn lan(tag: &str, hosts: usize) -> Option<Lan> {
    match Lan::new(tag, hosts) {
        Ok(lan) => Some(lan),
        Err(why) if std::env::var("FL_REQUIRE_NETNS").is_ok_and(|v| v == "1") => {
            panic!("cannot make network namespaces: {why}")
        }
        Err(why) => {
            eprintln!(
                "skipped: cannot make network namespaces here (needs root and iproute2): {why}"
            );
            None
        }
    }
}
