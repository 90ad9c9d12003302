//! The names userspace uses for the object's maps and programs
//! (`netbpf_common::names`), checked against the object itself, read
//! without a kernel: every map with its key and value sizes, every
//! program, and nothing in the object the lists lack. And what the
//! programs call: none of the library's byte loops.

use std::collections::BTreeMap;

use aya_obj::{Object, maps::Map};
use netbpf_common::names::{MAPS, program};

use super::PROGRAMS_OBJECT;

/// The object's maps: name -> (key size, value size).
fn object_maps(object: &Object) -> BTreeMap<String, (usize, usize)> {
    object
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, map): (&String, &Map)| {
            (
                name.clone(),
                (map.key_size() as usize, map.value_size() as usize),
            )
        })
        .collect()
}

#[test]
fn every_map_name_and_size_is_the_objects() {
    let object = Object::parse(PROGRAMS_OBJECT).unwrap();
    let named: BTreeMap<String, (usize, usize)> = MAPS
        .iter()
        .map(|map| (map.name.to_owned(), (map.key_size, map.value_size)))
        .collect();
    assert_eq!(named, object_maps(&object));
}

#[test]
fn every_program_name_is_the_objects() {
    let object = Object::parse(PROGRAMS_OBJECT).unwrap();
    let mut in_object: Vec<&str> = object.programs.keys().map(String::as_str).collect();
    in_object.sort_unstable();
    let mut named = program::ALL.to_vec();
    named.sort_unstable();
    assert_eq!(named, in_object);
}

/// The library's byte loops, which LLVM calls for a key with an
/// odd-sized gap to zero, or a large struct to zero or move.
const BYTE_LOOPS: [&str; 4] = ["memset", "memcpy", "memmove", "memcmp"];

/// A call of one is a BPF-to-BPF call and a loop on every connect: the
/// keys' padding is in whole fields, and large requests are zeroed word
/// by word, so that no program calls one (the loops themselves, in
/// `.text`, may call each other).
#[test]
fn no_program_calls_a_library_byte_loop() {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

    let file = object::File::parse(PROGRAMS_OBJECT).unwrap();
    let loops: Vec<_> = file
        .symbols()
        .filter(|symbol| BYTE_LOOPS.contains(&symbol.name().unwrap_or_default()))
        .map(|symbol| {
            (
                symbol.section_index(),
                symbol.address()..symbol.address() + symbol.size(),
            )
        })
        .collect();
    let mut calls = Vec::new();
    for section in file.sections() {
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let name = file
                .symbol_by_index(index)
                .unwrap()
                .name()
                .unwrap_or_default();
            let in_a_loop = loops
                .iter()
                .any(|(at, range)| *at == Some(section.index()) && range.contains(&offset));
            if BYTE_LOOPS.contains(&name) && !in_a_loop {
                calls.push(format!(
                    "{} calls {name}",
                    section.name().unwrap_or_default()
                ));
            }
        }
    }
    assert!(calls.is_empty(), "{calls:?}");
}
