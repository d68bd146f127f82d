//! Turning inference outputs into what the user sees: one line per sample
//! (or a summary for many), accuracy when the data has labels, or one JSON
//! object with `--json`.

use protocol::InferenceOutput;
use serde_json::json;

/// The class an output predicts.
pub fn predicted(o: &InferenceOutput) -> Option<u32> {
    match o {
        InferenceOutput::Label(l) => Some(*l),
        InferenceOutput::TopK(t) => t.first().map(|(c, _)| *c),
        InferenceOutput::Scores(s) => s
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i as u32),
    }
}

/// All outputs of one run.
#[derive(Debug)]
pub struct Report<'a> {
    /// The model.
    pub model: &'a str,
    /// `remote` (at a runtime) or `on-device`.
    pub place: &'static str,
    /// One output per sample.
    pub outputs: Vec<InferenceOutput>,
    /// True labels, if the data has them.
    pub labels: Option<&'a [i64]>,
    /// Time per sample: request to response (remote) or the run (on-device).
    pub latencies: Vec<std::time::Duration>,
}

/// The `q` quantile of `d` in milliseconds (nearest rank).
fn quantile_ms(d: &[std::time::Duration], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = d.iter().map(|x| x.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied()
}

impl Report<'_> {
    fn accuracy(&self) -> Option<(usize, usize)> {
        let labels = self.labels?;
        let correct = self
            .outputs
            .iter()
            .zip(labels)
            .filter(|(o, y)| predicted(o).map(i64::from) == Some(**y))
            .count();
        Some((correct, self.outputs.len()))
    }

    /// Print to stdout.
    pub fn print(&self, as_json: bool) {
        let accuracy = self.accuracy();
        if as_json {
            let mut v = json!({
                "model": self.model,
                "where": self.place,
                "samples": self.outputs.len(),
                "predictions": self.outputs.iter().map(predicted).collect::<Vec<_>>(),
                "outputs": self.outputs.iter().map(output_json).collect::<Vec<_>>(),
            });
            if let Some((correct, n)) = accuracy {
                v["correct"] = json!(correct);
                v["accuracy"] = json!(correct as f64 / n.max(1) as f64);
            }
            if let (Some(p50), Some(p99)) = (
                quantile_ms(&self.latencies, 0.5),
                quantile_ms(&self.latencies, 0.99),
            ) {
                v["latency_ms"] = json!({ "p50": p50, "p99": p99 });
            }
            println!("{v}");
            return;
        }
        if self.outputs.len() <= 20 {
            for (i, o) in self.outputs.iter().enumerate() {
                println!("sample {i}: {}", describe(o));
            }
        }
        match accuracy {
            Some((correct, n)) => println!(
                "{} ({}): {n} samples, {correct} correct, accuracy {:.4}",
                self.model,
                self.place,
                correct as f64 / n.max(1) as f64
            ),
            None => println!(
                "{} ({}): {} samples",
                self.model,
                self.place,
                self.outputs.len()
            ),
        }
        if let (Some(p50), Some(p99)) = (
            quantile_ms(&self.latencies, 0.5),
            quantile_ms(&self.latencies, 0.99),
        ) {
            println!("latency per sample: p50 {p50:.3} ms, p99 {p99:.3} ms");
        }
    }
}

fn output_json(o: &InferenceOutput) -> serde_json::Value {
    match o {
        InferenceOutput::Label(l) => json!({ "label": l }),
        InferenceOutput::TopK(t) => {
            json!({ "top_k": t.iter().map(|(c, s)| json!([c, s])).collect::<Vec<_>>() })
        }
        InferenceOutput::Scores(s) => json!({ "scores": s }),
    }
}

fn describe(o: &InferenceOutput) -> String {
    match o {
        InferenceOutput::Label(l) => format!("class {l}"),
        InferenceOutput::TopK(t) => t
            .iter()
            .map(|(c, s)| format!("{c} ({s:.4})"))
            .collect::<Vec<_>>()
            .join(", "),
        InferenceOutput::Scores(s) => match predicted(o) {
            Some(c) if s.len() <= 32 => format!("class {c}, scores {s:?}"),
            Some(c) => format!("class {c} ({} scores)", s.len()),
            None => "no scores".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_and_accuracy() {
        assert_eq!(predicted(&InferenceOutput::Label(3)), Some(3));
        assert_eq!(
            predicted(&InferenceOutput::TopK(vec![(7, 0.9), (1, 0.1)])),
            Some(7)
        );
        assert_eq!(
            predicted(&InferenceOutput::Scores(vec![0.1, f32::NAN, 0.5, 0.5])),
            Some(2)
        );
        assert_eq!(predicted(&InferenceOutput::Scores(vec![])), None);
        let labels = [3, 1];
        let r = Report {
            model: "m",
            place: "remote",
            outputs: vec![InferenceOutput::Label(3), InferenceOutput::Label(2)],
            labels: Some(&labels),
            latencies: vec![
                std::time::Duration::from_millis(3),
                std::time::Duration::from_millis(1),
            ],
        };
        assert_eq!(quantile_ms(&r.latencies, 0.5), Some(3.0));
        assert_eq!(r.accuracy(), Some((1, 2)));
    }
}
