//! Rounds that count only when the baseline around them held still.
//!
//! A round sets a measure against a baseline taken just before it and just after it. This
//! machine runs at two speeds, minutes at a time, and a round whose two baselines lie more
//! than [`STEADY_WITHIN`] apart compared two machines: it is printed as unsteady and does not
//! count, and another round follows, up to [`MAX_ROUNDS`]. A run is judged by the median of
//! [`ROUNDS`] steady rounds, or of all its rounds, said as such, when the machine did not hold
//! still for that many (docs/decisions.md, "A benchmark round counts when its baseline held
//! still"). The rule reads only the baselines, never the ratio.

/// Steady rounds a run is judged by.
pub const ROUNDS: usize = 3;

/// Rounds a run makes at most, looking for [`ROUNDS`] steady ones.
pub const MAX_ROUNDS: usize = 6;

/// How far the two baselines around a round may lie apart, as a share of the larger, for the
/// round to be steady. Within a calm hour they agree within a twentieth; across a change of
/// the machine's speed they differ by 14–39 % (docs/benchmarks.md, Dispatcher, "Stop 47").
pub const STEADY_WITHIN: f64 = 0.10;

/// How far apart two measures of a baseline lie, as a share of the larger.
fn drift(before: f64, after: f64) -> f64 {
    (before - after).abs() / before.max(after)
}

/// The ratios of a run's rounds, steady or not.
#[derive(Debug, Default)]
pub struct Rounds {
    steady: Vec<f64>,
    unsteady: Vec<f64>,
}

impl Rounds {
    /// Rounds recorded so far.
    fn made(&self) -> usize {
        self.steady.len() + self.unsteady.len()
    }

    /// Whether another round is wanted: fewer than [`ROUNDS`] steady ones so far, and fewer
    /// than [`MAX_ROUNDS`] made. Returns the next round's number; each round is recorded
    /// before the next is asked for.
    pub fn next_round(&self) -> Option<usize> {
        (self.steady.len() < ROUNDS && self.made() < MAX_ROUNDS).then(|| self.made() + 1)
    }

    /// Records the current round's `ratio`, its baselines (`what`) measured `before` and
    /// `after` it; an unsteady round is said so.
    pub fn record(&mut self, ratio: f64, what: &str, before: f64, after: f64) {
        let round = self.made() + 1;
        let drift = drift(before, after);
        if drift <= STEADY_WITHIN {
            self.steady.push(ratio);
        } else {
            println!(
                "  round {round} is unsteady: its two {what} lie {:.0} % apart (steady within {:.0} %); it does not count while {ROUNDS} steady rounds can be had in {MAX_ROUNDS}",
                drift * 100.0,
                STEADY_WITHIN * 100.0
            );
            self.unsteady.push(ratio);
        }
    }

    /// The run's verdict: the median of the rounds it is judged by, and a line naming them (in
    /// the order they ran) and any unsteady rounds set aside.
    pub fn verdict(&self) -> (f64, String) {
        let list = |ratios: &[f64]| {
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" · ")
        };
        let all_judged = self.steady.len() < ROUNDS;
        let mut judged = self.steady.clone();
        if all_judged {
            judged.extend(&self.unsteady);
        }
        let shown = list(&judged);
        let median = crate::median(&mut judged);
        let which = if all_judged {
            format!(
                "all {} rounds, only {} of them steady",
                judged.len(),
                self.steady.len()
            )
        } else {
            format!("{} steady rounds", judged.len())
        };
        let aside = if all_judged || self.unsteady.is_empty() {
            String::new()
        } else {
            format!("; unsteady, not counted: {}", list(&self.unsteady))
        };
        (
            median,
            format!("over {which}: {shown} (median {median:.2}){aside}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsteady_round_is_set_aside_and_replaced() {
        let mut rounds = Rounds::default();
        let mut made = Vec::new();
        while let Some(round) = rounds.next_round() {
            made.push(round);
            match round {
                // 35 % apart: set aside, whatever its ratio.
                1 => rounds.record(1.20, "bounds", 100.0, 65.0),
                _ => rounds.record(0.80 + round as f64 / 100.0, "bounds", 100.0, 95.0),
            }
        }
        assert_eq!(made, [1, 2, 3, 4]);
        let (median, line) = rounds.verdict();
        assert!((median - 0.83).abs() < 1e-9, "{median}");
        assert_eq!(
            line,
            "over 3 steady rounds: 0.82 · 0.83 · 0.84 (median 0.83); unsteady, not counted: 1.20"
        );
    }

    #[test]
    fn a_machine_that_never_holds_still_is_judged_on_every_round_and_said_so() {
        let mut rounds = Rounds::default();
        while let Some(round) = rounds.next_round() {
            let steady = round == 2;
            rounds.record(
                round as f64 / 10.0,
                "reads",
                100.0,
                if steady { 100.0 } else { 50.0 },
            );
        }
        let (median, line) = rounds.verdict();
        assert!((median - 0.35).abs() < 1e-9, "{median}");
        assert!(
            line.starts_with("over all 6 rounds, only 1 of them steady"),
            "{line}"
        );
    }
}
