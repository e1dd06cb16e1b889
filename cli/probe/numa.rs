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
    let nodes: Vec<NumaNode> = ids.iter().map(|&id| node(root, topo, id, notes)).collect();
    let on_nodes: u64 = nodes.iter().map(|n| n.memory_bytes).sum();
    // Seen in Firecracker guests: memory is hot-plugged as it is used, and the node files
    // lag far behind MemTotal. Planning should use MemTotal then, so say so.
    if total_memory > 0 && on_nodes < total_memory / 10 * 9 {
        notes.push(format!(
            "the nodes' memory adds up to {:.1} GiB of {:.1} GiB MemTotal (memory hot-plugged \
             or ballooned, as in some VMs); per-node figures are a lower bound",
            on_nodes as f64 / (1u64 << 30) as f64,
            total_memory as f64 / (1u64 << 30) as f64
        ));
    }
    nodes
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(nodes: &[(u32, &str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (id, cpus, kb) in nodes {
            let d = dir.path().join(format!("{NODE_DIR}/node{id}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpulist"), format!("{cpus}\n")).unwrap();
            std::fs::write(d.join("meminfo"), format!("Node {id} MemTotal: {kb} kB\n")).unwrap();
            std::fs::write(d.join("distance"), "10 21\n").unwrap();
        }
        dir
    }

    fn topo(packages: &[(u32, u32)]) -> Topology {
        Topology {
            cpus: packages
                .iter()
                .map(|&(id, package)| super::super::cpu::LogicalCpu { id, package, core: id })
                .collect(),
        }
    }

    #[test]
    fn nodes_with_sockets_and_memory() {
        let dir = tree(&[(0, "0-1", 1024), (1, "2-3", 2048)]);
        let mut notes = Vec::new();
        let nodes = probe(&ProbeRoot::new(dir.path()), &topo(&[(0, 0), (1, 0), (2, 1), (3, 1)]), 3 << 20, &mut notes);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].cpus, vec![2, 3]);
        assert_eq!(nodes[1].socket, Some(1));
        assert_eq!(nodes[1].memory_bytes, 2 << 20);
        assert_eq!(nodes[0].distances, vec![10, 21]);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn node_memory_far_below_memtotal_is_noted() {
        // The device machine (Firecracker): node0 4.3 GiB while MemTotal says 125.9 GiB.
        let dir = tree(&[(0, "0-15", 4_550_128)]);
        let mut notes = Vec::new();
        probe(&ProbeRoot::new(dir.path()), &topo(&[(0, 0)]), 135_148_564_480, &mut notes);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("lower bound"), "{notes:?}");
    }
}
