//! Agents on Denizen: durable objects with synced state, callable RPC, schedules, a queue, and
//! durable workflows.
