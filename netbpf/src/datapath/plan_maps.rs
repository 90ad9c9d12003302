//! The seam between the agent and the kernel's maps: what reconciling a
//! plan needs of a datapath. [`Datapath`] is the real one; the unit tests
//! drive the agent's logic through a fake (`datapath::fake`).

use std::collections::BTreeMap;

use super::{BoundSocket, Datapath, DatapathError};
use crate::plan::Plan;

/// The keys of the rule slots: (scope id, the rule's stable hash).
pub type SlotEntries = BTreeMap<(u32, u64), u32>;

/// The maps a plan fills, and the agent's own record beside them.
pub trait PlanMaps {
    /// Makes the maps go from holding `old` to holding `new`, never
    /// showing a lookup a half-written policy.
    fn update(&mut self, old: &Plan, new: &Plan) -> Result<(), DatapathError>;
    /// What the maps hold now.
    fn read_plan(&self) -> Result<Plan, DatapathError>;
    /// Sets the counters of `slots` to zero: slots handed to new rules.
    fn reset_rule_stats(&mut self, slots: Vec<u32>) -> Result<(), DatapathError>;
    /// The rule slots kept for the next agent.
    fn read_rule_slots(&self) -> Result<SlotEntries, DatapathError>;
    /// Keeps the rule slots for the next agent, `old` being what is kept.
    fn write_rule_slots(
        &mut self,
        old: &SlotEntries,
        new: &SlotEntries,
    ) -> Result<(), DatapathError>;
    /// Counts sockets bound before their scope's bind hooks saw them;
    /// how many it counted.
    fn record_binds(&mut self, sockets: &[BoundSocket]) -> Result<usize, DatapathError>;
}

impl PlanMaps for Datapath {
    fn update(&mut self, old: &Plan, new: &Plan) -> Result<(), DatapathError> {
        Datapath::update(self, old, new)
    }

    fn read_plan(&self) -> Result<Plan, DatapathError> {
        Datapath::read_plan(self)
    }

    fn reset_rule_stats(&mut self, slots: Vec<u32>) -> Result<(), DatapathError> {
        Datapath::reset_rule_stats(self, slots)
    }

    fn read_rule_slots(&self) -> Result<SlotEntries, DatapathError> {
        Datapath::read_rule_slots(self)
    }

    fn write_rule_slots(
        &mut self,
        old: &SlotEntries,
        new: &SlotEntries,
    ) -> Result<(), DatapathError> {
        Datapath::write_rule_slots(self, old, new)
    }

    fn record_binds(&mut self, sockets: &[BoundSocket]) -> Result<usize, DatapathError> {
        Datapath::record_binds(self, sockets)
    }
}
