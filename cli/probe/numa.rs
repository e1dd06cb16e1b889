//! NUMA nodes from /sys/devices/system/node: CPUs, memory and distances per node, and the
//! socket each node belongs to (the package of its first CPU).

use hy_planner::hardware::NumaNode;

use super::cpu::Topology;
use super::memory::meminfo_field;
use super::sysfs::{parse_cpulist, ProbeRoot};

const NODE_DIR: &str = "sys/devices/system/node";

pub fn probe(root: &ProbeRoot, topo: &Topology, total_memory: u64, notes: &mut Vec<String>) -> Vec<NumaNode> {
    let ids = root.indexed_entries(NODE_DIR, "node");
    if ids.is_empty() {
        // Kernels without NUMA support (and some containers) have no node directory; the
        // machine is then one node holding every CPU and all memory.
        notes.push("no NUMA information in sysfs; treating the machine as one node".into());
        return vec![NumaNode {
            id: 0,
            cpus: topo.ids(),
            memory_bytes: total_memory,
            distances: vec![10],
            socket: topo.cpus.first().map(|c| c.package),
        }];
    }
    ids.iter().map(|&id| node(root, topo, id, notes)).collect()
}

fn node(root: &ProbeRoot, topo: &Topology, id: u32, notes: &mut Vec<String>) -> NumaNode {
    let dir = format!("{NODE_DIR}/node{id}");
    let cpus = match root.read_trimmed(&format!("{dir}/cpulist")).map(|t| parse_cpulist(&t)) {
        Some(Ok(cpus)) => cpus,
        Some(Err(e)) => {
            notes.push(format!("node{id}/cpulist unreadable ({e}); its CPUs are unknown"));
            Vec::new()
        }
        None => Vec::new(),
    };
    let memory_bytes =
        root.read_string(&format!("{dir}/meminfo")).ok().and_then(|t| meminfo_field(&t, "MemTotal:")).unwrap_or(0);
    let distances = root
        .read_trimmed(&format!("{dir}/distance"))
        .map(|t| t.split_whitespace().filter_map(|d| d.parse().ok()).collect())
        .unwrap_or_default();
    let socket = cpus.iter().find_map(|&c| topo.package_of(c));
    NumaNode { id, cpus, memory_bytes, distances, socket }
}
