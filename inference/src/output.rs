//! Shape a model's scores into what its output policy allows the client to
//! see. Pure.
//!
//! Must never: return more than the policy allows (a label-only model never
//! leaks a score), or pick a winner from a NaN in a way that depends on
//! where the NaN sits (NaN ranks below every number).

use std::cmp::Ordering;

use protocol::{InferenceOutput, OutputPolicy};
use thiserror::Error;

use crate::Scores;

/// Why the scores cannot be shaped as asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OutputError {
    /// Label and top-k answers are for one sample per request.
    #[error(
        "this model answers one sample per request (its output policy is {policy}); the request has {rows}"
    )]
    OneSampleOnly {
        /// The policy name.
        policy: &'static str,
        /// Rows in the request.
        rows: usize,
    },
    /// The model produced no scores.
    #[error("the model produced no scores")]
    Empty,
}

/// Larger is better; NaN is worst.
fn rank(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.total_cmp(&b),
    }
}

/// Whether `policy` answers a request of `rows` samples. Label and top-k
/// answer one sample per request; callers check this before spending a
/// query budget or running the model, and [`apply`] checks it again.
pub fn check_rows(policy: OutputPolicy, rows: usize) -> Result<(), OutputError> {
    let name = match policy {
        OutputPolicy::Scores => return Ok(()),
        OutputPolicy::Label => "label",
        OutputPolicy::TopK(_) => "top-k",
    };
    if rows == 1 {
        Ok(())
    } else {
        Err(OutputError::OneSampleOnly { policy: name, rows })
    }
}

/// Apply `policy` to `scores`.
pub fn apply(policy: OutputPolicy, scores: Scores) -> Result<InferenceOutput, OutputError> {
    if scores.values.is_empty() {
        return Err(OutputError::Empty);
    }
    check_rows(policy, scores.rows)?;
    match policy {
        OutputPolicy::Scores => Ok(InferenceOutput::Scores(scores.values)),
        OutputPolicy::Label => {
            let best = (0..scores.values.len())
                // Ties go to the lowest index, like numpy's argmax.
                .max_by(|&a, &b| rank(scores.values[a], scores.values[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            Ok(InferenceOutput::Label(best as u32))
        }
        OutputPolicy::TopK(k) => {
            let mut idx: Vec<usize> = (0..scores.values.len()).collect();
            idx.sort_by(|&a, &b| rank(scores.values[b], scores.values[a]).then(a.cmp(&b)));
            idx.truncate(k as usize);
            Ok(InferenceOutput::TopK(
                idx.into_iter()
                    .map(|i| (i as u32, scores.values[i]))
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &[f32]) -> Scores {
        Scores {
            values: v.to_vec(),
            rows: 1,
        }
    }

    #[test]
    fn each_policy() {
        let v = [0.1, 0.7, 0.05, 0.15];
        assert_eq!(
            apply(OutputPolicy::Scores, s(&v)),
            Ok(InferenceOutput::Scores(v.to_vec()))
        );
        assert_eq!(
            apply(OutputPolicy::Label, s(&v)),
            Ok(InferenceOutput::Label(1))
        );
        assert_eq!(
            apply(OutputPolicy::TopK(2), s(&v)),
            Ok(InferenceOutput::TopK(vec![(1, 0.7), (3, 0.15)]))
        );
        // k larger than the classes: all of them, best first.
        match apply(OutputPolicy::TopK(10), s(&v)) {
            Ok(InferenceOutput::TopK(t)) => assert_eq!(t.len(), 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ties_and_nans() {
        assert_eq!(
            apply(OutputPolicy::Label, s(&[0.5, 0.5, 0.1])),
            Ok(InferenceOutput::Label(0))
        );
        assert_eq!(
            apply(OutputPolicy::Label, s(&[f32::NAN, 0.2, 0.1])),
            Ok(InferenceOutput::Label(1))
        );
    }

    #[test]
    fn label_and_top_k_need_one_row() {
        let two = Scores {
            values: vec![0.1; 20],
            rows: 2,
        };
        assert!(matches!(
            apply(OutputPolicy::Label, two.clone()),
            Err(OutputError::OneSampleOnly { rows: 2, .. })
        ));
        assert!(apply(OutputPolicy::Scores, two).is_ok());
        assert_eq!(apply(OutputPolicy::Label, s(&[])), Err(OutputError::Empty));
    }

    proptest! {
        #[test]
        fn label_is_the_first_top_1(v in proptest::collection::vec(any::<f32>(), 1..40)) {
            let label = apply(OutputPolicy::Label, s(&v)).unwrap();
            let top = apply(OutputPolicy::TopK(1), s(&v)).unwrap();
            match (label, top) {
                (InferenceOutput::Label(l), InferenceOutput::TopK(t)) => {
                    prop_assert_eq!(t.len(), 1);
                    prop_assert_eq!(l, t[0].0);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
