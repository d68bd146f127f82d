//! Before a model is sealed, prove it runs: load it with tract-onnx, optimise
//! it and build a runnable plan, exactly as the runtime will. A file that is
//! not ONNX, or uses an operator tract does not implement, is refused with
//! tract's explanation (which names the operator).

use std::path::Path;

use anyhow::{Context, Result};
use tract_onnx::prelude::*;

/// What the model looks like, for the operator's confirmation.
#[derive(Debug)]
pub struct ModelSummary {
    /// Number of nodes after optimisation.
    pub nodes: usize,
    /// Input facts, e.g. `N,64,F32`.
    pub inputs: Vec<String>,
    /// Output facts.
    pub outputs: Vec<String>,
}

/// Load, optimise and plan the model at `path`.
pub fn validate(path: &Path) -> Result<ModelSummary> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{} is not a loadable ONNX model", path.display()))?;
    let optimized = model
        .into_optimized()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{} cannot be optimised for inference", path.display()))?;
    let facts = |outlets: &[OutletId]| -> Vec<String> {
        outlets
            .iter()
            .map(|o| {
                optimized
                    .outlet_fact(*o)
                    .map(|f| format!("{f:?}"))
                    .unwrap_or_else(|_| "?".into())
            })
            .collect()
    };
    let summary = ModelSummary {
        nodes: optimized.nodes().len(),
        inputs: facts(
            optimized
                .input_outlets()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?,
        ),
        outputs: facts(
            optimized
                .output_outlets()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?,
        ),
    };
    optimized
        .into_runnable()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{} cannot be planned for execution", path.display()))?;
    Ok(summary)
}
