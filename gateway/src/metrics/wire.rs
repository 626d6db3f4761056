//! Metrics of the PostgreSQL front end ([`crate::wire`]): one table of families, one
//! counter (or gauge) per core each.

use std::{
    fmt::Display,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use super::{
    Family,
    Kind::{Counter, Gauge},
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
    /// Autocommit reads a replica refused as writes (25006), rerun on the leader.
    ReadOnlyReruns,
    /// Statements abandoned (08007) because the leader's lease was lost while they ran.
    LeaseAbandoned,
    /// Autocommit reads sent to the server in one write with other clients' reads.
    SharedReads,
    /// Autocommit reads queued for a shared round trip now (gauge).
    SharedReadsWaiting,
}

/// Each event with its family (label `core`). Rendered in this order.
const FAMILIES: [(WireEvent, Family); 12] = [
    (
        WireEvent::ClientsOpen,
        Family::new(
            Gauge,
            "ringgate_pg_clients",
            CORE,
            "PostgreSQL client sessions open.",
        ),
    ),
    (
        WireEvent::ClientsTotal,
        Family::new(
            Counter,
            "ringgate_pg_clients_total",
            CORE,
            "PostgreSQL client sessions authenticated.",
        ),
    ),
    (
        WireEvent::Refused,
        Family::new(
            Counter,
            "ringgate_pg_refused_total",
            CORE,
            "PostgreSQL sessions refused at startup or authentication.",
        ),
    ),
    (
        WireEvent::Transactions,
        Family::new(
            Counter,
            "ringgate_pg_transactions_total",
            CORE,
            "Transactions relayed (server connection checkouts).",
        ),
    ),
    (
        WireEvent::CheckoutWaitMicros,
        Family::new(
            Counter,
            "ringgate_pg_checkout_wait_seconds_total",
            CORE,
            "Time PostgreSQL clients waited for a server connection.",
        ),
    ),
    (
        WireEvent::ServerLost,
        Family::new(
            Counter,
            "ringgate_pg_server_lost_total",
            CORE,
            "Transactions whose server connection died (answered 08007).",
        ),
    ),
    (
        WireEvent::StaleSkipped,
        Family::new(
            Counter,
            "ringgate_pg_stale_server_connections_total",
            CORE,
            "Pooled server connections the server had ended, skipped at checkout.",
        ),
    ),
    (
        WireEvent::Cancels,
        Family::new(
            Counter,
            "ringgate_pg_cancel_requests_total",
            CORE,
            "CancelRequests served.",
        ),
    ),
    (
        WireEvent::ReadOnlyReruns,
        Family::new(
            Counter,
            "ringgate_pg_read_only_reruns_total",
            CORE,
            "Autocommit reads a replica refused as writes (25006), rerun on the leader.",
        ),
    ),
    (
        WireEvent::LeaseAbandoned,
        Family::new(
            Counter,
            "ringgate_pg_lease_abandoned_total",
            CORE,
            "Statements abandoned (08007) because the leader's lease was lost while they ran.",
        ),
    ),
    (
        WireEvent::SharedReads,
        Family::new(
            Counter,
            "ringgate_pg_shared_reads_total",
            CORE,
            "Autocommit reads sent to the server in one write with other clients' reads.",
        ),
    ),
    (
        WireEvent::SharedReadsWaiting,
        Family::new(
            Gauge,
            "ringgate_pg_shared_reads_waiting",
            CORE,
            "Autocommit reads queued for a shared round trip now.",
        ),
    ),
];

/// What the front end counts per tenant class (bounded labels, as `/sql`'s metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassFigure {
    /// Client sessions open now (gauge).
    Clients,
    /// Server connections held now by transaction-mode sessions (gauge).
    ServersTransaction,
    /// Server connections held now by session-mode sessions (gauge).
    ServersSession,
    /// Transactions relayed (in either pool mode).
    Transactions,
    /// Microseconds spent waiting for a server connection.
    WaitMicros,
}

/// Label names of the per-core families.
const CORE: &[&str] = &["core"];

/// Server connections held, by class and pool mode: two figures share it.
const CLASS_SERVER_CONNECTIONS: Family = Family::new(
    Gauge,
    "ringgate_pg_class_server_connections",
    &["class", "mode"],
    "Server connections held by PostgreSQL client sessions now, by tenant class and pool mode.",
);

/// Each per-class figure: its family and the values of the family's labels after `class`.
/// Rendered in this order; a family's header before its first figure.
const CLASS_FAMILIES: [(ClassFigure, Family, &[&str]); 5] = [
    (
        ClassFigure::Clients,
        Family::new(
            Gauge,
            "ringgate_pg_class_clients",
            &["class"],
            "PostgreSQL client sessions open, by tenant class.",
        ),
        &[],
    ),
    (
        ClassFigure::ServersTransaction,
        CLASS_SERVER_CONNECTIONS,
        &["transaction"],
    ),
    (
        ClassFigure::ServersSession,
        CLASS_SERVER_CONNECTIONS,
        &["session"],
    ),
    (
        ClassFigure::Transactions,
        Family::new(
            Counter,
            "ringgate_pg_class_transactions_total",
            &["class"],
            "Transactions relayed (server connection checkouts), by tenant class.",
        ),
        &[],
    ),
    (
        ClassFigure::WaitMicros,
        Family::new(
            Counter,
            "ringgate_pg_class_checkout_wait_seconds_total",
            &["class"],
            "Time PostgreSQL clients waited for a server connection, by tenant class.",
        ),
        &[],
    ),
];

/// One core's front-end figures.
#[derive(Debug, Default)]
pub struct WireMetrics {
    values: [AtomicU64; FAMILIES.len()],
    classes: [[AtomicU64; CLASS_FAMILIES.len()]; crate::metrics::N_CLASS],
}

impl WireMetrics {
    fn slot(&self, e: WireEvent) -> &AtomicU64 {
        &self.values[e as usize]
    }

    /// Counts one `e`.
    pub fn count(&self, e: WireEvent) {
        self.slot(e).fetch_add(1, Relaxed);
    }

    /// Counts `n` of `e`.
    pub fn add(&self, e: WireEvent, n: u64) {
        self.slot(e).fetch_add(n, Relaxed);
    }

    /// A session ended (the open-sessions gauge goes down).
    pub fn client_closed(&self) {
        self.less(WireEvent::ClientsOpen);
    }

    /// One less of the gauge `e` (never below zero).
    pub fn less(&self, e: WireEvent) {
        let _ = self
            .slot(e)
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

    fn class(&self, class: usize, f: ClassFigure) -> &AtomicU64 {
        &self.classes[class.min(crate::metrics::N_CLASS - 1)][f as usize]
    }

    /// Adds `n` to class `class`'s figure `f`.
    pub fn class_add(&self, class: usize, f: ClassFigure, n: u64) {
        self.class(class, f).fetch_add(n, Relaxed);
    }

    /// Takes one from class `class`'s gauge `f`.
    pub fn class_sub(&self, class: usize, f: ClassFigure) {
        let _ = self
            .class(class, f)
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// A checkout for class `class` waited `d`.
    pub fn class_waited(&self, class: usize, d: Duration) {
        self.class_add(class, ClassFigure::WaitMicros, d.as_micros() as u64);
    }
}

/// Renders the per-class families, summed over `cores`; classes with nothing counted
/// are left out. `label` names a class slot.
pub fn render_classes<'a>(
    o: &mut String,
    cores: impl Iterator<Item = &'a WireMetrics> + Clone,
    label: impl Fn(usize) -> String,
) -> std::fmt::Result {
    let mut previous = None;
    for (f, family, extra) in CLASS_FAMILIES {
        if previous != Some(family.name) {
            family.header(o)?;
        }
        previous = Some(family.name);
        for class in 0..crate::metrics::N_CLASS {
            let v: u64 = cores.clone().map(|m| m.class(class, f).load(Relaxed)).sum();
            let seen = cores.clone().any(|m| {
                m.class(class, ClassFigure::Transactions).load(Relaxed) > 0
                    || m.class(class, ClassFigure::Clients).load(Relaxed) > 0
            });
            if !seen {
                continue;
            }
            let class = label(class);
            let labels: Vec<&dyn Display> = std::iter::once(&class as &dyn Display)
                .chain(extra.iter().map(|e| e as &dyn Display))
                .collect();
            if f == ClassFigure::WaitMicros {
                family.sample(o, &labels, v as f64 / 1e6)?;
            } else {
                family.sample(o, &labels, v)?;
            }
        }
    }
    Ok(())
}

/// Renders every family over `cores`.
pub fn render<'a>(
    o: &mut String,
    cores: impl Iterator<Item = &'a WireMetrics> + Clone,
) -> std::fmt::Result {
    for (event, family) in FAMILIES {
        family.header(o)?;
        for (c, m) in cores.clone().enumerate() {
            let v = m.get(event);
            if event == WireEvent::CheckoutWaitMicros {
                family.sample(o, &[&c], v as f64 / 1e6)?;
            } else {
                family.sample(o, &[&c], v)?;
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

    #[test]
    fn class_figures_are_summed_over_cores_and_labelled() {
        for (i, (f, ..)) in CLASS_FAMILIES.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
        let m = [WireMetrics::default(), WireMetrics::default()];
        m[0].class_add(2, ClassFigure::Clients, 1);
        m[1].class_add(2, ClassFigure::Clients, 1);
        m[1].class_add(2, ClassFigure::ServersSession, 1);
        m[1].class_waited(2, Duration::from_millis(500));
        m[1].class_add(2, ClassFigure::Transactions, 1);
        m[0].class_sub(2, ClassFigure::ServersTransaction);
        m[0].class_add(99, ClassFigure::Clients, 1);
        let mut o = String::new();
        render_classes(&mut o, m.iter(), |c| format!("c{c}")).unwrap();
        assert!(
            o.contains("ringgate_pg_class_clients{class=\"c2\"} 2\n"),
            "{o}"
        );
        assert!(
            o.contains("ringgate_pg_class_server_connections{class=\"c2\",mode=\"session\"} 1\n"),
            "{o}"
        );
        assert!(
            o.contains(
                "ringgate_pg_class_server_connections{class=\"c2\",mode=\"transaction\"} 0\n"
            ),
            "{o}"
        );
        assert!(
            o.contains("ringgate_pg_class_transactions_total{class=\"c2\"} 1\n"),
            "{o}"
        );
        assert!(
            o.contains("ringgate_pg_class_checkout_wait_seconds_total{class=\"c2\"} 0.5\n"),
            "{o}"
        );
        // A slot out of range counts as the last (`other`).
        assert!(
            o.contains("ringgate_pg_class_clients{class=\"c9\"} 1\n"),
            "{o}"
        );
        assert!(!o.contains("class=\"c0\""), "{o}");
    }
}
