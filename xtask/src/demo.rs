//! `cargo xtask demo`: a 2-node x 2-pod cluster in network namespaces with
//! real agents; every pod talks to every other pod through the mesh.
use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use mesh_testbed::{Cluster, ClusterSpec, cluster::Resources};

const STATE: &str = "/run/mesh-demo/state.json";

#[derive(clap::Args)]
pub struct Args {
    /// Leave the cluster running (a playground); remove it with --down.
    #[arg(long)]
    keep: bool,
    /// Remove a cluster left by --keep.
    #[arg(long, conflicts_with = "keep")]
    down: bool,
    /// Splice the local app<->agent hops with sk_msg.
    #[arg(long)]
    splice: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.down {
        return down();
    }
    if PathBuf::from(STATE).exists() {
        anyhow::bail!(
            "a demo cluster is still up ({STATE}); remove it with `cargo xtask demo --down`"
        );
    }
    // The README's first command on a fresh machine: install what it lacks
    // (the eBPF toolchain, the test bed's tools) before building.
    crate::setup::run()?;
    crate::build_userspace(false)?;
    mesh_testbed::sys::ensure_bpffs()?;
    println!("\n== starting 2 nodes x 2 pods, one mesh agent per node");
    let c =
        Cluster::start(ClusterSpec::new(&[&["web", "api"], &["db", "cache"]]).splice(args.splice))?;
    for n in &c.nodes {
        println!(
            "node {:<14} ip {:<10} agent log {}",
            n.name,
            n.ip,
            n.log.with_extension("0.log").display()
        );
    }
    let names: Vec<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    let servers: Vec<_> = names
        .iter()
        .map(|p| c.serve(p, "8080", "ident"))
        .collect::<Result<_, _>>()?;

    println!("\n== every pod connects to every other pod on :8080");
    println!(
        "{:<7} {:<7} {:<18} {:<22} result",
        "from", "to", "destination", "server saw source"
    );
    for from in &names {
        for to in names.iter().filter(|t| *t != from) {
            let dst = format!("{}:8080", c.pod(to).ip);
            let v = c.client(from, &["ident", "--to", &dst], Duration::from_secs(10))?;
            let ok = v["server"] == to.as_str() && v["echoed"] == true;
            println!(
                "{:<7} {:<7} {:<18} {:<22} {}",
                from,
                to,
                dst,
                v["peer"].as_str().unwrap_or("-"),
                if ok { "ok" } else { "FAILED" }
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));

    println!("\n== what the agents saw");
    for (i, n) in c.nodes.iter().enumerate() {
        let log = c.agent_log(i);
        let conns: Vec<_> = log
            .iter()
            .filter(|l| l["message"] == "connection closed")
            .collect();
        println!("node {} — {} proxied connections", n.name, conns.len());
        for l in conns.iter().take(6) {
            println!(
                "  {:<8} pod {:<12} {} -> {}  bytes out/in {}/{}  {} {}",
                l["direction"].as_str().unwrap_or(""),
                l["pod"].as_str().unwrap_or(""),
                l["src"].as_str().unwrap_or("app"),
                l["dst"].as_str().unwrap_or(""),
                l["bytes_sent"],
                l["bytes_received"],
                l["security"].as_str().unwrap_or(""),
                l["source_identity"].as_str().unwrap_or("")
            );
        }
        let counters = c.counters(i)?;
        let shown: Vec<String> = counters
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  kernel counters: {}", shown.join(" "));
    }
    drop(servers);

    println!("\n== mesh status");
    let (_, status) = c.mesh_cli(0, &["status"])?;
    print!("{status}");
    println!("\n== kernel flow metrics (sock_ops records, per workload pair; :15020/metrics)");
    println!(
        "{:<10} {:<10} {:<10} {:>6} {:<9} {:>6} {:>6} {:>10} {:>10}",
        "node", "source", "dest", "port", "direction", "opened", "closed", "sent", "received"
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let addr = std::net::SocketAddr::new(n.ip.into(), 15021);
        let (_, body) = c.node_get(i, addr, "/flows")?;
        let flows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        for f in flows {
            println!(
                "{:<10} {:<10} {:<10} {:>6} {:<9} {:>6} {:>6} {:>10} {:>10}",
                n.name.rsplit('-').next().unwrap_or(""),
                f["source_workload"].as_str().unwrap_or(""),
                f["destination_workload"].as_str().unwrap_or(""),
                f["destination_port"].to_string(),
                f["direction"].as_str().unwrap_or(""),
                f["connections_opened"].to_string(),
                f["connections_closed"].to_string(),
                f["bytes_sent"].to_string(),
                f["bytes_received"].to_string()
            );
        }
    }
    println!(
        "(tunnels between nodes stay pooled for 60 s, so their bytes appear when they close; \
         connections opened are counted at once)"
    );

    if args.keep {
        let pods = c.pods.clone();
        let nodes = c.nodes.clone();
        let res = c.keep();
        save(&res)?;
        println!("\n== the cluster stays up (remove it with `cargo xtask demo --down`)");
        println!("{:<7} {:<12} {:<22} netns", "pod", "ip", "cgroup");
        for p in &pods {
            println!(
                "{:<7} {:<12} {:<22} /run/netns/{}",
                p.name,
                p.ip,
                p.cgroup.file_name().unwrap().to_string_lossy(),
                p.netns
            );
        }
        let p = &pods[0];
        println!(
            "\nRun a program inside pod {} (its netns and cgroup, so the mesh captures it):",
            p.name
        );
        println!(
            "  sh -c 'echo $$ > {}/cgroup.procs && exec nsenter --net=/run/netns/{} -- curl -s http://{}:8080/'",
            p.cgroup.display(),
            p.netns,
            pods[2].ip
        );
        println!("(start a server the same way, e.g. `python3 -m http.server 8080`)");
        let cli = std::env::current_exe()?.with_file_name("mesh");
        println!(
            "\nSee the mesh (from node {}'s network namespace, where its agent listens):",
            nodes[0].name
        );
        println!(
            "  nsenter --net=/run/netns/{} -- {} --config {} status",
            nodes[0].netns,
            cli.display(),
            nodes[0].config.display()
        );
        println!(
            "  nsenter --net=/run/netns/{} -- {} --config {} inspect default/{}",
            nodes[0].netns,
            cli.display(),
            nodes[0].config.display(),
            pods[2].name
        );
    } else {
        println!("\n== tearing down");
    }
    Ok(())
}

fn save(res: &Resources) -> anyhow::Result<()> {
    let path = PathBuf::from(STATE);
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_vec_pretty(res)?)?;
    Ok(())
}

fn down() -> anyhow::Result<()> {
    let text = match std::fs::read(STATE) {
        Ok(t) => t,
        Err(_) => {
            println!("no demo cluster is up");
            return Ok(());
        }
    };
    let res: Resources = serde_json::from_slice(&text).context(STATE)?;
    res.teardown();
    std::fs::remove_file(STATE)?;
    println!("demo cluster removed (namespaces, cgroups, pinned programs, agents)");
    Ok(())
}
