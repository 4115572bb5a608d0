//! Redis Cluster and Sentinel: the relay on three masters with a replica each, and behind
//! Sentinel, through a master failover.
