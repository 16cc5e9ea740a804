//! Free loopback ports for servers, chosen below the kernel's ephemeral range and reserved by
//! this process until the server that holds one is dropped (see the [crate docs](crate)).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Ports handed to live servers of this process; a port leaves the set when its server drops.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved_ports() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    // The set stays consistent even if a holder panicked: every operation is a single insert or
    // remove.
    RESERVED_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Picks a free loopback port outside the ephemeral range and reserves it for this process.
pub(crate) fn reserve_port() -> io::Result<u16> {
    let (low, high) = non_ephemeral_range();
    let mut reserved = reserved_ports();
    if low < high {
        for _ in 0..200 {
            let candidate = rand::random_range(low..=high);
            if reserved.contains(&candidate) {
                continue;
            }
            if TcpListener::bind((Ipv4Addr::LOCALHOST, candidate)).is_ok() {
                reserved.insert(candidate);
                return Ok(candidate);
            }
        }
    }
    // No room outside the ephemeral range (an unusual kernel setting): ask the kernel.
    for _ in 0..20 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if reserved.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "every port tried is in use",
    ))
}

pub(crate) fn release_port(port: u16) {
    reserved_ports().remove(&port);
}

/// The widest port range that outgoing connections never take their local port from.
fn non_ephemeral_range() -> (u16, u16) {
    let (eph_low, eph_high) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    const FLOOR: u16 = 10000;
    let below = eph_low.saturating_sub(1).saturating_sub(FLOOR);
    let above = u16::MAX.saturating_sub(eph_high.saturating_add(1));
    if below >= above {
        (FLOOR, eph_low.saturating_sub(1))
    } else {
        (eph_high.saturating_add(1), u16::MAX)
    }
}
