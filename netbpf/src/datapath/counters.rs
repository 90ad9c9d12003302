//! The per-CPU counter arrays: read summed over CPUs, with what they
//! counted under older map layouts (carried), and reset to zero.

use std::ops::Add;

use aya::{
    Pod,
    maps::{Array, Map, MapData, MapInfo, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use netbpf_common::names::{self, Counters};

use super::{Datapath, DatapathError, map_error, pin_error, pins::Pins};

/// `BPF_MAP_TYPE_ARRAY`: the carried counts' type.
const ARRAY: u32 = 2;

impl Datapath {
    /// Opens the carried counts' arrays pinned beside the maps, made (at
    /// zero) the first time, each with its counters' capacity.
    pub(super) fn open_carried(&mut self, pins: &Pins) -> Result<(), DatapathError> {
        let maps = pins.maps_dir();
        for counters in names::COUNTERS {
            let name = counters.carried;
            let capacity = MapInfo::from_pin(maps.join(counters.live.name))
                .map_err(map_error(counters.live.name))?
                .max_entries();
            let expected = aya_obj::Map::new_from_params(
                ARRAY,
                4,
                u32::try_from(counters.live.value_size).expect("a counters' value fits a u32"),
                capacity,
                0,
            );
            pins.check_map(name, &expected)?;
            let path = maps.join(name);
            if !path.exists() {
                MapData::create(expected, name, None)
                    .map_err(map_error(name))?
                    .pin(&path)
                    .map_err(pin_error(name))?;
            }
            let data = MapData::from_pin(&path).map_err(map_error(name))?;
            self.carried.push((counters, Map::Array(data)));
        }
        Ok(())
    }

    /// Slot `index` of `counters`, summed over CPUs, plus what it carried
    /// over from older layouts.
    pub(super) fn summed_counters<T>(
        &self,
        counters: Counters,
        index: u32,
    ) -> Result<T, DatapathError>
    where
        T: Pod + Default + Add<Output = T>,
    {
        let name = counters.live.name;
        let live: PerCpuArray<_, T> = self.map(name)?;
        let per_cpu = live.get(&index, 0).map_err(map_error(name))?;
        let summed = per_cpu.iter().fold(T::default(), |sum, cpu| sum + *cpu);
        let Some(at) = self.carried_at(counters) else {
            return Ok(summed);
        };
        let carried: Array<_, T> =
            Array::try_from(&self.carried[at].1).map_err(map_error(counters.carried))?;
        let carried = carried
            .get(&index, 0)
            .map_err(map_error(counters.carried))?;
        Ok(summed + carried)
    }

    /// Sets `slots` of `counters` to zero on every CPU, and what they
    /// carried over.
    pub(super) fn reset_counters<T>(
        &mut self,
        counters: Counters,
        slots: impl IntoIterator<Item = u32> + Clone,
    ) -> Result<(), DatapathError>
    where
        T: Pod + Default,
    {
        let name = counters.live.name;
        let cpus = nr_cpus().map_err(|(_, error)| DatapathError::Cpus(error))?;
        {
            let mut live: PerCpuArray<_, T> = self.map_mut(name)?;
            for slot in slots.clone() {
                let zeros = PerCpuValues::try_from(vec![T::default(); cpus])
                    .map_err(DatapathError::Cpus)?;
                live.set(slot, zeros, 0).map_err(map_error(name))?;
            }
        }
        if let Some(at) = self.carried_at(counters) {
            let mut carried: Array<_, T> =
                Array::try_from(&mut self.carried[at].1).map_err(map_error(counters.carried))?;
            for slot in slots {
                carried
                    .set(slot, T::default(), 0)
                    .map_err(map_error(counters.carried))?;
            }
        }
        Ok(())
    }

    /// Where the carried counts of `counters` are in `carried`, when the
    /// datapath is pinned.
    fn carried_at(&self, counters: Counters) -> Option<usize> {
        self.carried.iter().position(|(of, _)| *of == counters)
    }
}
