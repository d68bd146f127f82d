//! Before a model is sealed, prove it runs: load it with tract-onnx, optimise
//! it and build a runnable plan, exactly as the runtime will. A file that is
//! not ONNX, or uses an operator tract does not implement, is refused with
//! tract's explanation (which names the operator).
//!
//! The weights are not loaded: [`crate::onnx_scan`] streams the file and hands
//! tract the graph with its large initializers (and large `Constant` nodes)
//! turned into inputs of the same type and shape, which is all tract needs to
//! type, optimise and plan it. A graph that cannot be typed that way (an
//! operator that wants a constant weight) is loaded whole as before, if the
//! file is small enough.
//!
//! Must never: hold the weights of a model over [`FULL_LOAD_MAX`] in memory,
//! or pass a model whose graph tract has not typed, optimised and planned.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result};
use tract_onnx::prelude::*;

use crate::onnx_scan::{self, Limits};

/// Largest file that may be loaded whole when streamed validation fails.
pub const FULL_LOAD_MAX: u64 = 256 << 20;

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

/// Load, optimise and plan the model at `path`. `pinned_input` fixes the
/// first input's shape (0 keeps an axis symbolic), for models tract cannot
/// type with symbolic dimensions; runtimes must pin the same shape.
pub fn validate(path: &Path, pinned_input: Option<&[usize]>) -> Result<ModelSummary> {
    validate_with(path, &Limits::default(), FULL_LOAD_MAX, pinned_input)
}

/// Fix input 0 to `dims` (0 = symbolic), keeping its element type.
fn pin(model: &mut InferenceModel, dims: Option<&[usize]>) -> Result<()> {
    match dims {
        Some(dims) => inference::pin_input(model, dims)
            .map_err(tract_err)
            .context("pinning the input shape"),
        None => Ok(()),
    }
}

fn validate_with(
    path: &Path,
    limits: &Limits,
    full_load_max: u64,
    pinned: Option<&[usize]>,
) -> Result<ModelSummary> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    match validate_streamed(path, size, limits, pinned) {
        Ok(summary) => Ok(summary),
        // A small file gets today's full load, so its verdict and wording are
        // tract's own whatever the streamed pass tripped on.
        Err(_) if size <= full_load_max => validate_full(path, pinned),
        Err(e) => Err(e),
    }
}

fn tract_err(e: TractError) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn validate_streamed(
    path: &Path,
    size: u64,
    limits: &Limits,
    pinned: Option<&[usize]>,
) -> Result<ModelSummary> {
    let not_loadable = || format!("{} is not a loadable ONNX model", path.display());
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let slim =
        onnx_scan::slim_model(BufReader::new(file), size, limits).with_context(not_loadable)?;
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &slim.bytes[..])
        .map_err(tract_err)
        .with_context(not_loadable)?;
    drop(slim.bytes);
    pin(&mut model, pinned)?;
    let optimized = model.into_optimized().map_err(tract_err).with_context(|| {
        if slim.converted.is_empty() {
            format!("{} cannot be optimised for inference", path.display())
        } else {
            format!(
                "{} cannot be optimised for inference: large-model validation could not type \
                 the graph with its {} large weight tensors ({:.1} MiB) standing in as inputs, \
                 and only files up to {} MiB are loaded whole",
                path.display(),
                slim.converted.len(),
                slim.converted_bytes as f64 / f64::from(1 << 20),
                FULL_LOAD_MAX >> 20,
            )
        }
    })?;
    summarize_and_plan(optimized, &slim.converted, path)
}

fn validate_full(path: &Path, pinned: Option<&[usize]>) -> Result<ModelSummary> {
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(tract_err)
        .with_context(|| format!("{} is not a loadable ONNX model", path.display()))?;
    pin(&mut model, pinned)?;
    let optimized = model
        .into_optimized()
        .map_err(tract_err)
        .with_context(|| format!("{} cannot be optimised for inference", path.display()))?;
    summarize_and_plan(optimized, &[], path)
}

/// Summarise the model's own inputs (not the initializers standing in as
/// inputs, named in `converted`) and outputs, then build the plan.
fn summarize_and_plan(
    optimized: TypedModel,
    converted: &[String],
    path: &Path,
) -> Result<ModelSummary> {
    let converted: HashSet<&str> = converted.iter().map(String::as_str).collect();
    let facts = |outlets: &[OutletId], skip: &HashSet<&str>| -> Vec<String> {
        outlets
            .iter()
            .filter(|o| !skip.contains(optimized.node(o.node).name.as_str()))
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
        inputs: facts(optimized.input_outlets().map_err(tract_err)?, &converted),
        outputs: facts(
            optimized.output_outlets().map_err(tract_err)?,
            &HashSet::new(),
        ),
    };
    optimized
        .into_runnable()
        .map_err(tract_err)
        .with_context(|| format!("{} cannot be planned for execution", path.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use prost::Message;
    use tract_onnx::pb;
    use tract_onnx::pb::tensor_proto::DataType;

    use super::*;

    const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

    /// A file in the temp dir, removed when dropped.
    struct TempModel(PathBuf);

    impl TempModel {
        fn new(name: &str, bytes: &[u8]) -> TempModel {
            let path = std::env::temp_dir().join(format!(
                "model-provider-validate-{}-{name}.onnx",
                std::process::id()
            ));
            std::fs::write(&path, bytes).unwrap();
            TempModel(path)
        }
    }

    impl Drop for TempModel {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{Dimension, dimension::Value};
        let dim = dims
            .iter()
            .map(|d| Dimension {
                denotation: String::new(),
                value: Some(match d {
                    Some(v) => Value::DimValue(*v),
                    None => Value::DimParam("N".into()),
                }),
            })
            .collect();
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(pb::TensorShapeProto { dim }),
                })),
            }),
            doc_string: String::new(),
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: format!("{op}_0"),
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn model(graph: pb::GraphProto) -> Vec<u8> {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            producer_name: "model-provider tests".into(),
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// `y = x · W` with `x: [N, k]` and a `k × k` f32 initializer.
    fn matmul_model(k: usize) -> Vec<u8> {
        let raw: Vec<u8> = (0..k * k)
            .flat_map(|i| ((i % 7) as f32 * 0.25).to_le_bytes())
            .collect();
        let k = k as i64;
        model(pb::GraphProto {
            name: "matmul".into(),
            node: vec![node("MatMul", &["x", "W"], "y")],
            initializer: vec![pb::TensorProto {
                name: "W".into(),
                dims: vec![k, k],
                data_type: DataType::Float as i32,
                raw_data: raw,
                ..Default::default()
            }],
            input: vec![value_info("x", DataType::Float, &[None, Some(k)])],
            output: vec![value_info("y", DataType::Float, &[None, Some(k)])],
            ..Default::default()
        })
    }

    fn convert_all() -> Limits {
        Limits {
            big_initializer: 0,
            min_convert: 0,
            ..Limits::default()
        }
    }

    #[test]
    fn a_big_initializer_is_validated_without_its_weights() {
        let bytes = matmul_model(1024);
        assert!(bytes.len() > 4 << 20);
        let f = TempModel::new("matmul", &bytes);

        let slim = onnx_scan::slim_model(
            std::io::Cursor::new(&bytes),
            bytes.len() as u64,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(slim.converted, ["W"]);
        assert!(slim.bytes.len() < 64 * 1024, "{} bytes", slim.bytes.len());

        // No fallback allowed: the streamed path alone must succeed.
        let s = validate_with(&f.0, &Limits::default(), 0, None).unwrap();
        assert_eq!(
            s.inputs.len(),
            1,
            "only the model's own input: {:?}",
            s.inputs
        );
        assert!(
            s.inputs[0].contains("1024") && s.inputs[0].contains("F32"),
            "{:?}",
            s.inputs
        );
        assert_eq!(s.outputs.len(), 1);
        assert!(s.outputs[0].contains("1024"), "{:?}", s.outputs);
        assert!(validate(&f.0, None).is_ok());

        // Before IR 4 the initializer is listed among the inputs as well.
        let mut m = pb::ModelProto::decode(&bytes[..]).unwrap();
        if let Some(g) = m.graph.as_mut() {
            g.input
                .push(value_info("W", DataType::Float, &[Some(1024), Some(1024)]));
        }
        m.ir_version = 3;
        let f = TempModel::new("matmul-ir3", &m.encode_to_vec());
        let s = validate_with(&f.0, &Limits::default(), 0, None).unwrap();
        assert_eq!(s.inputs.len(), 1, "{:?}", s.inputs);
    }

    #[test]
    fn a_big_constant_node_is_validated_without_its_weights() {
        // The same model with the weight in a Constant node, as paddle2onnx
        // writes them.
        let mut m = pb::ModelProto::decode(&matmul_model(1024)[..]).unwrap();
        let g = m.graph.as_mut().unwrap();
        let w = g.initializer.remove(0);
        g.node.insert(
            0,
            pb::NodeProto {
                output: vec!["W".into()],
                name: "weights".into(),
                op_type: "Constant".into(),
                attribute: vec![pb::AttributeProto {
                    name: "value".into(),
                    r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                    t: Some(w),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let bytes = m.encode_to_vec();
        let f = TempModel::new("constant", &bytes);
        let slim = onnx_scan::slim_model(
            std::io::Cursor::new(&bytes),
            bytes.len() as u64,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(slim.converted, ["W"]);
        assert!(slim.bytes.len() < 64 * 1024, "{} bytes", slim.bytes.len());
        let s = validate_with(&f.0, &Limits::default(), 0, None).unwrap();
        assert_eq!(s.inputs.len(), 1, "{:?}", s.inputs);
    }

    /// Reshape needs its shape as a constant: standing it in as an input
    /// leaves the graph untyped.
    fn reshape_model() -> Vec<u8> {
        model(pb::GraphProto {
            name: "reshape".into(),
            node: vec![node("Reshape", &["x", "shape"], "y")],
            initializer: vec![pb::TensorProto {
                name: "shape".into(),
                dims: vec![2],
                data_type: DataType::Int64 as i32,
                int64_data: vec![-1, 4],
                ..Default::default()
            }],
            input: vec![value_info("x", DataType::Float, &[None, Some(8)])],
            output: vec![value_info("y", DataType::Float, &[None, Some(4)])],
            ..Default::default()
        })
    }

    #[test]
    fn an_untypable_slim_graph_falls_back_to_a_full_load_only_when_small() {
        let f = TempModel::new("reshape", &reshape_model());
        assert!(validate(&f.0, None).is_ok());
        assert!(validate_with(&f.0, &convert_all(), FULL_LOAD_MAX, None).is_ok());
        let e = validate_with(&f.0, &convert_all(), 0, None).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("large-model validation could not type the graph"),
            "{msg}"
        );
        assert!(msg.contains("1 large weight tensors"), "{msg}");
    }

    #[test]
    fn streamed_and_full_validation_agree_on_a_real_model() {
        let path = Path::new(TESTDATA).join("digits_logreg.onnx");
        let streamed = validate_with(&path, &convert_all(), 0, None).unwrap();
        let full = validate_full(&path, None).unwrap();
        assert_eq!(streamed.inputs, full.inputs);
        assert_eq!(streamed.outputs, full.outputs);
        assert_eq!(streamed.inputs.len(), 1, "{:?}", streamed.inputs);
    }

    #[test]
    fn an_unknown_operator_is_named_by_either_path() {
        let path = Path::new(TESTDATA).join("unknown_op.onnx");
        for full_load_max in [0, FULL_LOAD_MAX] {
            let e = validate_with(&path, &Limits::default(), full_load_max, None).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("FancyUnknownOp"), "{msg}");
        }
    }

    #[test]
    fn a_file_that_is_not_protobuf_is_not_loadable() {
        let f = TempModel::new("garbage", b"this is not a protobuf");
        for full_load_max in [0, FULL_LOAD_MAX] {
            let e = validate_with(&f.0, &Limits::default(), full_load_max, None).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("is not a loadable ONNX model"), "{msg}");
        }
        let e = validate_with(&f.0, &Limits::default(), 0, None).unwrap_err();
        assert!(format!("{e:#}").contains("group"), "{e:#}");
    }
}
