//! The data path (README.md, "How it works"): [`webhook`] → [`work_queue`] → [`worker`] →
//! [`sink`], with [`reconciler`] as a second source into the work queue. The worker takes its
//! turn from [`scheduling`], splits blobs with [`records`], and waits out a full consumer
//! queue through [`backpressure`]. [`replay`] and [`dead_letters`] are the operator's tools on
//! the same path.

pub mod backpressure;
pub mod dead_letters;
pub mod parked;
pub mod reconciler;
pub mod records;
pub mod replay;
pub mod scheduling;
pub mod sink;
pub mod webhook;
pub mod work_queue;
pub mod worker;
