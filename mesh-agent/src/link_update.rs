//! An upgraded agent's programs take the place of the ones it finds
//! attached. Pinned links outlive agents, so a new agent that only adopted
//! them would run the first agent's programs forever. Each adopted link
//! whose program differs from this agent's (by the kernel's tag) is moved
//! to this agent's program with BPF_LINK_UPDATE: one step, the hook never
//! empty, nothing refused. The new programs use the same pinned maps, so
//! that only works while the maps are laid out as this agent's programs
//! read them; when one is not, every link keeps its program (no mix of
//! versions over one map) and the agent says why.
use std::{fmt, io, os::fd::BorrowedFd, path::Path};

use aya::maps::{MapInfo, MapType};
use mesh_common::{
    DatapathConfig, DeliveryKey, FlowRecord, ListenerKey, OrigDst, PodAddrKey, SockKey, names,
};

use crate::pinned_link::{Link, ProgramTag, program_info};

/// What a map is, as far as a program that reads it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLayout {
    /// The kernel's `enum bpf_map_type`.
    pub kind: u32,
    pub key_size: u32,
    pub value_size: u32,
}

impl MapLayout {
    fn of<K, V>(kind: MapType) -> Self {
        Self {
            kind: kind as u32,
            key_size: std::mem::size_of::<K>() as u32,
            value_size: std::mem::size_of::<V>() as u32,
        }
    }
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values",
            self.kind, self.key_size, self.value_size
        )
    }
}

/// Every map of the kernel/user contract as this agent's programs and
/// user side read it (`mesh-ebpf/src/maps.rs`; a test checks the two
/// agree). Socket maps hold a socket per key, a 4-byte value; a ring
/// buffer has neither keys nor values.
pub fn expected_layouts() -> [(&'static str, MapLayout); 12] {
    [
        (
            names::CONFIG,
            MapLayout::of::<u32, DatapathConfig>(MapType::Array),
        ),
        (
            names::AGENT_CGROUPS,
            MapLayout::of::<u64, u8>(MapType::Hash),
        ),
        (
            names::COUNTERS,
            MapLayout::of::<u32, u64>(MapType::PerCpuArray),
        ),
        (names::ENROLLED, MapLayout::of::<u64, u8>(MapType::Hash)),
        (
            names::POD_ADDRS,
            MapLayout::of::<PodAddrKey, u8>(MapType::Hash),
        ),
        (
            names::ORIG_DST_BY_COOKIE,
            MapLayout::of::<u64, OrigDst>(MapType::LruHash),
        ),
        (
            names::ORIG_DST_BY_TUPLE,
            MapLayout::of::<SockKey, OrigDst>(MapType::LruHash),
        ),
        (
            names::INBOUND_LISTENERS,
            MapLayout::of::<ListenerKey, u32>(MapType::SockHash),
        ),
        (
            names::DELIVERIES,
            MapLayout::of::<DeliveryKey, u8>(MapType::Hash),
        ),
        (
            names::SPLICE,
            MapLayout::of::<SockKey, u32>(MapType::SockHash),
        ),
        (
            names::FLOWS_LIVE,
            MapLayout::of::<u64, FlowRecord>(MapType::Hash),
        ),
        (
            names::FLOW_EVENTS,
            MapLayout::of::<(), ()>(MapType::RingBuf),
        ),
    ]
}

/// A pinned map this agent's programs cannot read as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMismatch {
    pub name: &'static str,
    pub pinned: MapLayout,
    pub expected: MapLayout,
}

impl fmt::Display for MapMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "map {} is pinned with {}, this agent's programs read {}",
            self.name, self.pinned, self.expected
        )
    }
}

/// The pinned maps (by name) whose layout differs from `expected`. A map
/// not pinned yet is no mismatch: the loader creates it as this agent's
/// programs want it.
pub fn mismatches(
    expected: &[(&'static str, MapLayout)],
    pinned: &[(&str, MapLayout)],
) -> Vec<MapMismatch> {
    expected
        .iter()
        .filter_map(|(name, want)| {
            let (_, found) = pinned.iter().find(|(n, _)| n == name)?;
            (found != want).then_some(MapMismatch {
                name,
                pinned: *found,
                expected: *want,
            })
        })
        .collect()
}

/// What to do with one adopted link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It runs this agent's program already.
    Keep,
    /// It runs another program, and the maps suit this agent's.
    Replace {
        attached: ProgramTag,
        embedded: ProgramTag,
    },
    /// It runs another program, but the pinned maps are not this agent's
    /// layout: it keeps its program.
    KeepOld {
        attached: ProgramTag,
        embedded: ProgramTag,
    },
}

/// Keep a link that runs this agent's program; replace another program
/// only over maps of this agent's layout.
pub fn decide(attached: ProgramTag, embedded: ProgramTag, maps: &[MapMismatch]) -> Decision {
    if attached == embedded {
        Decision::Keep
    } else if maps.is_empty() {
        Decision::Replace { attached, embedded }
    } else {
        Decision::KeepOld { attached, embedded }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkUpdateError {
    #[error("map {name}: reading the pinned map's layout: {source}")]
    MapInfo {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("link {path}: reading its program: {source}")]
    Read { path: String, source: io::Error },
    #[error("program {program}: reading the loaded program's tag: {source}")]
    Embedded {
        program: &'static str,
        source: io::Error,
    },
    #[error(
        "link {path}: replacing program {program} (tag {attached}) with this agent's (tag {embedded}): {source}"
    )]
    Replace {
        path: String,
        program: &'static str,
        attached: ProgramTag,
        embedded: ProgramTag,
        source: io::Error,
    },
}

/// The layout mismatches of the maps pinned under `pin_dir`, read before
/// the loader reuses them.
pub fn pinned_mismatches(pin_dir: &Path) -> Result<Vec<MapMismatch>, LinkUpdateError> {
    let expected = expected_layouts();
    let mut pinned = Vec::new();
    for &(name, _) in &expected {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let err = |source| LinkUpdateError::MapInfo { name, source };
        let info = MapInfo::from_pin(&path).map_err(err)?;
        let kind = info.map_type().map_err(err)? as u32;
        pinned.push((
            name,
            MapLayout {
                kind,
                key_size: info.key_size(),
                value_size: info.value_size(),
            },
        ));
    }
    Ok(mismatches(&expected, &pinned))
}

/// Moves the link pinned at `path` to `new_prog` (this agent's loaded
/// `program`) when `decide` says so; logs what it replaced.
pub fn update(
    path: &Path,
    program: &'static str,
    new_prog: BorrowedFd<'_>,
    maps: &[MapMismatch],
) -> Result<Decision, LinkUpdateError> {
    let shown = || path.display().to_string();
    let (new_id, new_tag) =
        program_info(new_prog).map_err(|source| LinkUpdateError::Embedded { program, source })?;
    let read = |source| LinkUpdateError::Read {
        path: shown(),
        source,
    };
    let link = Link::open(path).map_err(read)?;
    let old = link.program().map_err(read)?;
    let decision = decide(old.tag, new_tag, maps);
    match &decision {
        Decision::Keep => {
            tracing::debug!(program, link = %path.display(), tag = %new_tag, "program current");
        }
        Decision::Replace { attached, embedded } => {
            link.replace(new_prog, &old)
                .map_err(|source| LinkUpdateError::Replace {
                    path: shown(),
                    program,
                    attached: *attached,
                    embedded: *embedded,
                    source,
                })?;
            tracing::info!(
                program,
                link = %path.display(),
                old_tag = %attached,
                new_tag = %embedded,
                old_id = old.id,
                new_id,
                "program replaced"
            );
        }
        Decision::KeepOld { attached, embedded } => {
            tracing::warn!(
                program,
                link = %path.display(),
                old_tag = %attached,
                new_tag = %embedded,
                "program kept: the pinned maps are not this agent's layout"
            );
        }
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ProgramTag = ProgramTag([1, 2, 3, 4, 5, 6, 7, 8]);
    const B: ProgramTag = ProgramTag([8, 7, 6, 5, 4, 3, 2, 1]);

    fn mismatch() -> MapMismatch {
        MapMismatch {
            name: names::ENROLLED,
            pinned: MapLayout {
                kind: MapType::Hash as u32,
                key_size: 8,
                value_size: 4,
            },
            expected: MapLayout::of::<u64, u8>(MapType::Hash),
        }
    }

    #[test]
    fn the_same_program_is_kept() {
        assert_eq!(decide(A, A, &[]), Decision::Keep);
        // Nothing to replace, so nothing for a map to hold back either.
        assert_eq!(decide(A, A, &[mismatch()]), Decision::Keep);
    }

    #[test]
    fn another_program_is_replaced() {
        assert_eq!(
            decide(A, B, &[]),
            Decision::Replace {
                attached: A,
                embedded: B
            }
        );
    }

    #[test]
    fn another_program_over_maps_of_another_layout_is_kept_and_says_so() {
        assert_eq!(
            decide(A, B, &[mismatch()]),
            Decision::KeepOld {
                attached: A,
                embedded: B
            }
        );
        assert_eq!(
            mismatch().to_string(),
            "map MESH_ENROLLED is pinned with type 1, 8-byte keys, 4-byte values, this agent's programs read type 1, 8-byte keys, 1-byte values"
        );
    }

    #[test]
    fn a_map_differs_by_type_key_or_value_size_and_an_unpinned_one_not_at_all() {
        let expected = expected_layouts();
        let ok: Vec<(&str, MapLayout)> = expected.to_vec();
        assert!(mismatches(&expected, &ok).is_empty());
        assert!(mismatches(&expected, &[]).is_empty());

        let enrolled = MapLayout::of::<u64, u8>(MapType::Hash);
        for other in [
            MapLayout {
                kind: MapType::LruHash as u32,
                ..enrolled
            },
            MapLayout {
                key_size: 16,
                ..enrolled
            },
            MapLayout {
                value_size: 2,
                ..enrolled
            },
        ] {
            let found = mismatches(&expected, &[(names::ENROLLED, other)]);
            assert_eq!(
                found,
                vec![MapMismatch {
                    name: names::ENROLLED,
                    pinned: other,
                    expected: enrolled
                }]
            );
        }
    }

    /// The table above is what the programs embedded in this agent
    /// declare (aya-ebpf's `bpf_map_def`: type, key size, value size, ...
    /// as little-endian u32s at the map's symbol in the `maps` section).
    #[test]
    fn the_expected_layouts_are_those_the_embedded_programs_declare() {
        use object::{Object, ObjectSection, ObjectSymbol};
        let elf = object::File::parse(crate::datapath::EBPF_OBJECT).expect("an ELF object");
        let maps = elf.section_by_name("maps").expect("a maps section");
        let data = maps.data().unwrap();
        let mut declared = Vec::new();
        for sym in elf.symbols() {
            if sym.section_index() != Some(maps.index()) {
                continue;
            }
            // aya-log's own maps are not pinned and not the contract.
            let Ok(name) = sym.name() else { continue };
            if !name.starts_with("MESH_") {
                continue;
            }
            let at = sym.address() as usize;
            let word =
                |i: usize| u32::from_le_bytes(data[at + 4 * i..at + 4 * i + 4].try_into().unwrap());
            declared.push((
                name.to_owned(),
                MapLayout {
                    kind: word(0),
                    key_size: word(1),
                    value_size: word(2),
                },
            ));
        }
        declared.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected: Vec<(String, MapLayout)> = expected_layouts()
            .iter()
            .map(|(n, l)| ((*n).to_owned(), *l))
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(declared, expected);
    }
}
