//! The trainable global model as ONNX: a graph of standard operators
//! (MatMul, Add, Relu, Softmax; opset 13) whose parameters are float
//! initializers named as in [`Params`] (`W`, `B` or `W1`, `B1`, `W2`, `B2`).
//! [`build`] makes such a model, [`read_params`] takes its parameters out
//! for local training, [`write_params`] puts aggregated ones back, and the
//! same bytes are what tract serves. The reference exports in
//! `shared/models` keep weights in ONNX-ML operator attributes, which is why
//! we generate our own.
//!
//! Must never: decode more than [`MAX_ONNX_BYTES`]; return parameters that
//! are non-finite, of the wrong shape, or taken from a graph that does not
//! compute exactly what [`crate::train`] trains (otherwise a delta would be
//! computed for one function and applied to another); or let `write_params`
//! change anything but the parameter values.

use std::collections::BTreeMap;

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

use crate::train::{Arch, CLASSES, INPUT_FEATURES, MAX_HIDDEN, NamedTensor, Params, TrainError};

/// Largest model we decode. The models here are under 1 MiB (the widest
/// accepted MLP, 4096 hidden units, is about 1.2 MiB); the bound only stops
/// a hostile blob from making us allocate without limit.
pub const MAX_ONNX_BYTES: usize = 256 * 1024 * 1024;
/// Graph input: `f32 [N, 64]`, N symbolic.
pub const INPUT_NAME: &str = "input";
/// Graph output: `f32 [N, 10]`, softmax probabilities.
pub const OUTPUT_NAME: &str = "probabilities";
pub const PRODUCER_NAME: &str = "cca-ml fl";
/// ONNX IR version 8 (ONNX 1.10+), understood by tract and onnxruntime.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset: 13 is where Softmax takes a single `axis`.
pub const OPSET: i64 = 13;
const BATCH_DIM: &str = "N";

/// Every check of this module, by name.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("the model is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("not a valid ONNX protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the model has no graph")]
    NoGraph,
    #[error("parameters rejected: {0}")]
    Params(#[from] TrainError),
    #[error("unrecognised parameter layout: [{found}]")]
    UnknownLayout { found: String },
    #[error("initializer {name} appears more than once")]
    DuplicateInitializer { name: String },
    #[error("initializer {name} is not a parameter of this model (expected {expected})")]
    UnexpectedInitializer { name: String, expected: String },
    #[error("the graph has {count} sparse initializers; parameters must be dense")]
    SparseInitializers { count: usize },
    #[error("initializer {name} is missing")]
    MissingInitializer { name: String },
    #[error("initializer {name} has data type {data_type}, expected FLOAT (1)")]
    DataType { name: String, data_type: i32 },
    #[error("initializer {name} has invalid dims {dims:?}")]
    Dims { name: String, dims: Vec<i64> },
    #[error("initializer {name} keeps its data outside the model (external or segmented)")]
    ExternalData { name: String },
    #[error("initializer {name} sets both float_data and raw_data")]
    AmbiguousData { name: String },
    #[error("initializer {name} holds {found_bytes} data bytes, its dims need {expected_bytes}")]
    DataLength {
        name: String,
        expected_bytes: usize,
        found_bytes: usize,
    },
    #[error("initializer {name} value {index} is not finite")]
    NonFinite { name: String, index: usize },
    #[error("the graph does not compute {arch:?} as built here: {detail}")]
    GraphMismatch { arch: Arch, detail: String },
    #[error("new parameters do not fit the model's initializers: {detail}")]
    LayoutMismatch { detail: String },
}

/// The ONNX model computing `arch` with `params` as initializers (stored as
/// little-endian `raw_data`).
pub fn build(arch: &Arch, params: &Params) -> Result<Vec<u8>, OnnxError> {
    params.check_matches(arch)?;
    let graph = GraphProto {
        name: "cca_ml_fl".to_string(),
        node: nodes(arch),
        initializer: params.tensors.iter().map(float_initializer).collect(),
        input: vec![value_info(INPUT_NAME, INPUT_FEATURES)],
        output: vec![value_info(OUTPUT_NAME, CLASSES)],
        doc_string: format!("{arch:?}; parameters are the float initializers"),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: PRODUCER_NAME.to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// The parameters of a model made by [`build`] (or an equivalent one: float
/// initializers may come as `float_data` or `raw_data`), in [`Params`]
/// order, after checking their names, shapes, finiteness and that the graph
/// is the one [`build`] makes for their architecture.
pub fn read_params(onnx: &[u8]) -> Result<Params, OnnxError> {
    decode_checked(onnx).map(|(_, params)| params)
}

/// `onnx` with its initializer values replaced by `params`. The model must
/// already hold exactly these tensors (names and shapes); each keeps its
/// storage form (`raw_data` or `float_data`) and every other field of the
/// model is kept. Fields unknown to tract's ONNX schema, if any, are not
/// carried over (prost does not retain them); models from [`build`] have
/// none.
pub fn write_params(onnx: &[u8], params: &Params) -> Result<Vec<u8>, OnnxError> {
    let (mut model, current) = decode_checked(onnx)?;
    let arch = arch_of(&current)?;
    params.check_matches(&arch).map_err(|e| match e {
        TrainError::ParamsMismatch { detail, .. } => OnnxError::LayoutMismatch { detail },
        other => OnnxError::Params(other),
    })?;
    let graph = model.graph.as_mut().ok_or(OnnxError::NoGraph)?;
    for init in &mut graph.initializer {
        let tensor = params
            .tensors
            .iter()
            .find(|t| t.name == init.name)
            .ok_or_else(|| OnnxError::MissingInitializer {
                name: init.name.clone(),
            })?;
        if init.raw_data.is_empty() {
            init.float_data = tensor.values.clone();
        } else {
            init.raw_data = le_bytes(&tensor.values);
        }
    }
    Ok(model.encode_to_vec())
}

/// Which architecture a parameter set belongs to: exactly `W [64,10]`,
/// `B [10]` (softmax regression) or `W1 [64,h]`, `B1 [h]`, `W2 [h,10]`,
/// `B2 [10]` with 1 ≤ h ≤ [`MAX_HIDDEN`] (MLP), with value counts matching
/// the shapes.
pub fn arch_of(params: &Params) -> Result<Arch, OnnxError> {
    let candidate = match params.tensors.as_slice() {
        [w, _] if w.name == "W" => Some(Arch::SoftmaxRegression),
        [w1, _, _, _] if w1.name == "W1" => match w1.shape.as_slice() {
            &[_, hidden] if (1..=MAX_HIDDEN).contains(&hidden) => Some(Arch::Mlp { hidden }),
            _ => None,
        },
        _ => None,
    };
    let fits = |arch: &Arch| {
        let layout = arch.layout();
        layout.len() == params.tensors.len()
            && layout
                .iter()
                .zip(&params.tensors)
                .all(|((name, shape), t)| {
                    t.name == *name
                        && t.shape == *shape
                        && t.values.len() == shape.iter().product::<usize>()
                })
    };
    match candidate {
        Some(arch) if fits(&arch) => Ok(arch),
        _ => Err(OnnxError::UnknownLayout {
            found: describe(
                params
                    .tensors
                    .iter()
                    .map(|t| (t.name.as_str(), &t.shape[..])),
            ),
        }),
    }
}

/// Decodes, finds the parameters, and checks the graph computes their
/// architecture. Shared by [`read_params`] and [`write_params`] so writing
/// is held to the same checks as reading.
fn decode_checked(onnx: &[u8]) -> Result<(ModelProto, Params), OnnxError> {
    if onnx.len() > MAX_ONNX_BYTES {
        return Err(OnnxError::TooLarge {
            len: onnx.len(),
            max: MAX_ONNX_BYTES,
        });
    }
    let model = ModelProto::decode(onnx)?;
    let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    if !graph.sparse_initializer.is_empty() {
        return Err(OnnxError::SparseInitializers {
            count: graph.sparse_initializer.len(),
        });
    }

    let mut by_name: BTreeMap<&str, &TensorProto> = BTreeMap::new();
    for init in &graph.initializer {
        if by_name.insert(init.name.as_str(), init).is_some() {
            return Err(OnnxError::DuplicateInitializer {
                name: init.name.clone(),
            });
        }
    }
    // The name set tells the architecture; shapes are checked by arch_of.
    let names: &[&str] = if by_name.contains_key("W1") {
        &["W1", "B1", "W2", "B2"]
    } else if by_name.contains_key("W") {
        &["W", "B"]
    } else {
        return Err(OnnxError::UnknownLayout {
            found: graph
                .initializer
                .iter()
                .map(|t| format!("{}{:?}", t.name, t.dims))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if let Some(extra) = by_name.keys().find(|n| !names.contains(n)) {
        // An initializer we do not train would silently stay at its value.
        return Err(OnnxError::UnexpectedInitializer {
            name: extra.to_string(),
            expected: names.join(", "),
        });
    }
    let tensors = names
        .iter()
        .map(|&name| {
            by_name
                .get(name)
                .ok_or_else(|| OnnxError::MissingInitializer {
                    name: name.to_string(),
                })
                .and_then(|t| named_tensor(t))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let params = Params { tensors };
    let arch = arch_of(&params)?;
    check_graph(&arch, graph)?;
    Ok((model, params))
}

/// The graph must be the one [`build`] makes for `arch`: same nodes in the
/// same order (node names and doc strings aside), the one input and the one
/// output. IR < 4 models also list initializers as inputs; those are allowed.
fn check_graph(arch: &Arch, graph: &GraphProto) -> Result<(), OnnxError> {
    let mismatch = |detail: String| OnnxError::GraphMismatch {
        arch: *arch,
        detail,
    };
    let strip = |n: &NodeProto| NodeProto {
        name: String::new(),
        doc_string: String::new(),
        ..n.clone()
    };
    let expected = nodes(arch);
    if graph.node.len() != expected.len() {
        return Err(mismatch(format!(
            "{} nodes, expected {}",
            graph.node.len(),
            expected.len()
        )));
    }
    for (i, (found, want)) in graph.node.iter().zip(&expected).enumerate() {
        if strip(found) != strip(want) {
            return Err(mismatch(format!(
                "node {i} is {} {:?} -> {:?}, expected {} {:?} -> {:?} (or its attributes differ)",
                found.op_type, found.input, found.output, want.op_type, want.input, want.output
            )));
        }
    }
    let params: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_str())
        .filter(|n| !params.contains(n))
        .collect();
    if inputs != [INPUT_NAME] {
        return Err(mismatch(format!(
            "graph inputs {inputs:?}, expected [{INPUT_NAME:?}]"
        )));
    }
    let outputs: Vec<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
    if outputs != [OUTPUT_NAME] {
        return Err(mismatch(format!(
            "graph outputs {outputs:?}, expected [{OUTPUT_NAME:?}]"
        )));
    }
    Ok(())
}

/// The computation, in topological order. Intermediate names are fixed so
/// that [`check_graph`] can compare wiring exactly.
fn nodes(arch: &Arch) -> Vec<NodeProto> {
    let softmax = node(
        "Softmax",
        &["logits"],
        OUTPUT_NAME,
        vec![AttributeProto {
            name: "axis".to_string(),
            r#type: AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        }],
    );
    match arch {
        Arch::SoftmaxRegression => vec![
            node("MatMul", &[INPUT_NAME, "W"], "logits_matmul", vec![]),
            node("Add", &["logits_matmul", "B"], "logits", vec![]),
            softmax,
        ],
        Arch::Mlp { .. } => vec![
            node("MatMul", &[INPUT_NAME, "W1"], "hidden_matmul", vec![]),
            node("Add", &["hidden_matmul", "B1"], "hidden_pre", vec![]),
            node("Relu", &["hidden_pre"], "hidden", vec![]),
            node("MatMul", &["hidden", "W2"], "logits_matmul", vec![]),
            node("Add", &["logits_matmul", "B2"], "logits", vec![]),
            softmax,
        ],
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: format!("{op}_{output}"),
        op_type: op.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

/// `f32 [N, width]` with N symbolic, so any batch size runs.
fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dims = [
        dimension::Value::DimParam(BATCH_DIM.to_string()),
        dimension::Value::DimValue(width as i64),
    ];
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|v| Dimension {
                            value: Some(v),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn float_initializer(t: &NamedTensor) -> TensorProto {
    TensorProto {
        name: t.name.clone(),
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: le_bytes(&t.values),
        ..Default::default()
    }
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A float initializer as a [`NamedTensor`], with every size checked before
/// anything is allocated from it.
fn named_tensor(t: &TensorProto) -> Result<NamedTensor, OnnxError> {
    let name = t.name.clone();
    if t.data_type != DataType::Float as i32 {
        return Err(OnnxError::DataType {
            name,
            data_type: t.data_type,
        });
    }
    if t.data_location == Some(DataLocation::External as i32)
        || !t.external_data.is_empty()
        || t.segment.is_some()
    {
        return Err(OnnxError::ExternalData { name });
    }
    let bad_dims = || OnnxError::Dims {
        name: t.name.clone(),
        dims: t.dims.clone(),
    };
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad_dims()))
        .collect::<Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(bad_dims)?;
    let expected_bytes = count.checked_mul(4).ok_or_else(bad_dims)?;
    let values = match (t.float_data.is_empty(), t.raw_data.is_empty()) {
        (false, false) => return Err(OnnxError::AmbiguousData { name }),
        (false, true) => {
            if t.float_data.len() != count {
                return Err(OnnxError::DataLength {
                    name,
                    expected_bytes,
                    found_bytes: t.float_data.len().saturating_mul(4),
                });
            }
            t.float_data.clone()
        }
        (true, _) => {
            if t.raw_data.len() != expected_bytes {
                return Err(OnnxError::DataLength {
                    name,
                    expected_bytes,
                    found_bytes: t.raw_data.len(),
                });
            }
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
    };
    if let Some(index) = values.iter().position(|v: &f32| !v.is_finite()) {
        return Err(OnnxError::NonFinite { name, index });
    }
    Ok(NamedTensor {
        name,
        shape,
        values,
    })
}

fn describe<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize])>) -> String {
    tensors
        .map(|(name, shape)| format!("{name}{shape:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_support::load_digits;
    use crate::train::{self, Optimizer, TrainConfig};
    use proptest::prelude::*;
    use tract_onnx::prelude::*;

    /// Runs `onnx` in tract on `x` and returns the argmax of each row of
    /// `probabilities`, checking each row is a distribution.
    fn tract_predict(onnx: &[u8], x: &[Vec<f32>]) -> Vec<u32> {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let flat: Vec<f32> = x.iter().flatten().copied().collect();
        let input =
            tract_onnx::prelude::Tensor::from_shape(&[x.len(), INPUT_FEATURES], &flat).unwrap();
        let out = plan.run(tvec![input.into()]).unwrap();
        let probs = out[0].to_plain_array_view::<f32>().unwrap();
        assert_eq!(probs.shape(), &[x.len(), CLASSES]);
        probs
            .outer_iter()
            .map(|row| {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-4, "row sums to {sum}");
                let mut best = 0;
                for (i, &p) in row.iter().enumerate() {
                    if p > row[best] {
                        best = i;
                    }
                }
                best as u32
            })
            .collect()
    }

    fn trained(arch: Arch, cfg: &TrainConfig) -> Params {
        let (x, y) = load_digits("digits_train.csv");
        let mut p = train::init(&arch, 2).unwrap();
        train::train(&arch, &mut p, &x, &y, cfg).unwrap();
        p
    }

    fn tract_agrees_with_rust(arch: Arch, cfg: &TrainConfig) {
        let p = trained(arch, cfg);
        let (x, y) = load_digits("digits_test.csv");
        let onnx = build(&arch, &p).unwrap();
        let from_tract = tract_predict(&onnx, &x);
        let from_rust = train::predict(&arch, &p, &x).unwrap();
        assert_eq!(from_tract, from_rust);
        let correct = from_tract.iter().zip(&y).filter(|(a, b)| a == b).count();
        let tract_acc = correct as f64 / y.len() as f64;
        let rust_acc = train::accuracy(&arch, &p, &x, &y).unwrap();
        assert_eq!(tract_acc, rust_acc);
        println!(
            "{arch:?}: tract and train::predict agree on all 360 rows; accuracy {tract_acc:.4} ({correct}/360)"
        );
        // The batch dimension is symbolic: one row runs too.
        assert_eq!(tract_predict(&onnx, &x[..1]), from_rust[..1]);
    }

    #[test]
    fn tract_runs_softmax_model_like_training_code() {
        let cfg = TrainConfig {
            epochs: 30,
            batch_size: 32,
            learning_rate: 0.5,
            optimizer: Optimizer::Sgd,
            seed: 7,
        };
        tract_agrees_with_rust(Arch::SoftmaxRegression, &cfg);
    }

    #[test]
    fn tract_runs_mlp_model_like_training_code() {
        let cfg = TrainConfig {
            epochs: 30,
            batch_size: 64,
            learning_rate: 0.02,
            optimizer: Optimizer::ADAM_DEFAULT,
            seed: 11,
        };
        tract_agrees_with_rust(Arch::Mlp { hidden: 32 }, &cfg);
    }

    #[test]
    fn build_then_read_round_trips() {
        for arch in [
            Arch::SoftmaxRegression,
            Arch::Mlp { hidden: 32 },
            Arch::Mlp { hidden: 1 },
        ] {
            let mut p = train::init(&arch, 9).unwrap();
            // Non-zero everywhere, including the biases.
            for (i, v) in p
                .tensors
                .iter_mut()
                .flat_map(|t| t.values.iter_mut())
                .enumerate()
            {
                *v += (i as f32 * 0.37).sin();
            }
            let onnx = build(&arch, &p).unwrap();
            assert_eq!(read_params(&onnx).unwrap(), p);
            assert_eq!(arch_of(&p).unwrap(), arch);
            let model = ModelProto::decode(&onnx[..]).unwrap();
            assert_eq!(model.ir_version, 8);
            assert_eq!(model.opset_import[0].version, 13);
            assert_eq!(model.producer_name, "cca-ml fl");
        }
    }

    #[test]
    fn float_data_is_accepted_and_kept_on_write() {
        let arch = Arch::Mlp { hidden: 5 };
        let p = train::init(&arch, 1).unwrap();
        let mut model = ModelProto::decode(&build(&arch, &p).unwrap()[..]).unwrap();
        for t in &mut model.graph.as_mut().unwrap().initializer {
            t.float_data = t
                .raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            t.raw_data.clear();
        }
        let onnx = model.encode_to_vec();
        assert_eq!(read_params(&onnx).unwrap(), p);
        let q = train::init(&arch, 2).unwrap();
        let written = write_params(&onnx, &q).unwrap();
        let back = ModelProto::decode(&written[..]).unwrap();
        for t in &back.graph.unwrap().initializer {
            assert!(t.raw_data.is_empty() && !t.float_data.is_empty());
        }
        assert_eq!(read_params(&written).unwrap(), q);
    }

    /// The model with every initializer's data removed: what must not change.
    fn without_values(onnx: &[u8]) -> ModelProto {
        let mut m = ModelProto::decode(onnx).unwrap();
        for t in &mut m.graph.as_mut().unwrap().initializer {
            t.raw_data.clear();
            t.float_data.clear();
        }
        m
    }

    #[test]
    fn write_params_changes_exactly_the_values() {
        let arch = Arch::Mlp { hidden: 32 };
        let p = train::init(&arch, 1).unwrap();
        let q = trained(
            arch,
            &TrainConfig {
                epochs: 1,
                batch_size: 64,
                learning_rate: 0.01,
                optimizer: Optimizer::ADAM_DEFAULT,
                seed: 3,
            },
        );
        let onnx = build(&arch, &p).unwrap();
        let written = write_params(&onnx, &q).unwrap();
        assert_eq!(read_params(&written).unwrap(), q);
        assert_eq!(without_values(&written), without_values(&onnx));
        // And the values did change (not a no-op that passes trivially).
        assert_ne!(read_params(&written).unwrap(), p);
        // Writing the same values back reproduces the original bytes.
        assert_eq!(write_params(&written, &p).unwrap(), onnx);
    }

    #[test]
    fn write_params_refuses_other_names_or_shapes() {
        let arch = Arch::Mlp { hidden: 8 };
        let onnx = build(&arch, &train::init(&arch, 0).unwrap()).unwrap();
        let wider = train::init(&Arch::Mlp { hidden: 9 }, 0).unwrap();
        assert!(matches!(
            write_params(&onnx, &wider),
            Err(OnnxError::LayoutMismatch { .. })
        ));
        let softmax = train::init(&Arch::SoftmaxRegression, 0).unwrap();
        assert!(matches!(
            write_params(&onnx, &softmax),
            Err(OnnxError::LayoutMismatch { .. })
        ));
        let mut renamed = train::init(&arch, 0).unwrap();
        renamed.tensors[1].name = "bias".into();
        assert!(matches!(
            write_params(&onnx, &renamed),
            Err(OnnxError::LayoutMismatch { .. })
        ));
        let mut nan = train::init(&arch, 0).unwrap();
        nan.tensors[2].values[4] = f32::NAN;
        assert!(matches!(
            write_params(&onnx, &nan),
            Err(OnnxError::Params(TrainError::NonFiniteParam {
                index: 4,
                ..
            }))
        ));
    }

    /// Build a softmax model, let `edit` tamper with it, and read it back.
    fn read_edited(edit: impl FnOnce(&mut GraphProto)) -> Result<Params, OnnxError> {
        let arch = Arch::SoftmaxRegression;
        let onnx = build(&arch, &train::init(&arch, 0).unwrap()).unwrap();
        let mut model = ModelProto::decode(&onnx[..]).unwrap();
        edit(model.graph.as_mut().unwrap());
        read_params(&model.encode_to_vec())
    }

    #[test]
    fn read_params_names_the_failed_check() {
        let r = read_edited(|g| {
            let mut bytes = g.initializer[1].raw_data.clone();
            bytes[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
            g.initializer[1].raw_data = bytes;
        });
        assert!(matches!(r, Err(OnnxError::NonFinite { ref name, index: 1 }) if name == "B"));
        let r = read_edited(|g| g.initializer[0].raw_data.truncate(12));
        assert!(matches!(
            r,
            Err(OnnxError::DataLength {
                expected_bytes: 2560,
                found_bytes: 12,
                ..
            })
        ));
        let r = read_edited(|g| g.initializer[0].dims = vec![64, -10]);
        assert!(matches!(r, Err(OnnxError::Dims { .. })));
        let r = read_edited(|g| g.initializer[0].dims = vec![i64::MAX, i64::MAX]);
        assert!(matches!(r, Err(OnnxError::Dims { .. })));
        let r = read_edited(|g| g.initializer[0].dims = vec![10, 64]);
        assert!(matches!(r, Err(OnnxError::UnknownLayout { .. })));
        let r = read_edited(|g| g.initializer[0].data_type = DataType::Double as i32);
        assert!(matches!(r, Err(OnnxError::DataType { data_type: 11, .. })));
        let r = read_edited(|g| g.initializer[0].float_data = vec![0.0; 640]);
        assert!(matches!(r, Err(OnnxError::AmbiguousData { .. })));
        let r = read_edited(|g| g.initializer[0].data_location = Some(1));
        assert!(matches!(r, Err(OnnxError::ExternalData { .. })));
        let r = read_edited(|g| g.initializer.remove(1).name.clear());
        assert!(matches!(r, Err(OnnxError::MissingInitializer { ref name }) if name == "B"));
        let r = read_edited(|g| {
            let extra = g.initializer[1].clone();
            g.initializer.push(extra);
        });
        assert!(matches!(r, Err(OnnxError::DuplicateInitializer { .. })));
        let r = read_edited(|g| {
            let mut extra = g.initializer[1].clone();
            extra.name = "scale".into();
            g.initializer.push(extra);
        });
        assert!(
            matches!(r, Err(OnnxError::UnexpectedInitializer { ref name, .. }) if name == "scale")
        );
        let r = read_edited(|g| g.initializer.clear());
        assert!(matches!(r, Err(OnnxError::UnknownLayout { .. })));
        // Same parameters, different function: Relu slipped before Softmax.
        let r = read_edited(|g| g.node[2].op_type = "Relu".into());
        assert!(matches!(r, Err(OnnxError::GraphMismatch { .. })));
        let r = read_edited(|g| g.node[2].attribute[0].i = 0);
        assert!(matches!(r, Err(OnnxError::GraphMismatch { .. })));
        let r = read_edited(|g| g.output[0].name = "scores".into());
        assert!(matches!(r, Err(OnnxError::GraphMismatch { .. })));
        // Node names are cosmetic.
        assert!(read_edited(|g| g.node[0].name = "renamed".into()).is_ok());
        assert!(matches!(read_params(&[]), Err(OnnxError::NoGraph)));
        assert!(matches!(read_params(&[0xff; 7]), Err(OnnxError::Decode(_))));
        let huge = vec![0u8; MAX_ONNX_BYTES + 1];
        assert!(matches!(
            read_params(&huge),
            Err(OnnxError::TooLarge { len, .. }) if len == MAX_ONNX_BYTES + 1
        ));
    }

    #[test]
    fn build_refuses_params_of_another_arch() {
        let p = train::init(&Arch::Mlp { hidden: 4 }, 0).unwrap();
        assert!(matches!(
            build(&Arch::SoftmaxRegression, &p),
            Err(OnnxError::Params(TrainError::ParamsMismatch { .. }))
        ));
        assert!(matches!(
            arch_of(&Params { tensors: vec![] }),
            Err(OnnxError::UnknownLayout { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = read_params(&bytes);
            let _ = write_params(&bytes, &Params { tensors: vec![] });
        }

        /// Random bytes rarely get past the protobuf decoder, so also corrupt
        /// a valid model in a few places.
        #[test]
        fn corrupted_models_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let arch = Arch::Mlp { hidden: 3 };
            let p = train::init(&arch, 0).unwrap();
            let mut onnx = build(&arch, &p).unwrap();
            for (at, byte) in edits {
                let i = at.index(onnx.len());
                onnx[i] = byte;
            }
            let _ = read_params(&onnx);
            let _ = write_params(&onnx, &p);
            let _ = read_params(&onnx[..cut.index(onnx.len())]);
        }
    }
}
