//! The names userspace uses for the object's maps and programs
//! (`netbpf_common::names`), checked against the object itself, read
//! without a kernel: every map with its key and value sizes, every
//! program, and nothing in the object the lists lack.

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
