//! Unit tests of the agent's logic, through the fake datapath.
