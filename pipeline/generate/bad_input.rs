//! Bad input

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BadKind {
    NullCustomer,
    UnknownPageType,
    NegativeAmount,
    ZeroQuantity,
    Year1999,
}

/// (stream, day) -> bad rows to put into the first file of that day.
pub(super) type BadPlan = BTreeMap<(Stream, u32), Vec<BadKind>>;

pub(super) fn plan_bad_rows(world: &World) -> BadPlan {
    let mut rng = world.rng(SALT_BAD);
    let mut plan = BadPlan::new();
    let from = world.window_start(BAD_ROW_DAYS);
    for (stream, kind) in BAD_ROWS {
        let day = between(&mut rng, from, world.last);
        plan.entry((stream, day)).or_default().push(kind);
    }
    plan
}

/// Bad rows of one file: (row index, kind), at most one kind per row.
#[derive(Default)]
pub(super) struct BadRows(Vec<(usize, BadKind)>);

impl BadRows {
    /// Spread `kinds` over rows `first..len` (rows before `first` repeat the previous file).
    pub(super) fn place(kinds: &[BadKind], first: usize, len: usize) -> Self {
        if kinds.is_empty() || len <= first {
            return BadRows::default();
        }
        let room = len - first;
        let n = kinds.len().min(room);
        BadRows((0..n).map(|j| (first + j * room / n, kinds[j])).collect())
    }

    pub(super) fn kind_at(&self, row: usize) -> Option<BadKind> {
        self.0.iter().find(|(i, _)| *i == row).map(|&(_, kind)| kind)
    }

    pub(super) fn is(&self, row: usize, kind: BadKind) -> bool {
        self.kind_at(row) == Some(kind)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
