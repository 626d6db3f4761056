//! Metrics of the PostgreSQL front end ([`crate::wire`]): one table of families, one
//! counter (or gauge) per core each.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// What the front end counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEvent {
    /// Client sessions open now (gauge).
    ClientsOpen,
    /// Client sessions authenticated.
    ClientsTotal,
    /// Sessions refused at startup or authentication.
    Refused,
    /// Transactions (server connection checkouts) relayed.
    Transactions,
    /// Microseconds spent waiting for a server connection.
    CheckoutWaitMicros,
    /// Transactions whose server connection died (answered 08007).
    ServerLost,
    /// Pooled server connections found ended by the server and skipped.
    StaleSkipped,
    /// Cancel requests served.
    Cancels,
}

/// Each family: event, name, type, help. Rendered in this order.
const FAMILIES: [(WireEvent, &str, &str, &str); 8] = [
    (
        WireEvent::ClientsOpen,
        "ringgate_pg_clients",
        "gauge",
        "PostgreSQL client sessions open.",
    ),
    (
        WireEvent::ClientsTotal,
        "ringgate_pg_clients_total",
        "counter",
        "PostgreSQL client sessions authenticated.",
    ),
    (
        WireEvent::Refused,
        "ringgate_pg_refused_total",
        "counter",
        "PostgreSQL sessions refused at startup or authentication.",
    ),
    (
        WireEvent::Transactions,
        "ringgate_pg_transactions_total",
        "counter",
        "Transactions relayed (server connection checkouts).",
    ),
    (
        WireEvent::CheckoutWaitMicros,
        "ringgate_pg_checkout_wait_seconds_total",
        "counter",
        "Time PostgreSQL clients waited for a server connection.",
    ),
    (
        WireEvent::ServerLost,
        "ringgate_pg_server_lost_total",
        "counter",
        "Transactions whose server connection died (answered 08007).",
    ),
    (
        WireEvent::StaleSkipped,
        "ringgate_pg_stale_server_connections_total",
        "counter",
        "Pooled server connections the server had ended, skipped at checkout.",
    ),
    (
        WireEvent::Cancels,
        "ringgate_pg_cancel_requests_total",
        "counter",
        "CancelRequests served.",
    ),
];

/// One core's front-end figures.
#[derive(Debug, Default)]
pub struct WireMetrics {
    values: [AtomicU64; FAMILIES.len()],
}

impl WireMetrics {
    fn slot(&self, e: WireEvent) -> &AtomicU64 {
        &self.values[e as usize]
    }

    /// Counts one `e`.
    pub fn count(&self, e: WireEvent) {
        self.slot(e).fetch_add(1, Relaxed);
    }

    /// A session ended (the open-sessions gauge goes down).
    pub fn client_closed(&self) {
        let _ = self
            .slot(WireEvent::ClientsOpen)
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// A checkout waited `d`.
    pub fn waited(&self, d: Duration) {
        self.count(WireEvent::Transactions);
        self.slot(WireEvent::CheckoutWaitMicros)
            .fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// The value of `e`.
    pub fn get(&self, e: WireEvent) -> u64 {
        self.slot(e).load(Relaxed)
    }
}

/// Renders every family over `cores`.
pub fn render<'a>(
    o: &mut String,
    cores: impl Iterator<Item = &'a WireMetrics> + Clone,
) -> std::fmt::Result {
    for (event, name, kind, help) in FAMILIES {
        writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}")?;
        for (c, m) in cores.clone().enumerate() {
            let v = m.get(event);
            if event == WireEvent::CheckoutWaitMicros {
                writeln!(o, "{name}{{core=\"{c}\"}} {}", v as f64 / 1e6)?;
            } else {
                writeln!(o, "{name}{{core=\"{c}\"}} {v}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_in_event_order_and_rendered_per_core() {
        for (i, (e, ..)) in FAMILIES.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        let m = [WireMetrics::default(), WireMetrics::default()];
        m[1].count(WireEvent::ClientsOpen);
        m[1].client_closed();
        m[1].client_closed();
        m[0].waited(Duration::from_millis(1500));
        let mut o = String::new();
        render(&mut o, m.iter()).unwrap();
        assert!(o.contains("ringgate_pg_clients{core=\"1\"} 0\n"), "{o}");
        assert!(
            o.contains("ringgate_pg_transactions_total{core=\"0\"} 1\n"),
            "{o}"
        );
        assert!(
            o.contains("ringgate_pg_checkout_wait_seconds_total{core=\"0\"} 1.5\n"),
            "{o}"
        );
    }
}
