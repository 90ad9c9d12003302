//! The per-CPU counter arrays: read summed over CPUs, reset to zero.

use std::ops::Add;

use aya::{
    Pod,
    maps::{PerCpuArray, PerCpuValues},
    util::nr_cpus,
};

use super::{Datapath, DatapathError, map_error};

impl Datapath {
    /// Slot `index` of the per-CPU counters `name`, summed over CPUs.
    pub(super) fn summed_counters<T>(
        &self,
        name: &'static str,
        index: u32,
    ) -> Result<T, DatapathError>
    where
        T: Pod + Default + Add<Output = T>,
    {
        let counters: PerCpuArray<_, T> = self.map(name)?;
        let per_cpu = counters.get(&index, 0).map_err(map_error(name))?;
        Ok(per_cpu.iter().fold(T::default(), |sum, cpu| sum + *cpu))
    }

    /// Sets `slots` of the per-CPU counters `name` to zero on every CPU.
    pub(super) fn reset_counters<T>(
        &mut self,
        name: &'static str,
        slots: impl IntoIterator<Item = u32>,
    ) -> Result<(), DatapathError>
    where
        T: Pod + Default,
    {
        let cpus = nr_cpus().map_err(|(_, error)| DatapathError::Cpus(error))?;
        let mut counters: PerCpuArray<_, T> = self.map_mut(name)?;
        for slot in slots {
            let zeros =
                PerCpuValues::try_from(vec![T::default(); cpus]).map_err(DatapathError::Cpus)?;
            counters.set(slot, zeros, 0).map_err(map_error(name))?;
        }
        Ok(())
    }
}
