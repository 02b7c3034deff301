//! One integration binary: every module starts real `storaged` processes.

// Test code: an unexpected error is a test failure.
#![allow(clippy::unwrap_used)]

mod t100_mount;
mod t10_replication;
mod t110_failover;
mod t120_heal;
mod t130_two_down;
mod t140_rolling_restart;
mod t150_crash;
mod t155_power_cut;
mod t15_shutdown;
mod t160_bench;
mod t170_tls;
mod t175_limits;
mod t180_full_disk;
mod t185_metrics;
mod t190_scenario;
mod t195_scrub;
mod t200_sessions;
mod t20_namespace;
mod t210_locks;
mod t220_membership;
mod t22_early_create;
mod t30_exactly_once;
mod t35_content;
mod t40_corruption;
mod t50_bad_input;
mod t60_leader_kill;
mod t65_read_lease;
mod t67_close_to_open;
mod t70_rejoin;
mod t80_snapshot;
mod t85_gc;
mod t90_memory;
