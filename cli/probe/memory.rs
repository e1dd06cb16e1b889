//! Memory: total from /proc/meminfo, DIMMs from SMBIOS (else EDAC), and from the DIMMs the
//! populated channels per socket, the configured MT/s and the theoretical bandwidth
//! channels × MT/s × 8 B.

use std::collections::{BTreeMap, BTreeSet};

use hy_planner::hardware::{Dimm, MemorySpec};

use super::smbios;
use super::sysfs::ProbeRoot;

const DMI_TABLE: &str = "sys/firmware/dmi/tables/DMI";
const EDAC_MC: &str = "sys/devices/system/edac/mc";

/// Consequence of unknown channels or speed for planning, said wherever they are unknown.
const UNKNOWN_EFFECT: &str = "without channels and MT/s the theoretical bandwidth is unknown: \
`hy plan` then relies on measured bandwidth (`hy probe --bench --save FILE`) or a profile's \
nominal figure, and a hand-edited hardware file can declare channels_per_socket and mts";

/// Reads memory facts; `sockets` (from the CPU topology) places DIMMs whose slot names do not
/// say which socket they belong to. Notes explain every unknown and assumption.
pub fn probe(root: &ProbeRoot, sockets: u32, notes: &mut Vec<String>) -> MemorySpec {
    let total_bytes = meminfo_total(root).unwrap_or_else(|| {
        notes.push("/proc/meminfo has no MemTotal line; total memory unknown (0)".into());
        0
    });
    let (source, dimms) = match read_dimms(root, notes) {
        Some(found) => found,
        None => return MemorySpec { total_bytes, dimm_source: "unknown".into(), ..Default::default() },
    };
    let mut spec = MemorySpec { total_bytes, dimm_source: source.into(), ..Default::default() };
    let (dimms, channels) = place_dimms(dimms, sockets.max(1), notes);
    spec.dimms = dimms;
    spec.mts = transfer_rate(&spec.dimms, notes);
    derive_bandwidth(&mut spec, &channels, sockets.max(1), notes);
    spec
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn meminfo_total(root: &ProbeRoot) -> Option<u64> {
    meminfo_field(&root.read_string("proc/meminfo").ok()?, "MemTotal:")
}

/// MemAvailable from /proc/meminfo, in bytes (sizes the benchmark's arrays).
pub fn meminfo_available(root: &ProbeRoot) -> Option<u64> {
    meminfo_field(&root.read_string("proc/meminfo").ok()?, "MemAvailable:")
}

/// Finds "KEY   123456 kB" anywhere in a meminfo-style text (the per-node files prefix
/// lines with "Node 0 "), returning bytes.
pub fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once(key)?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let unit = parts.next().unwrap_or("");
        Some(if unit.eq_ignore_ascii_case("kb") { value * 1024 } else { value })
    })
}

/// SMBIOS first, then EDAC; `None` (with notes saying why) when neither is available.
fn read_dimms(root: &ProbeRoot, notes: &mut Vec<String>) -> Option<(&'static str, Vec<Dimm>)> {
    let smbios_problem = match root.read_bytes(DMI_TABLE) {
        Ok(table) => match smbios::parse_memory_devices(&table) {
            Ok(dimms) if !dimms.is_empty() => return Some(("smbios", dimms)),
            Ok(_) => "the SMBIOS table lists no populated memory devices".to_string(),
            Err(e) => format!("the SMBIOS table is malformed ({e})"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            "the SMBIOS table is readable only by root (run `sudo hy probe` to read DIMMs)".into()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "there is no SMBIOS table (/sys/firmware/dmi/tables/DMI; typical of VMs and containers)".into()
        }
        Err(e) => format!("the SMBIOS table could not be read ({e})"),
    };
    let edac = read_edac(root);
    if !edac.is_empty() {
        notes.push(format!("DIMMs from EDAC because {smbios_problem}; EDAC does not report speeds"));
        return Some(("edac", edac));
    }
    notes.push(format!("DIMMs unknown: {smbios_problem}, and EDAC lists no DIMMs; {UNKNOWN_EFFECT}"));
    None
}

/// DIMMs from the EDAC driver (`mc*/dimm*`): size, type, label and channel; no speeds.
fn read_edac(root: &ProbeRoot) -> Vec<Dimm> {
    let mut out = Vec::new();
    let mcs = root.indexed_entries(EDAC_MC, "mc");
    for &mc in &mcs {
        let mc_dir = format!("{EDAC_MC}/mc{mc}");
        for dimm in root.indexed_entries(&mc_dir, "dimm") {
            let dir = format!("{mc_dir}/dimm{dimm}");
            let Some(mib) = root.read_u64(&format!("{dir}/size")).filter(|&s| s > 0) else {
                continue;
            };
            let label = root.read_trimmed(&format!("{dir}/dimm_label"));
            let location = root.read_trimmed(&format!("{dir}/dimm_location"));
            let channel = location.as_deref().and_then(|l| word_after(l, "channel"));
            out.push(Dimm {
                locator: label.clone().unwrap_or_else(|| format!("mc{mc}/dimm{dimm}")),
                bank_locator: location,
                size_bytes: mib << 20,
                memory_type: root.read_trimmed(&format!("{dir}/dimm_mem_type")).and_then(|t| ddr_generation(&t)),
                socket: label
                    .as_deref()
                    .and_then(|l| word_after(&l.replace('#', " "), "SrcID"))
                    .and_then(|s| s.parse().ok()),
                channel: channel.map(|c| format!("mc{mc}.ch{c}")),
                ..Default::default()
            });
        }
    }
    // EDAC numbers controllers socket by socket; without a SrcID label, place by controller.
    if out.iter().any(|d| d.socket.is_none()) && !mcs.is_empty() {
        for d in &mut out {
            d.socket = None;
        }
    }
    out
}

/// The whitespace-separated word following `key` (case-insensitive), e.g. "channel 1" → "1".
fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case(key) {
            return words.next().map(str::to_string);
        }
    }
    None
}

/// "Registered-DDR5" → "DDR5", "Unbuffered-DDR4" → "DDR4", "LPDDR5" → "LPDDR5".
fn ddr_generation(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.to_ascii_uppercase().contains("DDR"))
        .map(|w| w.to_ascii_uppercase())
}

/// Where a DIMM sits, as far as its slot names say.
#[derive(Debug, Default, PartialEq)]
pub struct Location {
    /// Socket label as written (digits, or a letter for "A1"-style names); ranked later.
    pub socket: Option<String>,
    /// Channel label as written ("A", "0").
    pub channel: Option<String>,
}

/// Keywords that may be glued to their value ("CPU0", "DIMMA1", "Channel0").
const KEYWORDS: [&str; 8] = ["CHANNEL", "SOCKET", "CHAN", "PROC", "NODE", "DIMM", "CPU", "CH"];

/// Reads socket and channel from vendor slot names. Patterns seen in the field:
/// "P0 CHANNEL A"/"DIMM 0" (AMI on EPYC), "P1-DIMMA1" with "P0_Node0_Channel0_Dimm0"
/// (Supermicro), "DIMM_P0_A0" (Gigabyte), "CPU0_DIMM_A1"/"NODE 0" (Intel AMI),
/// "PROC 1 DIMM 3" (HPE, channel not in the name), "A1"/"B12" (Dell: letter = socket).
pub fn locate(locator: &str, bank: Option<&str>) -> Location {
    let text = format!("{} {}", locator, bank.unwrap_or("")).to_ascii_uppercase();
    let tokens = tokenize(&text);
    let mut loc = Location::default();
    let mut p_token = None;
    let mut node = None;
    let mut letter_slots = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let next = tokens.get(i + 1).map(String::as_str);
        let next_is_num = next.is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        match t {
            "CPU" | "PROC" | "SOCKET" if next_is_num => {
                loc.socket.get_or_insert(next.unwrap_or_default().to_string());
                i += 1;
            }
            "CHANNEL" | "CHAN" | "CH" if next.is_some() => {
                loc.channel.get_or_insert(next.unwrap_or_default().to_string());
                i += 1;
            }
            "NODE" if next_is_num => {
                node.get_or_insert(next.unwrap_or_default().to_string());
                i += 1;
            }
            _ if is_letter_number(t, 'P') && p_token.is_none() => p_token = Some(t[1..].to_string()),
            _ if is_letter_number(t, '*') => letter_slots.push(t.to_string()),
            _ => {}
        }
        i += 1;
    }
    let whole = locator.trim().to_ascii_uppercase();
    let dell_style = is_letter_number(&whole, '*') && bank.is_none();
    if dell_style {
        loc.socket.get_or_insert(whole[..1].to_string());
        return loc;
    }
    if loc.socket.is_none() {
        loc.socket = p_token.or(node);
    }
    if loc.channel.is_none() {
        loc.channel = letter_slots.first().map(|s| s[..1].to_string());
    }
    loc
}

/// Splits on non-alphanumerics and unglues keywords from their values ("CPU0" → "CPU" "0",
/// "DIMMA1" → "DIMM" "A1", "CHANNELA" → "CHANNEL" "A"), leaving other words whole.
fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty()) {
        match split_keyword(raw) {
            Some((k, rest)) => {
                out.push(k.to_string());
                out.push(rest.to_string());
            }
            None => out.push(raw.to_string()),
        }
    }
    out
}

fn split_keyword(raw: &str) -> Option<(&'static str, &str)> {
    if KEYWORDS.contains(&raw) {
        return None;
    }
    KEYWORDS.iter().find_map(|&k| {
        let rest = raw.strip_prefix(k)?;
        let digits = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
        let letter = rest.len() == 1 && rest.bytes().all(|b| b.is_ascii_alphabetic());
        // "CH" is too short to trust with letters ("CHIP"); the others take "A" or "A1" too.
        let ok = digits || (k != "CH" && (letter || is_letter_number(rest, '*')));
        ok.then_some((k, rest))
    })
}

/// A letter followed by 1–2 digits ("A1", "P0"); `letter` '*' accepts any letter.
fn is_letter_number(t: &str, letter: char) -> bool {
    let mut chars = t.chars();
    let Some(first) = chars.next() else { return false };
    let digits = chars.as_str();
    first.is_ascii_uppercase()
        && (letter == '*' || first == letter)
        && (1..=2).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Per socket index: the set of channel keys populated.
type ChannelMap = BTreeMap<u32, BTreeSet<String>>;

/// Assigns each DIMM a socket index and channel key, and returns the populated channels per
/// socket. Where names do not say, documented assumptions apply (and are noted).
fn place_dimms(mut dimms: Vec<Dimm>, sockets: u32, notes: &mut Vec<String>) -> (Vec<Dimm>, ChannelMap) {
    let locations: Vec<Location> = dimms
        .iter()
        .map(|d| match (&d.socket, &d.channel) {
            // EDAC already knows its channel (and maybe socket).
            (s, Some(c)) => Location { socket: s.map(|s| s.to_string()), channel: Some(c.clone()) },
            _ => locate(&d.locator, d.bank_locator.as_deref()),
        })
        .collect();
    let socket_of = socket_indices(&locations, dimms.len(), sockets, notes);
    let all_channels_named = locations.iter().all(|l| l.channel.is_some());
    if !all_channels_named {
        notes.push(
            "slot names do not say the memory channel; assuming one DIMM per channel \
             (true for nearly all servers populated for bandwidth)"
                .into(),
        );
    }
    let mut channels = ChannelMap::new();
    for (i, (d, l)) in dimms.iter_mut().zip(&locations).enumerate() {
        let socket = socket_of[i];
        let key = match (&l.channel, all_channels_named) {
            (Some(c), true) => c.clone(),
            _ => format!("dimm{i}"),
        };
        d.socket = Some(socket);
        d.channel = all_channels_named.then(|| key.clone());
        channels.entry(socket).or_default().insert(key);
    }
    (dimms, channels)
}

/// Socket index per DIMM: slot-name labels ranked in order (so "P1/P2" and "P0/P1" both give
/// 0/1), else all on socket 0 for a one-socket box, else DIMMs split in table order.
fn socket_indices(locations: &[Location], n: usize, sockets: u32, notes: &mut Vec<String>) -> Vec<u32> {
    let labels: BTreeSet<SortKey> = locations.iter().filter_map(|l| l.socket.as_deref().map(SortKey::new)).collect();
    let all_labelled = locations.iter().all(|l| l.socket.is_some());
    if all_labelled && labels.len() as u32 <= sockets {
        let rank: BTreeMap<&SortKey, u32> = labels.iter().zip(0..).collect();
        return locations
            .iter()
            .map(|l| l.socket.as_deref().map(SortKey::new).and_then(|k| rank.get(&k).copied()).unwrap_or(0))
            .collect();
    }
    if sockets == 1 {
        return vec![0; n];
    }
    notes.push(format!(
        "slot names do not say the socket; assuming the firmware lists DIMMs socket by socket \
         ({n} DIMMs split evenly over {sockets} sockets)"
    ));
    let per = n.div_ceil(sockets as usize).max(1);
    (0..n).map(|i| (i / per) as u32).collect()
}

/// Orders socket labels numerically when they are numbers ("2" < "10"), else as text.
#[derive(PartialEq, Eq, PartialOrd, Ord, Debug)]
struct SortKey(Option<u64>, String);

impl SortKey {
    fn new(label: &str) -> Self {
        SortKey(label.parse().ok(), label.to_string())
    }
}

/// The memory clock all channels run at: the lowest configured speed (the controller runs
/// a socket's channels at one rate), else the lowest rated speed.
fn transfer_rate(dimms: &[Dimm], notes: &mut Vec<String>) -> Option<u32> {
    if let Some(mts) = dimms.iter().filter_map(|d| d.configured_mts).min() {
        return Some(mts);
    }
    if let Some(mts) = dimms.iter().filter_map(|d| d.speed_mts).min() {
        notes.push(format!(
            "configured memory speed not reported; using the DIMMs' rated {mts} MT/s (the \
             real rate may be lower)"
        ));
        return Some(mts);
    }
    notes.push(format!("memory speed unknown (MT/s not reported); {UNKNOWN_EFFECT}"));
    None
}

/// Fills channels_per_socket and the theoretical bandwidth (all sockets).
fn derive_bandwidth(spec: &mut MemorySpec, channels: &ChannelMap, sockets: u32, notes: &mut Vec<String>) {
    let counts: Vec<u32> = (0..sockets).map(|s| channels.get(&s).map_or(0, |c| c.len() as u32)).collect();
    let total: u32 = counts.iter().sum();
    let (min, max) = (counts.iter().copied().min().unwrap_or(0), counts.iter().copied().max().unwrap_or(0));
    if min != max {
        notes.push(format!(
            "sockets have unequal populated channels ({counts:?}); channels_per_socket shows the \
             smallest, the theoretical bandwidth counts all {total}"
        ));
    }
    spec.channels_per_socket = Some(min).filter(|&c| c > 0);
    spec.theoretical_bandwidth_gbps = spec.mts.map(|mts| theoretical_gbps(total, mts));
}

/// channels × MT/s × 8 bytes per transfer, in decimal GB/s.
pub fn theoretical_gbps(channels: u32, mts: u32) -> f64 {
    f64::from(channels) * f64::from(mts) * 8.0 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(socket: Option<&str>, channel: Option<&str>) -> Location {
        Location { socket: socket.map(Into::into), channel: channel.map(Into::into) }
    }

    #[test]
    fn vendor_slot_names() {
        assert_eq!(locate("DIMM 0", Some("P0 CHANNEL A")), loc(Some("0"), Some("A")));
        assert_eq!(locate("P1-DIMMA1", Some("P0_Node0_Channel0_Dimm0")), loc(Some("1"), Some("0")));
        assert_eq!(locate("DIMM_P1_L1", Some("BANK 0")), loc(Some("1"), Some("L")));
        assert_eq!(locate("CPU0_DIMM_B2", Some("NODE 0")), loc(Some("0"), Some("B")));
        assert_eq!(locate("CPU1 DIMM H1", None), loc(Some("1"), Some("H")));
        assert_eq!(locate("PROC 2 DIMM 5", None), loc(Some("2"), None));
        assert_eq!(locate("B7", None), loc(Some("B"), None));
        assert_eq!(locate("DIMM_A1", Some("BANK 0")), loc(None, Some("A")));
        assert_eq!(locate("ChannelA-DIMM0", Some("BANK 0")), loc(None, Some("A")));
        assert_eq!(locate("DIMM 1", None), loc(None, None));
    }

    fn dimm(locator: &str, bank: Option<&str>, mts: u32) -> Dimm {
        Dimm {
            locator: locator.into(),
            bank_locator: bank.map(Into::into),
            size_bytes: 64 << 30,
            configured_mts: Some(mts),
            speed_mts: Some(mts),
            ..Default::default()
        }
    }

    #[test]
    fn channels_from_named_slots_two_dimms_per_channel() {
        // Two DIMMs per channel on channels A..D of one socket: 4 channels, not 8.
        let dimms: Vec<Dimm> = ["A", "B", "C", "D"]
            .iter()
            .flat_map(|c| [1, 2].map(|slot| dimm(&format!("CPU0_DIMM_{c}{slot}"), Some("NODE 0"), 4800)))
            .collect();
        let mut notes = Vec::new();
        let (placed, channels) = place_dimms(dimms, 1, &mut notes);
        assert_eq!(channels[&0].len(), 4);
        assert_eq!(placed[3].channel.as_deref(), Some("B"));
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn one_based_socket_labels_rank_to_zero_based() {
        let dimms: Vec<Dimm> =
            (1..=2).flat_map(|p| ["A", "B"].map(|c| dimm(&format!("P{p}-DIMM{c}1"), None, 6400))).collect();
        let mut notes = Vec::new();
        let (placed, channels) = place_dimms(dimms, 2, &mut notes);
        assert_eq!(placed[0].socket, Some(0));
        assert_eq!(placed[3].socket, Some(1));
        assert_eq!((channels[&0].len(), channels[&1].len()), (2, 2));
    }

    #[test]
    fn unnamed_slots_assume_one_dimm_per_channel_and_split_sockets() {
        let dimms: Vec<Dimm> = (0..8).map(|i| dimm(&format!("DIMM {i}"), None, 5600)).collect();
        let mut notes = Vec::new();
        let (placed, channels) = place_dimms(dimms, 2, &mut notes);
        assert_eq!((channels[&0].len(), channels[&1].len()), (4, 4));
        assert_eq!(placed[4].socket, Some(1));
        assert_eq!(placed[4].channel, None);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn theoretical_bandwidth_matches_the_design_figures() {
        // DDR5-6400 × 24 channels = 1228.8 GB/s (DESIGN.md); DDR5-4800 × 12 = 460.8 GB/s.
        assert!((theoretical_gbps(24, 6400) - 1228.8).abs() < 1e-9);
        assert!((theoretical_gbps(12, 4800) - 460.8).abs() < 1e-9);
        let mut spec = MemorySpec { mts: Some(6400), ..Default::default() };
        let channels: ChannelMap = (0..2).map(|s| (s, (0..12).map(|c| c.to_string()).collect())).collect();
        derive_bandwidth(&mut spec, &channels, 2, &mut Vec::new());
        assert_eq!(spec.channels_per_socket, Some(12));
        assert!((spec.theoretical_bandwidth_gbps.unwrap() - 1228.8).abs() < 1e-9);
    }

    #[test]
    fn unequal_sockets_report_min_and_count_all() {
        let mut spec = MemorySpec { mts: Some(4800), ..Default::default() };
        let channels: ChannelMap =
            [(0, 8), (1, 6)].into_iter().map(|(s, n)| (s, (0..n).map(|c: u32| c.to_string()).collect())).collect();
        let mut notes = Vec::new();
        derive_bandwidth(&mut spec, &channels, 2, &mut notes);
        assert_eq!(spec.channels_per_socket, Some(6));
        assert!((spec.theoretical_bandwidth_gbps.unwrap() - 14.0 * 4.8 * 8.0).abs() < 1e-9);
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn lowest_configured_speed_wins() {
        let mut a = dimm("A1", None, 4800);
        a.configured_mts = Some(4400);
        let b = dimm("A2", None, 4800);
        let mut notes = Vec::new();
        assert_eq!(transfer_rate(&[a, b], &mut notes), Some(4400));
        let mut c = dimm("A3", None, 5600);
        c.configured_mts = None;
        assert_eq!(transfer_rate(&[c], &mut notes), Some(5600));
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn meminfo_lines() {
        let text = "MemTotal:       263841284 kB\nMemFree:  1 kB\nMemAvailable:   200000000 kB\n";
        assert_eq!(meminfo_field(text, "MemTotal:"), Some(263841284 * 1024));
        assert_eq!(meminfo_field(text, "MemAvailable:"), Some(200000000 * 1024));
        assert_eq!(meminfo_field("Node 1 MemTotal:  1024 kB\n", "MemTotal:"), Some(1 << 20));
        assert_eq!(meminfo_field("", "MemTotal:"), None);
    }

    #[test]
    fn edac_dimms() {
        let dir = tempfile::tempdir().unwrap();
        let root = ProbeRoot::new(dir.path());
        for (mc, ch) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let d = dir.path().join(format!("{EDAC_MC}/mc{mc}/dimm{ch}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("size"), "32768\n").unwrap();
            std::fs::write(d.join("dimm_mem_type"), "Registered-DDR5\n").unwrap();
            std::fs::write(d.join("dimm_location"), format!("channel {ch} slot 0\n")).unwrap();
            std::fs::write(d.join("dimm_label"), format!("CPU_SrcID#{mc}_MC#0_Chan#{ch}_DIMM#0\n")).unwrap();
        }
        let empty = dir.path().join(format!("{EDAC_MC}/mc1/dimm5"));
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("size"), "0\n").unwrap();
        let mut notes = Vec::new();
        let spec = probe(&root, 2, &mut notes);
        assert_eq!(spec.dimm_source, "edac");
        assert_eq!(spec.dimms.len(), 4);
        assert_eq!(spec.dimms[2].socket, Some(1));
        assert_eq!(spec.dimms[0].memory_type.as_deref(), Some("DDR5"));
        assert_eq!(spec.channels_per_socket, Some(2));
        assert_eq!(spec.mts, None);
        assert_eq!(spec.theoretical_bandwidth_gbps, None);
        assert!(notes.iter().any(|n| n.contains("no SMBIOS table")), "{notes:?}");
    }
}
