//! The 2025 reform in small (`tests/data/reform`), with every figure
//! computed by hand, shared by the domain, store and end-to-end tests.
//!
//! The tree: province `P`; until 2025-06-30 district `D` with communes
//! `A`, `B`, `C`; from 2025-07-01 `A` directly under `P`, and ward `W`
//! formed from `B` and `C`.
//!
//! The cases (received → resolved, rated), and where each count goes:
//!
//! | case | received | resolved | rated | counted under |
//! |---|---|---|---|---|
//! | A1 | A 03-10 | 03-12, early (due 03-15) | 03-13 satisfied | A, D, P |
//! | A2 | A 06-30 | 07-01, early (due 07-03) | | received: A, D, P; resolved: A, P |
//! | A3 | A 07-01 | 07-03, late (due 07-02 17:00) | | A, P |
//! | B1 | B 02-01 | 02-04, early | 02-06 unsatisfied | B, D, P, and W (history) |
//! | B2 | B 06-30 | 07-02 16:00, on time (due 07-02 17:00) | 07-03 very satisfied | received: B, D, P, W; the rest: W, P (W holds B's cases) |
//! | B4 | B 06-25, due 07-10 | open | | received: B, D, P, W; open today: W, P |
//! | C1 | C 06-20 | 06-30, late (due 06-25) | | C, D, P, W |
//! | C0 | C 2024-12-20 | 2024-12-23 10:00, on time | | C, D, P, W |
//! | W1 | W 07-01 | 07-04 12:00, on time | | W, P |
//! | W2 | W 12-20, due 12-25 | open | | W, P |
//!
//! The last line names `B` on 2025-07-02, after it ceased: invalid, naming
//! `W`.

/// The registry.
pub const UNITS_JSON: &[u8] = include_bytes!("../../../tests/data/reform/units.json");
/// The events, in arrival order; the last one is invalid.
pub const EVENTS_NDJSON: &[u8] = include_bytes!("../../../tests/data/reform/events.ndjson");

/// The reason the last line is refused.
pub const REJECTED_REASON: &str = "unit B ceased on 2025-06-30; its successor is W";

/// "Now" for the live counts: both open cases are overdue then.
pub const NOW: &str = "2026-11-29T10:00:00+07:00";

/// The periods of the table.
pub const PERIODS: [&str; 5] = [
    "2025",
    "R2025",
    "2025-H1",
    "2025-H2",
    "2025-06-30..2025-07-01",
];

/// The units of the table.
pub const UNITS: [&str; 6] = ["P", "D", "A", "B", "C", "W"];

/// Hand-computed counts of one unit for one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub received: u64,
    pub resolved: u64,
    pub early: u64,
    pub on_time: u64,
    pub late: u64,
    pub rated: u64,
    /// Satisfied or very satisfied.
    pub satisfied: u64,
}

const fn f(
    received: u64,
    resolved: u64,
    early: u64,
    on_time: u64,
    late: u64,
    rated: u64,
    satisfied: u64,
) -> Figures {
    Figures {
        received,
        resolved,
        early,
        on_time,
        late,
        rated,
        satisfied,
    }
}

const NONE: Figures = f(0, 0, 0, 0, 0, 0, 0);

/// The figures of `unit` for `period`, computed by hand from the table of
/// the module documentation.
pub fn figures(unit: &str, period: &str) -> Figures {
    match (period, unit) {
        // 2025: received A1 A2 A3 B1 B2 B4 C1 W1 W2 (C0 is 2024);
        // resolved A1 A2 A3 B1 B2 C1 W1.
        ("2025", "P") => f(9, 7, 3, 2, 2, 3, 2),
        ("2025", "D") => f(6, 3, 2, 0, 1, 2, 1),
        ("2025", "A") => f(3, 3, 2, 0, 1, 1, 1),
        ("2025", "B") => f(3, 1, 1, 0, 0, 1, 0),
        ("2025", "C") => f(1, 1, 0, 0, 1, 0, 0),
        ("2025", "W") => f(6, 4, 1, 2, 1, 2, 1),
        // R2025 (2024-12-15..2025-12-14): C0 in, W2 out.
        ("R2025", "P") => f(9, 8, 3, 3, 2, 3, 2),
        ("R2025", "D") => f(7, 4, 2, 1, 1, 2, 1),
        ("R2025", "A") => f(3, 3, 2, 0, 1, 1, 1),
        ("R2025", "B") => f(3, 1, 1, 0, 0, 1, 0),
        ("R2025", "C") => f(2, 2, 0, 1, 1, 0, 0),
        ("R2025", "W") => f(6, 5, 1, 3, 1, 2, 1),
        // 2025-H1: received A1 A2 B1 B2 B4 C1; resolved A1 B1 C1.
        ("2025-H1", "P") => f(6, 3, 2, 0, 1, 2, 1),
        ("2025-H1", "D") => f(6, 3, 2, 0, 1, 2, 1),
        ("2025-H1", "A") => f(2, 1, 1, 0, 0, 1, 1),
        ("2025-H1", "B") => f(3, 1, 1, 0, 0, 1, 0),
        ("2025-H1", "C") => f(1, 1, 0, 0, 1, 0, 0),
        ("2025-H1", "W") => f(4, 2, 1, 0, 1, 1, 0),
        // 2025-H2: received A3 W1 W2; resolved A2 A3 B2 W1.
        ("2025-H2", "P") => f(3, 4, 1, 2, 1, 1, 1),
        ("2025-H2", "A") => f(1, 2, 1, 0, 1, 0, 0),
        ("2025-H2", "W") => f(2, 2, 0, 2, 0, 1, 1),
        ("2025-H2", "D" | "B" | "C") => NONE,
        // 2025-06-30..2025-07-01: received A2 B2 (06-30), A3 W1 (07-01);
        // resolved C1 (06-30), A2 (07-01).
        ("2025-06-30..2025-07-01", "P") => f(4, 2, 1, 0, 1, 0, 0),
        ("2025-06-30..2025-07-01", "D") => f(2, 1, 0, 0, 1, 0, 0),
        ("2025-06-30..2025-07-01", "A") => f(2, 1, 1, 0, 0, 0, 0),
        ("2025-06-30..2025-07-01", "B") => f(1, 0, 0, 0, 0, 0, 0),
        ("2025-06-30..2025-07-01", "C") => f(0, 1, 0, 0, 1, 0, 0),
        ("2025-06-30..2025-07-01", "W") => f(2, 1, 0, 0, 1, 0, 0),
        _ => panic!("no hand-computed figures for {unit} {period}"),
    }
}

/// Hand-computed live counts at [`NOW`] (open, overdue, overdue without an
/// apology letter): B4 and W2 are open and overdue, and count under W (B4
/// moved with B) and P.
pub fn live(unit: &str) -> (u64, u64, u64) {
    match unit {
        "P" | "W" => (2, 2, 2),
        _ => (0, 0, 0),
    }
}

/// Every difference between the answer's rates and counters and the
/// table, as "unit period what: got, want".
pub fn differences(
    unit: &str,
    period: &str,
    counter: impl Fn(&str) -> u64,
    rate: impl Fn(&str) -> (u64, u64),
) -> Vec<String> {
    let want = figures(unit, period);
    let mut found = Vec::new();
    let mut check = |what: &str, got: (u64, u64), wanted: (u64, u64)| {
        if got != wanted {
            found.push(format!("{unit} {period} {what}: {got:?}, want {wanted:?}"));
        }
    };
    for (name, wanted) in [
        ("received", want.received),
        ("resolved", want.resolved),
        ("resolved_early", want.early),
        ("resolved_on_time", want.on_time),
        ("resolved_late", want.late),
        ("rated", want.rated),
    ] {
        check(name, (counter(name), 0), (wanted, 0));
    }
    check(
        "on_time_rate",
        rate("on_time_rate"),
        (want.early + want.on_time, want.resolved),
    );
    check("late_rate", rate("late_rate"), (want.late, want.resolved));
    check(
        "satisfaction_rate",
        rate("satisfaction_rate"),
        (want.satisfied, want.rated),
    );
    check(
        "online_application_rate",
        rate("online_application_rate"),
        (0, want.received),
    );
    found
}
