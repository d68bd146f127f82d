//! A model ready to serve: an ONNX file loaded by tract, optimised into a
//! runnable plan, with the facts a request is checked against before it runs.
//!
//! Must never: run a tensor whose element type or shape the model's input
//! facts do not admit (tract would either fail deep inside an op or, worse,
//! allocate by a hostile dimension), or keep the plaintext model bytes after
//! loading.

use std::sync::Arc;

use protocol::{Tensor, TensorData};
use thiserror::Error;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Most elements one request may carry (64 Mi f32 = 256 MiB is far beyond
/// the frame limit anyway; this bounds the work a shape can ask for).
pub const MAX_INPUT_ELEMENTS: u64 = 64 << 20;

/// Why a model could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// tract could not read, type, optimise or plan the model.
    #[error("{stage}: {message}")]
    Tract {
        /// Which step failed.
        stage: &'static str,
        /// tract's explanation (names the operator or the dimension).
        message: String,
    },
    /// The model has a shape this runtime does not serve.
    #[error("{0}")]
    Unsupported(String),
}

/// Why a request's input is refused before running.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputError {
    /// Element type differs from the model input.
    #[error("the model takes {expected} input, the request has {actual}")]
    DType {
        /// The model's element type.
        expected: &'static str,
        /// The request's.
        actual: &'static str,
    },
    /// Wrong number of dimensions.
    #[error(
        "the model takes a rank-{expected} input (shape {shape}), the request has rank {actual}"
    )]
    Rank {
        /// The model's rank.
        expected: usize,
        /// The model's shape, e.g. `[N,64]`.
        shape: String,
        /// The request's rank.
        actual: usize,
    },
    /// A fixed dimension differs.
    #[error("input dimension {axis} must be {expected} (shape {shape}), the request has {actual}")]
    Dim {
        /// Which axis.
        axis: usize,
        /// The model's size of it.
        expected: usize,
        /// The model's shape.
        shape: String,
        /// The request's size of it.
        actual: u64,
    },
    /// A symbolic dimension of 0.
    #[error("input dimension {axis} is 0")]
    Empty {
        /// Which axis.
        axis: usize,
    },
    /// Shape and data disagree, or the shape is too large.
    #[error("malformed tensor: {0}")]
    Malformed(String),
}

/// Element types a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// `f32`.
    F32,
    /// `i64`.
    I64,
    /// `u8`.
    U8,
}

impl ElementType {
    fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::I64 => "i64",
            Self::U8 => "u8",
        }
    }
}

/// The shape and type a request must have. `None` dimensions are symbolic
/// (typically the batch): any size ≥ 1 is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Element type.
    pub dtype: ElementType,
    /// Dimensions, outermost first.
    pub dims: Vec<Option<usize>>,
}

impl InputSpec {
    /// Shape as text, e.g. `[N,64]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| d.map_or_else(|| "N".to_string(), |n| n.to_string()))
            .collect();
        format!("[{}]", dims.join(","))
    }

    /// How many samples a request of validated `shape` carries: the product
    /// of its symbolic (`N`) dimensions, at least 1, saturating. Budgets
    /// charge by it, so a batch costs as much as its rows. A model with a
    /// second symbolic axis (e.g. sequence length) is charged for both,
    /// which over-counts rather than lets a request through cheaply.
    pub fn samples(&self, shape: &[usize]) -> u32 {
        self.dims
            .iter()
            .zip(shape)
            .filter(|(want, _)| want.is_none())
            .fold(1u32, |n, (_, &got)| {
                n.saturating_mul(u32::try_from(got).unwrap_or(u32::MAX))
            })
    }

    /// Check `t` against this spec; returns the validated shape.
    pub fn check(&self, t: &Tensor) -> Result<Vec<usize>, InputError> {
        t.validate(MAX_INPUT_ELEMENTS)
            .map_err(|e| InputError::Malformed(e.to_string()))?;
        let actual = match t.data {
            TensorData::F32(_) => ElementType::F32,
            TensorData::I64(_) => ElementType::I64,
            TensorData::U8(_) => ElementType::U8,
        };
        if actual != self.dtype {
            return Err(InputError::DType {
                expected: self.dtype.name(),
                actual: actual.name(),
            });
        }
        if t.shape.len() != self.dims.len() {
            return Err(InputError::Rank {
                expected: self.dims.len(),
                shape: self.shape_text(),
                actual: t.shape.len(),
            });
        }
        let mut shape = Vec::with_capacity(t.shape.len());
        for (axis, (&got, want)) in t.shape.iter().zip(&self.dims).enumerate() {
            match want {
                Some(n) if *n as u64 != got => {
                    return Err(InputError::Dim {
                        axis,
                        expected: *n,
                        shape: self.shape_text(),
                        actual: got,
                    });
                }
                None if got == 0 => return Err(InputError::Empty { axis }),
                _ => {}
            }
            // validate() bounded the product, so every dimension fits.
            shape
                .push(usize::try_from(got).map_err(|_| InputError::Malformed("dimension".into()))?);
        }
        Ok(shape)
    }
}

/// The scores a model produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Row-major values.
    pub values: Vec<f32>,
    /// Rows (the batch size; 1 for an unbatched output).
    pub rows: usize,
}

/// A loaded, optimised model.
#[derive(Debug)]
pub struct LoadedModel {
    plan: Arc<TypedRunnableModel>,
    input: InputSpec,
    scores_output: usize,
    /// Approximate memory held (the size of the ONNX file it came from).
    pub bytes: usize,
}

/// Fix input 0 of `model` to `dims`, keeping its element type; a 0 keeps
/// that axis symbolic (`N`). For models tract cannot type with symbolic
/// dimensions; the provider validates and the runtime loads with the same pin.
pub fn pin_input(model: &mut InferenceModel, dims: &[usize]) -> TractResult<()> {
    let dt = model
        .input_fact(0)?
        .datum_type
        .concretize()
        .unwrap_or(DatumType::F32);
    let shape: TVec<TDim> = dims
        .iter()
        .map(|&d| {
            if d == 0 {
                model.symbols.sym("N").into()
            } else {
                d.into()
            }
        })
        .collect();
    model.set_input_fact(0, InferenceFact::dt_shape(dt, shape))
}

fn tract(stage: &'static str) -> impl FnOnce(TractError) -> LoadError {
    move |e| LoadError::Tract {
        stage,
        message: format!("{e:#}"),
    }
}

impl LoadedModel {
    /// Load from the plaintext ONNX bytes. `pinned_input` fixes the input
    /// shape, for models tract cannot type with symbolic dimensions (e.g.
    /// image height and width); a pinned 0 keeps that axis symbolic.
    ///
    /// Single-input models only. The served output is the first `f32` output
    /// (the class scores; sklearn exports put an `i64` label output first).
    pub fn load(onnx: &[u8], pinned_input: Option<&[usize]>) -> Result<Self, LoadError> {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(tract("the model is not loadable ONNX"))?;
        if model.inputs.len() != 1 {
            return Err(LoadError::Unsupported(format!(
                "the model has {} inputs; only single-input models are served",
                model.inputs.len()
            )));
        }
        if let Some(dims) = pinned_input {
            pin_input(&mut model, dims).map_err(tract("pinning the input shape"))?;
        }
        let optimized = model
            .into_optimized()
            .map_err(tract("the model cannot be typed and optimised"))?;
        let fact = optimized
            .input_fact(0)
            .map_err(tract("reading the input fact"))?;
        let dtype = match fact.datum_type {
            DatumType::F32 => ElementType::F32,
            DatumType::I64 => ElementType::I64,
            DatumType::U8 => ElementType::U8,
            other => {
                return Err(LoadError::Unsupported(format!(
                    "input element type {other:?} is not served (f32, i64, u8 are)"
                )));
            }
        };
        let dims = fact
            .shape
            .iter()
            .map(|d| d.as_i64().and_then(|n| usize::try_from(n).ok()))
            .collect();
        let scores_output = (0..optimized.outputs.len())
            .find(|&i| {
                optimized
                    .output_fact(i)
                    .is_ok_and(|f| f.datum_type == DatumType::F32)
            })
            .ok_or_else(|| LoadError::Unsupported("the model has no f32 output".into()))?;
        let plan = optimized
            .into_runnable()
            .map_err(tract("the model cannot be planned"))?;
        Ok(Self {
            plan,
            input: InputSpec { dtype, dims },
            scores_output,
            bytes: onnx.len(),
        })
    }

    /// What a request must look like.
    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    /// Run one checked input. Blocking: call on the inference pool.
    pub fn run(&self, input: Tensor) -> Result<Scores, RunError> {
        let shape = self.input.check(&input).map_err(RunError::Input)?;
        let tensor = match &input.data {
            TensorData::F32(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
            TensorData::I64(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
            TensorData::U8(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
        }
        .map_err(|e| RunError::Model(format!("{e:#}")))?;
        let outputs = self
            .plan
            .run(tvec![tensor.into()])
            .map_err(|e| RunError::Model(format!("{e:#}")))?;
        let out = outputs
            .get(self.scores_output)
            .ok_or_else(|| RunError::Model("missing output".into()))?;
        let view = out
            .to_plain_array_view::<f32>()
            .map_err(|e| RunError::Model(format!("{e:#}")))?;
        let rows = if view.ndim() >= 2 { view.shape()[0] } else { 1 };
        Ok(Scores {
            values: view.iter().copied().collect(),
            rows,
        })
    }
}

/// Why a run failed.
#[derive(Debug, Error)]
pub enum RunError {
    /// The input does not fit the model.
    #[error(transparent)]
    Input(InputError),
    /// tract failed while running (logged; the client hears "internal").
    #[error("inference failed: {0}")]
    Model(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../testdata/models")
                .join(name),
        )
        .unwrap()
    }

    fn row(v: f32, n: usize) -> Tensor {
        Tensor {
            shape: vec![1, n as u64],
            data: TensorData::F32(vec![v; n]),
        }
    }

    #[test]
    fn loads_sklearn_model_and_serves_the_probabilities() {
        let m = LoadedModel::load(&model("digits_logreg.onnx"), None).unwrap();
        assert_eq!(m.input().shape_text(), "[N,64]");
        let s = m.run(row(0.5, 64)).unwrap();
        assert_eq!((s.rows, s.values.len()), (1, 10));
        let sum: f32 = s.values.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to 1: {sum}");
        // A batch of 3 is 3 samples for a budget.
        assert_eq!(m.input().samples(&[3, 64]), 3);
        // A batch of 3 gives 3 rows.
        let batch = Tensor {
            shape: vec![3, 64],
            data: TensorData::F32(vec![0.25; 192]),
        };
        assert_eq!(m.run(batch).unwrap().rows, 3);
    }

    #[test]
    fn refuses_inputs_that_do_not_fit() {
        let m = LoadedModel::load(&model("digits_cnn.onnx"), None).unwrap();
        assert_eq!(m.input().shape_text(), "[N,1,8,8]");
        let spec = m.input();
        let bad_rank = row(0.0, 64);
        assert!(matches!(
            spec.check(&bad_rank),
            Err(InputError::Rank { expected: 4, .. })
        ));
        let bad_dim = Tensor {
            shape: vec![1, 1, 8, 9],
            data: TensorData::F32(vec![0.0; 72]),
        };
        assert!(matches!(
            spec.check(&bad_dim),
            Err(InputError::Dim {
                axis: 3,
                expected: 8,
                ..
            })
        ));
        let bad_type = Tensor {
            shape: vec![1, 1, 8, 8],
            data: TensorData::U8(vec![0; 64]),
        };
        assert_eq!(
            spec.check(&bad_type),
            Err(InputError::DType {
                expected: "f32",
                actual: "u8"
            })
        );
        let lying = Tensor {
            shape: vec![1, 1, 8, 8],
            data: TensorData::F32(vec![0.0; 63]),
        };
        assert!(matches!(spec.check(&lying), Err(InputError::Malformed(_))));
        let huge = Tensor {
            shape: vec![u64::MAX, 1, 8, 8],
            data: TensorData::F32(vec![]),
        };
        assert!(matches!(spec.check(&huge), Err(InputError::Malformed(_))));
        let empty = Tensor {
            shape: vec![0, 1, 8, 8],
            data: TensorData::F32(vec![]),
        };
        assert_eq!(spec.check(&empty), Err(InputError::Empty { axis: 0 }));
    }

    proptest::proptest! {
        // Whatever shape and data a device sends, the check answers without
        // panicking, and what it accepts runs.
        #[test]
        fn hostile_tensors_are_checked_not_trusted(
            shape in proptest::collection::vec(
                proptest::prop_oneof![0u64..4, 60u64..70, proptest::prelude::any::<u64>()],
                0..4,
            ),
            len in 0usize..300,
            kind in 0u8..3,
        ) {
            let m = logreg();
            let data = match kind {
                0 => TensorData::F32(vec![0.5; len]),
                1 => TensorData::I64(vec![1; len]),
                _ => TensorData::U8(vec![1; len]),
            };
            let t = Tensor { shape, data };
            if m.input().check(&t).is_ok() {
                proptest::prop_assert!(m.run(t).is_ok());
            } else {
                proptest::prop_assert!(matches!(m.run(t), Err(RunError::Input(_))));
            }
        }
    }

    fn logreg() -> &'static LoadedModel {
        static M: std::sync::OnceLock<LoadedModel> = std::sync::OnceLock::new();
        M.get_or_init(|| LoadedModel::load(&model("digits_logreg.onnx"), None).unwrap())
    }

    #[test]
    fn not_onnx_is_a_load_error() {
        let e = LoadedModel::load(b"definitely not a protobuf", None).unwrap_err();
        assert!(e.to_string().contains("not loadable ONNX"), "{e}");
    }
}
