//! A datapath of plain memory, for the unit tests of the agent's logic. It
//! holds a plan as the maps would, keeps each map within its capacity as
//! the kernel does, and fails any operation it is told to.
//!
//! Each behaviour it models is proven on the kernel by a privileged test:
//! - the maps hold the new plan after an update, and nothing of a dropped
//!   entry: `lifecycle::a_scope_applies_to_a_cgroup_that_appears_after_netbpf_started_and_leaves_with_it`
//!   and `containers::containers_started_after_the_agent_get_their_scope_by_name_and_by_label`
//!   (the kernel's maps, read by map id);
//! - a map at capacity takes a replacement in one update (dropped entries
//!   make room), and refuses more than it holds:
//!   `agent::a_full_map_takes_a_replacement_in_one_update`;
//! - what an agent reads back is what the maps hold, and the rule slots it
//!   wrote are read by the next one: `restart::the_datapath_outlives_restarts_and_an_upgrade_without_a_failed_connection`
//!   and `containers::containers_started_…` (scope ids and counters kept);
//! - sockets bound before their scope are counted:
//!   `localhost_forwarding::a_listener_bound_before_netbpf_started_is_left_alone_too`.

use std::{collections::VecDeque, io};

use aya::{maps::MapError, sys::SyscallError};

use super::{
    BoundSocket, DatapathError,
    plan_maps::{PlanMaps, SlotEntries},
};
use crate::plan::{Capacity, Plan};

/// An operation of [`PlanMaps`], to fail on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Update,
    ReadPlan,
    ResetRuleStats,
    WriteRuleSlots,
    RecordBinds,
}

/// The maps, in memory.
#[derive(Debug)]
pub struct FakeMaps {
    /// What the maps hold.
    pub held: Plan,
    /// The rule slots kept for the next agent.
    pub slots: SlotEntries,
    /// The counter slots set to zero, in order.
    pub zeroed: Vec<u32>,
    /// The sockets counted as bound before their scope.
    pub recorded: Vec<BoundSocket>,
    /// How many updates were asked for, failed ones included.
    pub updates: usize,
    capacity: Capacity,
    /// Operations to fail, the next call of each in order.
    failing: VecDeque<Operation>,
}

impl FakeMaps {
    /// Empty maps of `capacity`.
    #[must_use]
    pub fn new(capacity: Capacity) -> Self {
        Self {
            held: Plan::default(),
            slots: SlotEntries::new(),
            zeroed: Vec::new(),
            recorded: Vec::new(),
            updates: 0,
            capacity,
            failing: VecDeque::new(),
        }
    }

    /// Has the next call of `operation` fail (after the failures asked
    /// for before it).
    pub fn fail_next(&mut self, operation: Operation) {
        self.failing.push_back(operation);
    }

    /// Whether this call of `operation` is to fail.
    fn fails(&mut self, operation: Operation) -> Result<(), DatapathError> {
        if let Some(at) = self
            .failing
            .iter()
            .position(|&failing| failing == operation)
        {
            self.failing.remove(at);
            return Err(map_error("FAKE", libc::EIO));
        }
        Ok(())
    }
}

/// The error the kernel gives a map operation: `errno`, on map `name`.
fn map_error(name: &'static str, errno: i32) -> DatapathError {
    DatapathError::Map {
        name,
        source: MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(errno),
        }),
    }
}

impl PlanMaps for FakeMaps {
    /// A map `new` overfills refuses the update (E2BIG), as the kernel's
    /// does once dropped entries made what room they could. A failure
    /// asked for leaves the update half done: the scopes written, the
    /// rules not.
    fn update(&mut self, _old: &Plan, new: &Plan) -> Result<(), DatapathError> {
        self.updates += 1;
        if self.fails(Operation::Update).is_err() {
            self.held.cgroup_scopes.clone_from(&new.cgroup_scopes);
            return Err(map_error("FORWARD_PORTS", libc::EIO));
        }
        if let Some((map, _, _)) = self
            .capacity
            .fill(new)
            .into_iter()
            .find(|&(_, entries, capacity)| entries > capacity as usize)
        {
            return Err(map_error(map, libc::E2BIG));
        }
        self.held = new.clone();
        Ok(())
    }

    /// Fails from when a failure is asked for on: reading changes nothing
    /// to take it back.
    fn read_plan(&self) -> Result<Plan, DatapathError> {
        if self.failing.contains(&Operation::ReadPlan) {
            return Err(map_error("CGROUP_SCOPES", libc::EIO));
        }
        Ok(self.held.clone())
    }

    fn reset_rule_stats(&mut self, slots: Vec<u32>) -> Result<(), DatapathError> {
        self.fails(Operation::ResetRuleStats)?;
        self.zeroed.extend(slots);
        Ok(())
    }

    fn read_rule_slots(&self) -> Result<SlotEntries, DatapathError> {
        Ok(self.slots.clone())
    }

    fn write_rule_slots(
        &mut self,
        _old: &SlotEntries,
        new: &SlotEntries,
    ) -> Result<(), DatapathError> {
        self.fails(Operation::WriteRuleSlots)?;
        self.slots.clone_from(new);
        Ok(())
    }

    fn record_binds(&mut self, sockets: &[BoundSocket]) -> Result<usize, DatapathError> {
        self.fails(Operation::RecordBinds)?;
        self.recorded.extend_from_slice(sockets);
        Ok(sockets.len())
    }
}
