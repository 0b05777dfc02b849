//! ringwarden's pure core: plain functions over plain data, used by the
//! operator and the node agent alike. Nothing here touches the network, the
//! kernel or the clock (callers pass `now`).
#![forbid(unsafe_code)]

pub mod accounting;
pub mod duration;
pub mod histogram;
pub mod maps;
pub mod native;
pub mod planner;
pub mod quantity;
pub mod slo;
